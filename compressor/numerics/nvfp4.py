"""NVFP4: E2M1 elements, one FP8 E4M3 scale per 16 consecutive elements, one FP32 scale per tensor.

Two-level scaling: tensor scale = amax / (6·448), so the largest block scale fits E4M3; block
scale = block amax / 6 / tensor scale, rounded to E4M3 and clamped to [2^-9, 448]. An element is
E2M1(x / (block scale · tensor scale)). Effective size: 4 bits + 8/16 = 4.5 bits per element.
"""
from __future__ import annotations

import torch

from compressor.numerics.blocks import from_blocks, to_blocks
from compressor.numerics.fp4 import E2M1_MAX, decode_e2m1, encode_e2m1, pack_nibbles, round_to_e2m1, unpack_nibbles
from compressor.numerics.fp8 import E4M3_MAX, E4M3_MIN_SUBNORMAL, check_finite, round_to_e4m3, to_e4m3

NVFP4_BLOCK = 16


def nvfp4_tensor_scale(amax: torch.Tensor | float) -> torch.Tensor:
    amax = torch.as_tensor(amax, dtype=torch.float32)
    return torch.where(amax > 0, amax / (E2M1_MAX * E4M3_MAX), torch.ones_like(amax))


def _block_scale_float(block_amax: torch.Tensor, tensor_scale: torch.Tensor) -> torch.Tensor:
    return (block_amax / E2M1_MAX / tensor_scale).clamp(E4M3_MIN_SUBNORMAL, E4M3_MAX)


def nvfp4_block_scales(w: torch.Tensor, tensor_scale: torch.Tensor) -> torch.Tensor:
    """E4M3 block scales [..., K/16] (``torch.float8_e4m3fn``) for ``w`` [..., K]."""
    block_amax = to_blocks(w.float(), NVFP4_BLOCK).abs().amax(dim=-1)
    return to_e4m3(_block_scale_float(block_amax, tensor_scale))


def quantize_nvfp4(
    w: torch.Tensor, block_scale: torch.Tensor | None = None, tensor_scale: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """{'packed': uint8 [..., K/2], 'block_scale': float8_e4m3fn [..., K/16], 'tensor_scale': fp32 []}.

    Scales are computed from ``w`` unless given (error-compensating rounding fixes them per group).
    """
    check_finite(w, "weight")
    w = w.float()
    if tensor_scale is None:
        tensor_scale = nvfp4_tensor_scale(w.abs().amax())
    if block_scale is None:
        block_scale = nvfp4_block_scales(w, tensor_scale)
    scale = block_scale.float().unsqueeze(-1) * tensor_scale
    code = encode_e2m1(from_blocks(to_blocks(w, NVFP4_BLOCK) / scale))
    return {"packed": pack_nibbles(code), "block_scale": block_scale, "tensor_scale": tensor_scale.reshape(())}


def dequantize_nvfp4(packed: torch.Tensor, block_scale: torch.Tensor, tensor_scale: torch.Tensor) -> torch.Tensor:
    values = to_blocks(decode_e2m1(unpack_nibbles(packed)), NVFP4_BLOCK)
    return from_blocks(values * (block_scale.float().unsqueeze(-1) * tensor_scale))


def fake_quantize_nvfp4(x: torch.Tensor, tensor_scale: torch.Tensor) -> torch.Tensor:
    """Dynamic NVFP4 of activations: block scales from each block's amax at run time, a static tensor scale.

    Exportable elementwise ops only, so ONNX Runtime reproduces it in float.
    """
    blocks = to_blocks(x, NVFP4_BLOCK)
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    scale = round_to_e4m3(_block_scale_float(amax, tensor_scale)) * tensor_scale
    return from_blocks(round_to_e2m1(blocks / scale) * scale)
