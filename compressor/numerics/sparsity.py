"""Weight sparsity: which weights to zero, how to check a pattern, how to store a sparse tensor.

Two kinds of sparsity. ``N:M`` (NVIDIA's meaning): at most N nonzeros in every M consecutive weights
along the input dimension; sparse tensor cores run 2:4 at twice the dense rate. An unstructured
fraction zeroes that share of each output row's weights anywhere; it only saves storage.

Weights are [out, in] (PyTorch Linear). Masks are bool, True = kept.

Storage layouts (lossless for tensors that obey the pattern; a negative zero becomes +0):
- 2:4: the two kept values of each group of 4 plus their 2-bit positions, p0 in bits 0-1 and p1 in
  bits 2-3 of a 4-bit code, two groups per byte with the even group in the low nibble.
- bitmask: the nonzeros in row-major order plus one bit per weight, bit k (least significant first)
  of byte b in a row standing for column 8·b + k.
"""
from __future__ import annotations

import math

import torch

from compressor.numerics.fp4 import pack_nibbles, unpack_nibbles


def parse_sparsity(target: str | float | tuple[int, int]) -> tuple[int, int] | float:
    """"N:M" or (N, M) → (N, M) with 0 < N < M; a fraction in (0, 1) (or its string) → that float."""
    if isinstance(target, tuple) and len(target) == 2:
        target = f"{target[0]}:{target[1]}"
    if isinstance(target, str) and ":" in target:
        parts = target.split(":")
        try:
            n, m = (int(p) for p in parts)
        except ValueError:
            n = m = 0  # falls through to the error below
        if len(parts) == 2 and 0 < n < m:
            return n, m
        raise ValueError(f"sparsity '{target}': expected N:M with 0 < N < M, e.g. 2:4")
    try:
        fraction = float(target) if not isinstance(target, bool) else math.nan
    except (TypeError, ValueError):
        fraction = math.nan
    if 0.0 < fraction < 1.0:
        return fraction
    raise ValueError(f"sparsity {target!r}: expected N:M (e.g. 2:4) or a fraction of zeros in (0, 1)")


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest scores in every group of ``m`` consecutive input columns of each row.

    Ties go to the lower column index (a stable sort), so equal scores give the same mask every run.
    """
    columns = scores.shape[-1]
    if columns % m:
        raise ValueError(f"{n}:{m} sparsity needs the input size ({columns}) to be a multiple of {m}")
    groups = scores.reshape(*scores.shape[:-1], columns // m, m)
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order[..., :n], True)
    return keep.reshape(scores.shape)


def unstructured_mask(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Zero the ``round(fraction · in)`` lowest scores of each output row (Python's round: half to even).

    Per row, as Wanda compares, so every output keeps the same number of inputs. Ties: the lower
    column index is kept, as in ``nm_mask``.
    """
    columns = scores.shape[-1]
    kept = columns - round(fraction * columns)
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, order[..., :kept], True)


def wanda_scores(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """|W_ij| · ‖x_j‖₂: a weight matters as much as the input it multiplies is large (Wanda)."""
    if input_norm.shape != weight.shape[-1:]:
        raise ValueError(f"input norms {tuple(input_norm.shape)} do not match weight {tuple(weight.shape)}")
    return weight.abs().float() * input_norm.float()


def is_nm_sparse(tensor: torch.Tensor, n: int, m: int, axis: int) -> bool:
    """At most ``n`` nonzeros in every ``m`` consecutive elements along ``axis``; False when that axis
    is not a multiple of ``m`` (the hardware pattern cannot apply)."""
    nonzero = (tensor != 0).movedim(axis, -1)
    length = nonzero.shape[-1]
    if length % m:
        return False
    counts = nonzero.reshape(*nonzero.shape[:-1], length // m, m).sum(dim=-1)
    return bool((counts <= n).all())


# --- storage ---------------------------------------------------------------------------------------


def pack_24(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] with at most 2 nonzeros per group of 4 → (values [out, in/2], positions uint8 [out, in/8]).

    A group with fewer than 2 nonzeros stores zeros at its lowest free positions, so every group holds
    exactly two (position, value) pairs and unpacking restores it exactly.
    """
    rows, columns = dense.shape
    if columns % 8:
        raise ValueError(f"2:4 packing needs the input size ({columns}) to be a multiple of 8")
    groups = dense.reshape(rows, columns // 4, 4)
    nonzero = groups != 0
    if bool((nonzero.sum(dim=-1) > 2).any()):
        raise ValueError("cannot pack as 2:4: some group of 4 input columns has more than 2 nonzeros")
    # Nonzeros first, then zeros, each by position; the first two, in position order, are stored.
    key = (~nonzero).to(torch.uint8) * 4 + torch.arange(4, dtype=torch.uint8)
    chosen = torch.sort(torch.sort(key, dim=-1).indices[..., :2], dim=-1).values
    values = torch.gather(groups, -1, chosen).reshape(rows, columns // 2)
    codes = chosen[..., 0] | (chosen[..., 1] << 2)
    return values, pack_nibbles(codes)


def unpack_24(values: torch.Tensor, positions: torch.Tensor, in_features: int) -> torch.Tensor:
    """Inverse of ``pack_24``: the dense [out, in_features] tensor."""
    rows = values.shape[0]
    fits = values.shape == (rows, in_features // 2) and positions.shape == (rows, in_features // 8)
    if in_features % 8 or not fits:
        raise ValueError(
            f"2:4 values {tuple(values.shape)} / positions {tuple(positions.shape)} do not fit in_features={in_features}"
        )
    codes = unpack_nibbles(positions).to(torch.long)
    chosen = torch.stack([codes & 3, codes >> 2], dim=-1)  # [out, in/4, 2]
    if bool((chosen[..., 0] >= chosen[..., 1]).any()):
        raise ValueError("corrupt 2:4 positions: each group must store two different positions in order")
    groups = torch.zeros(rows, in_features // 4, 4, dtype=values.dtype, device=values.device)
    groups.scatter_(-1, chosen, values.reshape(rows, in_features // 4, 2))
    return groups.reshape(rows, in_features)


def pack_bitmask(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] → (the nonzeros in row-major order, 1-D; bit mask uint8 [out, ceil(in/8)])."""
    nonzero = dense != 0
    pad = -dense.shape[-1] % 8
    bits = torch.nn.functional.pad(nonzero, (0, pad)).reshape(*dense.shape[:-1], -1, 8).to(torch.uint8)
    weights = torch.tensor([1 << k for k in range(8)], dtype=torch.uint8, device=dense.device)
    return dense[nonzero], (bits * weights).sum(dim=-1, dtype=torch.uint8)


def unpack_bitmask(values: torch.Tensor, mask: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of ``pack_bitmask``: the dense tensor of ``shape``."""
    shifts = torch.arange(8, dtype=torch.uint8, device=mask.device)
    bits = ((mask[..., None] >> shifts) & 1).bool().reshape(*mask.shape[:-1], -1)[..., : shape[-1]]
    if tuple(bits.shape) != tuple(shape):
        raise ValueError(f"bit mask {tuple(mask.shape)} does not fit shape {tuple(shape)}")
    if int(bits.sum()) != values.numel():
        raise ValueError(f"bit mask marks {int(bits.sum())} nonzeros but {values.numel()} values are given")
    dense = torch.zeros(shape, dtype=values.dtype, device=values.device)
    dense[bits] = values
    return dense


def dense_bytes(shape: tuple[int, ...], element_size: int) -> int:
    return math.prod(shape) * element_size


def bitmask_bytes(shape: tuple[int, ...], nnz: int, element_size: int) -> int:
    """Stored size of ``pack_bitmask``: the nonzeros plus one bit per weight, rows padded to bytes."""
    return nnz * element_size + math.prod(shape[:-1]) * math.ceil(shape[-1] / 8)


def packed_24_bytes(shape: tuple[int, ...], element_size: int) -> int:
    """Stored size of ``pack_24``: half the values plus 4 bits per group of 4."""
    return math.prod(shape) // 2 * element_size + math.prod(shape) // 8


def bitmask_saves_space(dense: torch.Tensor) -> bool:
    """Whether ``pack_bitmask`` stores ``dense`` in fewer bytes than dense storage does."""
    shape, size = tuple(dense.shape), dense.element_size()
    return bitmask_bytes(shape, int((dense != 0).sum()), size) < dense_bytes(shape, size)
