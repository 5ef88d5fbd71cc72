"""Symmetric INT8: zero point 0, round half to even, clip to [-128, 127] (TensorRT's convention)."""
from __future__ import annotations

import torch

INT8_MIN, INT8_MAX = -128, 127
_TINY = torch.finfo(torch.float32).tiny


def int8_scale(amax: torch.Tensor | float) -> torch.Tensor:
    """Scale that maps [-amax, amax] onto [-127, 127]; an all-zero range gets a harmless positive scale."""
    amax = torch.as_tensor(amax, dtype=torch.float32)
    return torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax)).clamp_min(_TINY)


def _broadcast(scale: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    if axis is None or scale.dim() == 0:
        return scale
    shape = [1] * x.dim()
    shape[axis] = -1
    return scale.reshape(shape)


def quantize_int8(x: torch.Tensor, scale: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """x / scale, rounded half to even and saturated, as int8. ``axis`` names the per-channel dim of ``scale``."""
    if not torch.isfinite(x).all():
        raise ValueError("cannot quantize a tensor that holds NaN or inf")
    q = torch.round(x.float() / _broadcast(scale, x, axis))
    return q.clamp(INT8_MIN, INT8_MAX).to(torch.int8)


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    return q.float() * _broadcast(scale, q, axis)


def fake_quantize_int8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Quantize then dequantize with a per-tensor scale, keeping float dtype (no finiteness check: hot path)."""
    return torch.round(x / scale).clamp(INT8_MIN, INT8_MAX) * scale


def quantize_weight_int8_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric INT8 of a [out, in] weight: (int8 weight, fp32 scale [out])."""
    scale = int8_scale(weight.detach().abs().amax(dim=1).float())
    return quantize_int8(weight.detach(), scale, axis=0), scale
