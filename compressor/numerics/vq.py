"""Vector quantization of a weight: sub-vectors of ``dim`` consecutive input columns, each replaced by
the index of one of ``entries`` codebook vectors, with one scale per output row.

Stored tensors (``quantize_vq``):

- ``codebook`` float16 [entries, dim];
- ``indices`` uint8 [rows, row_bytes]: each row's in/dim indices bit-packed at ``index_bits(entries)``
  bits (``pack_indices``);
- ``scale`` float16 [rows].

Weight = codebook[indices].reshape(rows, in) · scale[:, None].

Packing: indices are written in chunks of L = lcm(bits, 8) / 8 bytes holding M = 8·L / bits indices;
index m of a chunk is bits [m·bits, (m+1)·bits) of the chunk read as a little-endian integer. A row's
last chunk is padded with zero indices, which the bit count charges (``vq_bits_per_weight``). 6-bit
indices: 4 per 3 bytes; 8-bit: one per byte.

Codebooks are fitted by k-means with a weight per coordinate (the Hessian diagonal of the layer's
input: a column the inputs drive hard matters more), which is why this is not a library's k-means:
those weight whole points.
"""
from __future__ import annotations

import math

import torch

from compressor.errors import CompressorError

MAX_INDEX_BITS = 16
ASSIGN_CHUNK = 1 << 15  # points per distance matrix: [chunk, entries] floats


def index_bits(entries: int) -> int:
    return max(1, math.ceil(math.log2(entries)))


def chunk_layout(bits: int) -> tuple[int, int]:
    """(bytes L, indices M) of one packing chunk."""
    total = math.lcm(bits, 8)
    return total // 8, total // bits


def check_vq_shape(dim: int, entries: int, in_features: int | None = None, where: str = "vq") -> None:
    """One-line errors for a (dim, entries) pair that cannot compress, or a layer it cannot split."""
    if dim < 1 or dim > 16:
        raise CompressorError(f"{where}: vq_dim must be between 1 and 16, got {dim}")
    if entries < 2 or index_bits(entries) > MAX_INDEX_BITS:
        raise CompressorError(f"{where}: vq_entries must be between 2 and {2 ** MAX_INDEX_BITS}, got {entries}")
    if index_bits(entries) / dim >= 8:
        raise CompressorError(f"{where}: {entries} entries of dimension {dim} cost {index_bits(entries) / dim:g} bits "
                              "per weight, no less than INT8; raise vq_dim or lower vq_entries")
    if in_features is not None and in_features % dim:
        raise CompressorError(f"{where}: in_features {in_features} is not a multiple of vq_dim {dim}")


def row_bytes(count: int, bits: int) -> int:
    """Bytes that ``count`` indices of one row take, the last chunk padded."""
    length, per_chunk = chunk_layout(bits)
    return math.ceil(count / per_chunk) * length


def pack_indices(indices: torch.Tensor, bits: int) -> torch.Tensor:
    """[rows, count] integer indices < 2**bits → uint8 [rows, row_bytes(count, bits)]."""
    rows, count = indices.shape
    length, per_chunk = chunk_layout(bits)
    chunks = math.ceil(count / per_chunk)
    padded = torch.zeros(rows, chunks * per_chunk, dtype=torch.int32)
    padded[:, :count] = indices.to(torch.int32)
    shifts = torch.arange(bits, dtype=torch.int32)
    # Every index as its bits, least significant first; a chunk's bits in order form its L bytes.
    flat_bits = ((padded[..., None] >> shifts) & 1).to(torch.uint8).reshape(rows, chunks * length, 8)
    weights = (1 << torch.arange(8, dtype=torch.int32)).to(torch.uint8)
    return (flat_bits * weights).sum(dim=-1, dtype=torch.int32).to(torch.uint8)


def unpack_indices(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of ``pack_indices``: uint8 [rows, bytes] → int64 [rows, count]."""
    rows = packed.shape[0]
    flat_bits = (packed.to(torch.int32)[..., None] >> torch.arange(8, dtype=torch.int32)) & 1
    per_index = flat_bits.reshape(rows, -1, bits)
    values = (per_index << torch.arange(bits, dtype=torch.int32)).sum(dim=-1)
    return values[:, :count].to(torch.int64)


def vq_bits_per_weight(dim: int, entries: int, rows: int, columns: int) -> float:
    """Effective bits per weight: packed indices with their padding, the FP16 codebook, FP16 row scales."""
    index = rows * row_bytes(columns // dim, index_bits(entries)) * 8
    return (index + entries * dim * 16 + rows * 16) / (rows * columns)


def sub_vectors(w: torch.Tensor, dim: int) -> torch.Tensor:
    """[rows, in] → [rows · in/dim, dim], row by row."""
    return w.reshape(-1, dim)


def nearest_entries(points: torch.Tensor, codebook: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Index of the codebook vector closest to each point ([n, dim]) under the weighted squared distance
    Σ_c weights_c (x_c − e_c)² (``weights`` [n, dim], [dim] or none)."""
    codebook = codebook.to(points.dtype)
    out = torch.empty(len(points), dtype=torch.int64)
    for start in range(0, len(points), ASSIGN_CHUNK):
        x = points[start:start + ASSIGN_CHUNK]
        if weights is None:
            w = torch.ones_like(x)
        else:
            w = (weights[start:start + ASSIGN_CHUNK] if weights.dim() == 2 else weights).expand_as(x)
        # Σ w (x − e)² = Σ w x² − 2 (w x)·e + w·e²; the first term is the same for every entry.
        distance = w @ codebook.square().T - 2 * (w * x) @ codebook.T
        out[start:start + ASSIGN_CHUNK] = distance.argmin(dim=1)
    return out


def _initial_entries(points: torch.Tensor, weights: torch.Tensor, entries: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each new entry drawn with probability ∝ weight · distance to the nearest entry."""
    mass = weights.sum(dim=1)
    first = torch.multinomial(mass / mass.sum(), 1, generator=generator)
    chosen = [points[first[0]]]
    best = ((points - chosen[0]).square() * weights).sum(dim=1)
    for _ in range(1, entries):
        total = best.sum()
        if total <= 0:  # fewer distinct points than entries: repeat one (never chosen, harmless)
            chosen.append(chosen[-1])
            continue
        pick = torch.multinomial(best / total, 1, generator=generator)[0]
        chosen.append(points[pick])
        best = torch.minimum(best, ((points - points[pick]).square() * weights).sum(dim=1))
    return torch.stack(chosen)


def fit_codebook(points: torch.Tensor, entries: int, weights: torch.Tensor | None = None, iterations: int = 25,
                 seed: int = 0) -> torch.Tensor:
    """k-means with a weight per coordinate: [n, dim] points (and weights) → float32 [entries, dim] codebook.

    Each entry is the weighted mean of its points coordinate by coordinate (Σ w x / Σ w), which minimises
    the weighted squared distance for a fixed assignment. An entry left without points moves to the point
    that is worst served, so no entry is wasted.
    """
    points = points.float()
    weights = torch.ones_like(points) if weights is None else weights.float().expand_as(points).clamp_min(0)
    generator = torch.Generator().manual_seed(seed)
    sample = points
    if len(points) > 65536:  # seed on a subsample: k-means++ is sequential in the entries
        keep = torch.randperm(len(points), generator=generator)[:65536]
        sample, sample_weights = points[keep], weights[keep]
    else:
        sample_weights = weights
    codebook = _initial_entries(sample, sample_weights + 1e-12, entries, generator)
    assignment = None
    for _ in range(iterations):
        new = nearest_entries(points, codebook, weights)
        if assignment is not None and torch.equal(new, assignment):
            break
        assignment = new
        sums = torch.zeros(entries, points.shape[1]).index_add_(0, assignment, weights * points)
        mass = torch.zeros(entries, points.shape[1]).index_add_(0, assignment, weights)
        codebook = torch.where(mass > 0, sums / mass.clamp_min(1e-30), codebook)
        empty = torch.bincount(assignment, minlength=entries) == 0
        if empty.any():
            error = ((points - codebook[assignment]).square() * weights).sum(dim=1)
            worst = error.topk(int(empty.sum())).indices
            codebook[empty] = points[worst]
    return codebook


def row_scales(w: torch.Tensor) -> torch.Tensor:
    """FP16 scale per row: its root mean square (1 for a zero row), so every row's sub-vectors share one
    codebook at a common size."""
    rms = w.float().square().mean(dim=1).sqrt()
    return torch.where(rms > 0, rms, torch.ones_like(rms)).half()


def quantize_vq(w: torch.Tensor, dim: int, entries: int, codebook: torch.Tensor | None = None,
                scale: torch.Tensor | None = None, weights: torch.Tensor | None = None, seed: int = 0) -> dict:
    """{'codebook', 'indices', 'scale'} of ``w`` [rows, in]. Without a codebook one is fitted (unweighted
    k-means unless ``weights`` [in] weights the columns); each sub-vector then takes its nearest entry."""
    check_vq_shape(dim, entries, w.shape[1])
    w = w.float()
    scale = row_scales(w) if scale is None else scale.half()
    normalized = w / scale.float()[:, None]
    points = sub_vectors(normalized, dim)
    point_weights = None
    if weights is not None:
        point_weights = (weights.float().reshape(1, -1) * scale.float()[:, None].square()).reshape(-1, dim)
    if codebook is None:
        codebook = fit_codebook(points, entries, point_weights, seed=seed)
    codebook = codebook.half()
    indices = nearest_entries(points, codebook.float(), point_weights).reshape(w.shape[0], -1)
    return {"codebook": codebook, "indices": pack_indices(indices, index_bits(entries)), "scale": scale}


def dequantize_vq(t: dict, dim: int, entries: int, columns: int) -> torch.Tensor:
    indices = unpack_indices(t["indices"], index_bits(entries), columns // dim)
    vectors = t["codebook"].float()[indices]  # [rows, in/dim, dim]
    return vectors.reshape(len(indices), columns) * t["scale"].float()[:, None]
