"""Reshape helpers for scales shared by consecutive elements along the last dimension."""
from __future__ import annotations

import torch


def to_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """[..., K] → [..., K/block, block]; K must be a multiple of ``block``."""
    if x.shape[-1] % block:
        raise ValueError(f"last dimension {x.shape[-1]} is not a multiple of the block size {block}")
    return x.reshape(*x.shape[:-1], x.shape[-1] // block, block)


def from_blocks(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])
