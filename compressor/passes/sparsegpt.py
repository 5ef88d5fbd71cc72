"""Error-compensating pruning (SparseGPT, Frantar & Alistarh 2023).

Zeroing a weight costs output error ||W X - W' X||² = tr((W - W') H (W - W')ᵀ), with H = 2/n · Σ x xᵀ.
As in GPTQ (``compressor.passes.gptq``), the input columns are processed in order and each column's
error is moved onto the columns not yet processed, weighted by the inverse Hessian; here the
"rounding" of a column is keeping or zeroing each of its weights.

Which weights to zero is decided on the fly from the already-updated weights, by the OBS saliency
w² / [U_jj]² (U the upper Cholesky factor of H⁻¹; U_jj² is the inverse Hessian's diagonal entry once
earlier columns are eliminated): the cost of zeroing that weight and letting later columns compensate.
"""
from __future__ import annotations

import torch

from compressor.numerics.sparsity import nm_mask, parse_sparsity, unstructured_mask
from compressor.numerics.hessian import upper_cholesky_of_inverse


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor, hessian: torch.Tensor, target: tuple[int, int] | float, block_size: int = 128,
    damp: float = 0.01, report: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pruned weight, float32 [out, in], exactly zero where the mask is False; mask, bool, True = kept).

    ``target``: (N, M) keeps N of every M consecutive input columns in each row, chosen when the
    group's first column is reached; a fraction zeroes that share of each row's weights in every block
    of ``block_size`` columns (the paper's adaptive mask selection, per row). ``report``, when given,
    receives the damping actually used (``damp``).
    """
    target = parse_sparsity(target)
    m = target[1] if isinstance(target, tuple) else 1
    w = weight.detach().double().clone()
    h = hessian.detach().to(w.device).double().clone()
    columns = w.shape[1]
    if h.shape != (columns, columns):
        raise ValueError(f"SparseGPT: Hessian shape {tuple(h.shape)} does not match weight {tuple(w.shape)}")
    if block_size % m or columns % m:
        raise ValueError(f"SparseGPT: block size {block_size} and input size {columns} must be multiples of M={m}")
    # An input that was always zero carries no information: its weight cannot matter, so make it 0.
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    u = upper_cholesky_of_inverse(h, damp, report)

    pruned = torch.zeros_like(w)
    mask = torch.ones_like(w, dtype=torch.bool)
    for b0 in range(0, columns, block_size):
        b1 = min(b0 + block_size, columns)
        block = w[:, b0:b1].clone()
        errors = torch.zeros_like(block)  # scaled errors of this block, applied to later blocks at its end
        diag = u.diagonal()[b0:b1]
        if not isinstance(target, tuple):
            mask[:, b0:b1] = unstructured_mask(block**2 / diag**2, target)
        for j in range(b0, b1):
            i = j - b0
            if isinstance(target, tuple) and i % m == 0:
                saliency = block[:, i : i + m] ** 2 / diag[i : i + m] ** 2
                mask[:, j : j + m] = nm_mask(saliency, *target)
            kept = torch.where(mask[:, j], block[:, i], 0.0)
            pruned[:, j] = kept
            err = (block[:, i] - kept) / u[j, j]
            block[:, i:] -= err[:, None] * u[j, j:b1][None, :]
            errors[:, i] = err
        w[:, b1:] -= errors @ u[b0:b1, b1:]

    return pruned.float(), mask
