"""MXFP4 (OCP microscaling): E2M1 elements, one E8M0 power-of-two scale per 32 elements.

Shared exponent = floor(log2(block amax)) - 2 (2 is E2M1's largest exponent), so the block's
largest element lands in [4, 8) and saturates to 6 above 6, as the OCP spec prescribes. An all-zero
block gets the smallest scale, 2^-127. Effective size: 4 + 8/32 = 4.25 bits per element.
"""
from __future__ import annotations

import torch

from compressor.numerics.blocks import from_blocks, to_blocks
from compressor.numerics.fp4 import decode_e2m1, encode_e2m1, pack_nibbles, round_to_e2m1, unpack_nibbles
from compressor.numerics.fp8 import E8M0_BIAS, check_finite, decode_e8m0, encode_e8m0, floor_log2

MXFP4_BLOCK = 32
_E2M1_EMAX = 2


def mxfp4_exponents(w: torch.Tensor) -> torch.Tensor:
    amax = to_blocks(w.float(), MXFP4_BLOCK).abs().amax(dim=-1)
    exponent = floor_log2(amax.clamp_min(2.0**-126)) - _E2M1_EMAX
    return torch.where(amax > 0, exponent, torch.full_like(exponent, -E8M0_BIAS)).clamp(-E8M0_BIAS, E8M0_BIAS)


def quantize_mxfp4(w: torch.Tensor, scale: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """{'packed': uint8 [..., K/2], 'scale': uint8 E8M0 [..., K/32]}."""
    check_finite(w, "weight")
    w = w.float()
    if scale is None:
        scale = encode_e8m0(mxfp4_exponents(w))
    code = encode_e2m1(from_blocks(to_blocks(w, MXFP4_BLOCK) / decode_e8m0(scale).unsqueeze(-1)))
    return {"packed": pack_nibbles(code), "scale": scale}


def dequantize_mxfp4(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    values = to_blocks(decode_e2m1(unpack_nibbles(packed)), MXFP4_BLOCK)
    return from_blocks(values * decode_e8m0(scale).unsqueeze(-1))


def fake_quantize_mxfp4(x: torch.Tensor) -> torch.Tensor:
    """Dynamic MXFP4 of activations in exportable ops."""
    blocks = to_blocks(x, MXFP4_BLOCK)
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    exponent = (floor_log2(amax.clamp_min(2.0**-126)) - _E2M1_EMAX).clamp(-E8M0_BIAS, E8M0_BIAS)
    scale = torch.pow(2.0, exponent)
    return from_blocks(round_to_e2m1(blocks / scale) * scale)
