"""Block-wise Hadamard rotations of a Linear layer's input dimension.

A 4-bit block format gives every block of 16 (NVFP4) or 32 (MXFP4) consecutive values one scale, set
by the block's largest magnitude: one outlier in a block pushes the other values towards zero. An
orthogonal rotation R of the input dimension leaves the layer's product unchanged,

    y = x Wᵀ = (x R)(W R)ᵀ      (R Rᵀ = I),

and a normalized Hadamard matrix spreads an outlier evenly over its block, so the rotated values have
a flatter, more Gaussian distribution that a shared scale fits better. R is block-diagonal with one
normalized Hadamard matrix H per format block, so it never mixes values of different scale blocks and
costs one [b, b] matrix product per block of the input. The weight is rotated once, offline (its rows
``W R``); the input at run time (``x R``). Both are the same operation on the last dimension:
reshape to [..., in/b, b] and multiply by H.

The Sylvester construction gives H symmetric as well as orthogonal, H = Hᵀ = H⁻¹, so in column form
``(W Hᵀ)(H x) = W x`` and applying the rotation twice is the identity.
"""
from __future__ import annotations

import functools
import math

import torch


def check_block_size(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or n & (n - 1):
        raise ValueError(f"a Hadamard block size must be a power of two, got {n!r}")


@functools.lru_cache(maxsize=None)
def _sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while len(h) < n:
        h = torch.cat([torch.cat([h, h], dim=1), torch.cat([h, -h], dim=1)], dim=0)
    return h / math.sqrt(n)


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The normalized Hadamard matrix of size ``n`` (a power of two): H₁ = [1], H₂ₙ = [[Hₙ, Hₙ], [Hₙ, -Hₙ]]/√2.

    Entries are ±1/√n; H is symmetric and orthogonal (H Hᵀ = I).
    """
    check_block_size(n)
    return _sylvester(n).to(dtype=dtype, device=device)


def check_rotatable(features: int, block: int) -> None:
    check_block_size(block)
    if features % block:
        raise ValueError(f"dimension {features} is not a multiple of the rotation block size {block}")


def rotatable(features: int, block: int) -> bool:
    """Whether a dimension of ``features`` can be rotated in blocks of ``block``."""
    return block > 0 and features % block == 0


def rotate_blocks(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``x`` [..., K] with each run of b = len(h) consecutive values of the last dimension multiplied by ``h``
    [b, b]: x reshaped to [..., K/b, b], times h, reshaped back. K must be a multiple of b."""
    block, features = int(h.shape[-1]), int(x.shape[-1])  # plain ints, also while an exporter traces
    if tuple(h.shape) != (block, block):
        raise ValueError(f"a rotation block must be a square matrix, got shape {tuple(h.shape)}")
    check_rotatable(features, block)
    blocks = x.reshape(*x.shape[:-1], features // block, block)
    return (blocks @ h.to(x.dtype)).reshape(x.shape)


def hadamard_rotate(x: torch.Tensor, block: int) -> torch.Tensor:
    """The block-diagonal normalized Hadamard rotation of the last dimension of ``x`` (x R)."""
    return rotate_blocks(x, hadamard_matrix(block, x.dtype, x.device))


def rotate_hessian(hessian: torch.Tensor, block: int) -> torch.Tensor:
    """The second moment of rotated inputs: for H = E[x xᵀ] (column form), E[(Rᵀx)(Rᵀx)ᵀ] = Rᵀ H R."""
    rotated_columns = hadamard_rotate(hessian, block)  # H R
    return hadamard_rotate(rotated_columns.transpose(0, 1), block)  # (H R)ᵀ R = Rᵀ H R (H symmetric)


def rotated_amax_bound(channel_amax: torch.Tensor, block: int) -> torch.Tensor:
    """An upper bound on |x R| over every input whose channels stay within ``channel_amax`` [K]:
    |(x R)_k| ≤ Σ_i |x_i| |R_ik| = Σ_{i in k's block} amax_i / √b. Returns the largest block's bound (a scalar)."""
    check_rotatable(channel_amax.shape[-1], block)
    sums = channel_amax.float().abs().reshape(-1, block).sum(dim=-1)
    return sums.max() / math.sqrt(block)
