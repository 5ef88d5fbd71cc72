"""FP8 E4M3 (max 448, subnormals down to 2^-9) and E8M0 power-of-two scales.

``round_to_e4m3`` uses only elementwise ops that export to ONNX opset 17 (Log, Floor, Pow, Round,
Where), so fake-quantized graphs compute the same numbers in ONNX Runtime as in PyTorch. Storage
goes through ``torch.float8_e4m3fn``, whose cast rounds to nearest even.
"""
from __future__ import annotations

import torch

E4M3_MAX = 448.0
E4M3_MIN_SUBNORMAL = 2.0**-9
_E4M3_MIN_NORMAL_EXP = -6
E8M0_BIAS = 127


def check_finite(x: torch.Tensor, what: str = "tensor") -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"cannot quantize a {what} that holds NaN or inf")


def floor_log2(a: torch.Tensor) -> torch.Tensor:
    """Exact floor(log2(a)) for a > 0: the float log can be an ulp off at powers of two, so correct it."""
    e = torch.floor(torch.log2(a))
    e = torch.where(torch.pow(2.0, e) > a, e - 1, e)
    return torch.where(torch.pow(2.0, e + 1) <= a, e + 1, e)


def round_to_e4m3(x: torch.Tensor) -> torch.Tensor:
    """Nearest E4M3 value (ties to even), saturating at ±448, as float32."""
    a = x.abs().clamp(max=E4M3_MAX)
    exponent = floor_log2(a.clamp_min(2.0**_E4M3_MIN_NORMAL_EXP))  # below 2^-6 the step stays 2^-9
    step = torch.pow(2.0, exponent - 3)
    return torch.sign(x) * (torch.round(a / step) * step).clamp(max=E4M3_MAX)


def to_e4m3(x: torch.Tensor) -> torch.Tensor:
    """Saturating cast to ``torch.float8_e4m3fn`` (a bare cast would turn values above 448 into NaN)."""
    check_finite(x)
    return x.float().clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def quantize_fp8(x: torch.Tensor, axis: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """E4M3 with an FP32 scale per tensor (``axis=None``) or per slice along ``axis``: (fp8, scale)."""
    check_finite(x)
    x = x.float()
    if axis is None:
        amax = x.abs().amax()
    else:
        dims = [d for d in range(x.dim()) if d != axis % x.dim()]
        amax = x.abs().amax(dim=dims, keepdim=True)
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    q = to_e4m3(x / scale)
    return q, scale.reshape(-1) if axis is not None else scale


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    if axis is not None and scale.dim() == 1:
        shape = [1] * q.dim()
        shape[axis] = -1
        scale = scale.reshape(shape)
    return q.float() * scale


def fake_quantize_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-tensor static FP8 activation quantization in exportable ops."""
    return round_to_e4m3(x / scale) * scale


def encode_e8m0(exponent: torch.Tensor) -> torch.Tensor:
    """Power-of-two exponents in [-127, 127] as E8M0 bytes (255, the NaN code, is never written)."""
    return (exponent.clamp(-E8M0_BIAS, E8M0_BIAS) + E8M0_BIAS).to(torch.uint8)


def decode_e8m0(code: torch.Tensor) -> torch.Tensor:
    if (code == 255).any():
        raise ValueError("E8M0 code 255 is NaN")
    return torch.pow(2.0, code.float() - E8M0_BIAS)
