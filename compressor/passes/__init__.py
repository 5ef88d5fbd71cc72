"""Compression passes: each looks at calibration data and rewrites modules. Importing a pass's module
registers it in ``PASSES`` (one line here per pass)."""
from compressor.passes.base import PASSES, Pass, PassConfig, PassContext  # noqa: F401
from compressor.passes import smoothquant, awq, quantize, fallback, embeddings, structured_prune, sparsify, tome, step_cache  # noqa: F401,E401
