"""Calibration utilities: range observers that pick quantization thresholds."""
