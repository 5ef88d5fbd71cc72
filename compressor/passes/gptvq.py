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
from compressor.passes.gptq import _upper_cholesky_of_inverse


def hessian_codebook(weight: torch.Tensor, hessian: torch.Tensor, fmt: VqWeight, scale: torch.Tensor,
                     seed: int = 0) -> torch.Tensor:
    """FP16 codebook fitted to the scaled sub-vectors of ``weight`` with Hessian-diagonal coordinate weights."""
    normalized = weight.float() / scale.float()[:, None]
    weights = hessian.diagonal().float().clamp_min(0)[None, :] * scale.float()[:, None].square()
    return fit_codebook(sub_vectors(normalized, fmt.dim), fmt.entries, sub_vectors(weights, fmt.dim), seed=seed).half()


@torch.no_grad()
def gptvq_quantize(weight: torch.Tensor, hessian: torch.Tensor, fmt: VqWeight, damp: float = 0.01,
                   block_size: int = 128, report: dict | None = None, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """(weight on the codebook's grid, float32 [out, in]; {'codebook', 'scale'} to store it with
    ``fmt.quantize``). ``report`` receives the damping used (``damp``)."""
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
    entries = codebook.double()
    w /= scale.double()[:, None]  # the error feedback is linear per row: run it on the scaled rows
    u = _upper_cholesky_of_inverse(h, damp, report)
    q = torch.zeros_like(w)
    block_size = max(dim, block_size // dim * dim)
    for b0 in range(0, columns, block_size):
        b1 = min(b0 + block_size, columns)
        block = w[:, b0:b1].clone()
        errors = torch.zeros_like(block)
        for j in range(b0, b1, dim):
            i = j - b0
            # The joint error of a sub-vector, to first order: Σ_c (w_c − e_c)² / U_cc².
            weights = u.diagonal()[j:j + dim].pow(-2)
            chosen = entries[nearest_entries(block[:, i:i + dim], entries, weights)]
            for c in range(dim):
                q[:, j + c] = chosen[:, c]
                err = (block[:, i + c] - chosen[:, c]) / u[j + c, j + c]
                block[:, i + c:] -= err[:, None] * u[j + c, j + c:b1][None, :]
                errors[:, i + c] = err
        w[:, b1:] -= errors @ u[b0:b1, b1:]
    return (q * scale.double()[:, None]).float(), {"codebook": codebook, "scale": scale}
