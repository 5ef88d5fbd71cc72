"""Error-compensating vector quantization (the GPTVQ method) of one Linear weight.

The codebook comes first: k-means over the layer's sub-vectors (each row divided by its scale), each
coordinate weighted by the Hessian diagonal of its input column times the row's scale squared, which is
what that coordinate's error costs at the layer output. Then the columns are quantized ``dim`` at a
time, left to right: every row's sub-vector takes the entry nearest under the inverse Hessian's
diagonal, and the rounding error moves onto the columns not yet quantized through the inverse
Hessian, exactly as GPTQ does one column at a time (compressor/passes/gptq.py). Later columns absorb
what earlier sub-vectors got wrong, which plain nearest-entry assignment cannot do.
"""
from __future__ import annotations

import torch

from compressor.numerics.formats import VqWeight
from compressor.numerics.vq import fit_codebook, nearest_entries, row_scales, sub_vectors
from compressor.numerics.hessian import upper_cholesky_of_inverse


def hessian_codebook(weight: torch.Tensor, hessian: torch.Tensor, fmt: VqWeight, scale: torch.Tensor,
                     seed: int = 0) -> torch.Tensor:
    """FP16 codebook fitted to the scaled sub-vectors of ``weight`` with Hessian-diagonal coordinate weights."""
    normalized = weight.float() / scale.float()[:, None]
    weights = hessian.diagonal().float().clamp_min(0)[None, :] * scale.float()[:, None].square()
    return fit_codebook(sub_vectors(normalized, fmt.dim), fmt.entries, sub_vectors(weights, fmt.dim), seed=seed).half()


def update_codebook(weight: torch.Tensor, hessian: torch.Tensor, codebook: torch.Tensor, indices: torch.Tensor,
                    scale: torch.Tensor, ridge: float = 1e-6, rows_per_chunk: int = 8) -> torch.Tensor:
    """Codebook [entries, dim] (float64) minimising tr((W − Ŵ) H (W − Ŵ)ᵀ) with the ``indices`` [rows, in/dim]
    and row ``scale`` held fixed, Ŵ[r] = scale[r] · codebook[indices[r]] flattened.

    The loss is quadratic in the codebook, so this is one linear solve of entries·dim unknowns: the Gram
    matrix sums, row by row, the Hessian entries of every pair of weights onto the pair of codebook
    coordinates they were assigned to. A small ridge towards the given codebook keeps unused entries
    where they are and the solve well posed."""
    rows, columns = weight.shape
    entries, dim = codebook.shape
    n = entries * dim
    h, s = hessian.double(), scale.double()
    # Position of every weight in the flattened codebook.
    position = ((indices.long() * dim)[:, :, None] + torch.arange(dim)).reshape(rows, columns)
    gram = torch.zeros(n, n, dtype=torch.float64)
    for r0 in range(0, rows, rows_per_chunk):
        p = position[r0:r0 + rows_per_chunk]
        count = len(p)
        # by_entry[r, i, b] = Σ_{j assigned to b} H[i, j]; then the rows i are summed onto their entries too.
        by_entry = torch.zeros(count, columns, n, dtype=torch.float64)
        by_entry.scatter_add_(2, p[:, None, :].expand(count, columns, columns), h.expand(count, columns, columns))
        by_entry *= s[r0:r0 + count, None, None].square()
        gram.index_add_(0, p.reshape(-1), by_entry.reshape(count * columns, n))
    rhs = torch.zeros(n, dtype=torch.float64).index_add_(0, position.reshape(-1),
                                                         ((weight.double() @ h) * s[:, None]).reshape(-1))
    lam = ridge * gram.diagonal().mean().clamp_min(1e-30)
    solution = torch.linalg.solve(gram + lam * torch.eye(n, dtype=torch.float64), rhs + lam * codebook.double().reshape(-1))
    return solution.reshape(entries, dim)


def _layer_loss(weight: torch.Tensor, hessian: torch.Tensor, codebook: torch.Tensor, indices: torch.Tensor,
                scale: torch.Tensor) -> float:
    delta = weight - codebook.double()[indices.reshape(-1)].reshape(weight.shape) * scale.double()[:, None]
    return float(((delta @ hessian) * delta).sum())


def _assign(w: torch.Tensor, u: torch.Tensor, entries: torch.Tensor, dim: int, block_size: int) -> torch.Tensor:
    """Indices [rows, in/dim] of the scaled rows ``w`` with GPTQ's error feedback through ``u``."""
    rows, columns = w.shape
    w = w.clone()
    indices = torch.zeros(rows, columns // dim, dtype=torch.long)
    for b0 in range(0, columns, block_size):
        b1 = min(b0 + block_size, columns)
        block = w[:, b0:b1].clone()
        errors = torch.zeros_like(block)
        for j in range(b0, b1, dim):
            i = j - b0
            # The joint error of a sub-vector, to first order: Σ_c (w_c − e_c)² / U_cc².
            weights = u.diagonal()[j:j + dim].pow(-2)
            indices[:, j // dim] = nearest_entries(block[:, i:i + dim], entries, weights)
            chosen = entries[indices[:, j // dim]]
            for c in range(dim):
                err = (block[:, i + c] - chosen[:, c]) / u[j + c, j + c]
                block[:, i + c:] -= err[:, None] * u[j + c, j + c:b1][None, :]
                errors[:, i + c] = err
        w[:, b1:] -= errors @ u[b0:b1, b1:]
    return indices


@torch.no_grad()
def gptvq_quantize(weight: torch.Tensor, hessian: torch.Tensor, fmt: VqWeight, damp: float = 0.01,
                   block_size: int = 128, report: dict | None = None, seed: int = 0,
                   codebook_updates: int = 0) -> tuple[torch.Tensor, dict]:
    """(weight on the codebook's grid, float32 [out, in]; {'codebook', 'scale'} to store it with
    ``fmt.quantize``). ``report`` receives the damping used (``damp``). ``codebook_updates`` rounds of
    re-solving the codebook for the assignment, then assigning again, keep whichever codebook and
    assignment has the least output error."""
    rows, columns = weight.shape
    dim = fmt.dim
    if columns % dim:
        raise ValueError(f"in_features {columns} is not a multiple of the sub-vector dimension {dim}")
    h = hessian.detach().double().clone()
    w = weight.detach().double().clone()
    dead = h.diagonal() == 0  # an input that is always zero: its weights cannot matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    scale = row_scales(w)
    codebook = hessian_codebook(w, h, fmt, scale, seed)
    u = upper_cholesky_of_inverse(h, damp, report)
    block_size = max(dim, block_size // dim * dim)
    scaled = w / scale.double()[:, None]  # the error feedback is linear per row: run it on the scaled rows
    indices = _assign(scaled, u, codebook.double(), dim, block_size)
    best = (_layer_loss(w, h, codebook, indices, scale), codebook, indices)
    for _ in range(codebook_updates):
        codebook = update_codebook(w, h, best[1], best[2], scale).half()
        loss = _layer_loss(w, h, codebook, best[2], scale)
        if loss < best[0]:
            best = (loss, codebook, best[2])
        indices = _assign(scaled, u, codebook.double(), dim, block_size)
        loss = _layer_loss(w, h, codebook, indices, scale)
        if loss < best[0]:
            best = (loss, codebook, indices)
    _, codebook, indices = best
    q = codebook.float()[indices.reshape(-1)].reshape(rows, columns) * scale.float()[:, None]
    return q, {"codebook": codebook, "scale": scale}
