"""FP4 E2M1 elements: ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}, four bits each, two per byte.

Code layout (OCP/TensorRT): bit 3 sign, bits 2-1 exponent, bit 0 mantissa, so code k < 8 is
``E2M1_VALUES[k]``. Packing puts the first element of each pair in the low nibble.
"""
from __future__ import annotations

import torch

from compressor.numerics.fp8 import check_finite

E2M1_MAX = 6.0
E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
# 2·|value| (an integer 0..12) → magnitude code
_CODE_OF_TWICE = torch.tensor([0, 1, 2, 3, 4, -1, 5, -1, 6, -1, -1, -1, 7])


def round_to_e2m1(y: torch.Tensor) -> torch.Tensor:
    """Nearest E2M1 value, ties to even mantissa, saturating at ±6; exportable elementwise ops.

    The grid has step 0.5 below 2, 1 in [2, 4) and 2 from 4 on; rounding half to even at each
    step is the format's tie rule (e.g. 2.5 → 2, 5 → 4, 0.25 → 0, 0.75 → 1).
    """
    a = y.abs().clamp(max=E2M1_MAX)
    fine = torch.round(a * 2) / 2
    mid = torch.round(a)
    coarse = torch.round(a / 2) * 2
    q = torch.where(a < 2, fine, torch.where(a < 4, mid, coarse))
    return torch.sign(y) * q


def encode_e2m1(y: torch.Tensor) -> torch.Tensor:
    """Codes (uint8, 0..15) of the nearest E2M1 values; the sign bit of -0.0 is kept."""
    check_finite(y)
    magnitude = round_to_e2m1(y.float()).abs()
    code = _CODE_OF_TWICE[(magnitude * 2).to(torch.long)]
    return (code + 8 * torch.signbit(y).to(torch.long)).to(torch.uint8)


def decode_e2m1(code: torch.Tensor) -> torch.Tensor:
    code = code.to(torch.long)
    value = E2M1_VALUES[code & 7]
    return torch.where(code >= 8, -value, value)


def pack_nibbles(code: torch.Tensor) -> torch.Tensor:
    """[..., 2n] codes 0..15 → [..., n] bytes, element 2i in the low nibble of byte i."""
    if code.shape[-1] % 2:
        raise ValueError(f"cannot pack an odd number ({code.shape[-1]}) of 4-bit values per row")
    code = code.to(torch.uint8)
    return code[..., 0::2] | (code[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    low, high = packed & 0x0F, packed >> 4
    return torch.stack([low, high], dim=-1).reshape(*packed.shape[:-1], -1)
