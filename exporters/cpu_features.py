"""What the CPU offers ONNX Runtime's INT8 kernels.

On CPUs with int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI, AMX), ONNX Runtime's u8·s8 GEMM
is its fast path, well ahead of u8·u8 (benchmarks/onnx_latency.py; see docs/results.md, latency of the
pruned and INT8 graphs). On AVX2 alone, u8·s8 sums pairs of products in int16 and can saturate, so
there the weights go in as uint8 (u8·u8, exact).
"""
from __future__ import annotations

from pathlib import Path

INT8_DOT_PRODUCT = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_description(cpuinfo: str | None = None) -> dict:
    """The CPU model and its int8 dot-product instruction sets (from /proc/cpuinfo; empty elsewhere)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    lines = cpuinfo.splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return {"model": model, "int8_dot_product": sorted(f for f in flags if f in INT8_DOT_PRODUCT)}


def default_int8_weights(cpuinfo: str | None = None) -> str:
    """"int8" (u8·s8 kernels) where this CPU has int8 dot products, "uint8" (u8·u8) otherwise."""
    return "int8" if cpu_description(cpuinfo)["int8_dot_product"] else "uint8"
