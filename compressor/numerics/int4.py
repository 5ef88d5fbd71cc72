"""Group-wise INT4 along the input dimension, stored as unsigned nibbles q in [0, 15].

Symmetric: scale = group amax / 7, q = clamp(round(w / scale), -8, 7) + 8, zero point 8 (ONNX
Runtime's MatMulNBits default). Asymmetric: the range [min(w, 0), max(w, 0)] maps onto [0, 15]
with an integer zero point per group. Dequantized value = (q - zero) · scale.
"""
from __future__ import annotations

import torch

from compressor.numerics.blocks import from_blocks, to_blocks
from compressor.numerics.fp4 import pack_nibbles, unpack_nibbles
from compressor.numerics.fp8 import check_finite

_TINY = torch.finfo(torch.float32).tiny


def int4_scales(w: torch.Tensor, group_size: int, symmetric: bool = True, bits: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale fp32 [..., K/g], zero uint8 [..., K/g]) for ``w`` [..., K]; ``bits`` < 4 gives the same
    grids with fewer levels (INT3: symmetric amax / 3, codes 0..7 around zero point 4)."""
    groups = to_blocks(w.float(), group_size)
    top, half = 2**bits - 1, 2 ** (bits - 1)
    if symmetric:
        amax = groups.abs().amax(dim=-1)
        scale = torch.where(amax > 0, amax / (half - 1), torch.ones_like(amax))
        return scale, torch.full_like(scale, half, dtype=torch.uint8)
    low = groups.amin(dim=-1).clamp(max=0)
    high = groups.amax(dim=-1).clamp(min=0)
    scale = torch.where(high > low, (high - low) / top, torch.ones_like(high))
    zero = torch.round(-low / scale).clamp(0, top).to(torch.uint8)
    return scale, zero


def quantize_int4(
    w: torch.Tensor,
    group_size: int = 128,
    symmetric: bool = True,
    scale: torch.Tensor | None = None,
    zero: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """{'packed': uint8 [..., K/2], 'scale': fp32 [..., K/g], 'zero': uint8 [..., K/g]}."""
    check_finite(w, "weight")
    if scale is None:
        scale, zero = int4_scales(w, group_size, symmetric)
    groups = to_blocks(w.float(), group_size)
    q = torch.round(groups / scale.clamp_min(_TINY).unsqueeze(-1)) + zero.unsqueeze(-1).float()
    return {"packed": pack_nibbles(from_blocks(q.clamp(0, 15))), "scale": scale, "zero": zero}


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    q = to_blocks(unpack_nibbles(packed).float(), packed.shape[-1] * 2 // scale.shape[-1])
    return from_blocks((q - zero.float().unsqueeze(-1)) * scale.unsqueeze(-1))


def quantize_int3(w: torch.Tensor, group_size: int = 64, symmetric: bool = True, scale: torch.Tensor | None = None,
                  zero: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Group-wise INT3: {'codes': uint8 [rows, K·3/8] (3-bit codes 0..7, ``pack_indices`` layout: 8 codes per
    3 bytes), 'scale': fp32 [rows, K/g], 'zero': uint8 [rows, K/g]}; (q − zero) · scale as INT4."""
    from compressor.numerics.vq import pack_indices

    check_finite(w, "weight")
    if scale is None:
        scale, zero = int4_scales(w, group_size, symmetric, bits=3)
    groups = to_blocks(w.float(), group_size)
    q = torch.round(groups / scale.clamp_min(_TINY).unsqueeze(-1)) + zero.unsqueeze(-1).float()
    return {"codes": pack_indices(from_blocks(q.clamp(0, 7)).reshape(w.shape[0], -1), 3), "scale": scale, "zero": zero}


def dequantize_int3(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    from compressor.numerics.vq import unpack_indices

    q = to_blocks(unpack_indices(codes, 3, scale.shape[-1] * group_size).float(), group_size)
    return from_blocks((q - zero.float().unsqueeze(-1)) * scale.unsqueeze(-1))
