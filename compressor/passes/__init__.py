"""Compression passes: each looks at calibration data and rewrites modules."""
