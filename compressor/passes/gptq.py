"""Error-compensating weight rounding (the GPTQ method).

Rounding every weight to its nearest grid point treats the errors of different input columns as
independent, but a layer's inputs are correlated. What matters is the output error
||W X - Q X||^2 = tr((W - Q) H (W - Q)^T), with H = 2/n · Σ x xᵀ over calibration tokens. GPTQ rounds
the input columns one at a time and moves each column's rounding error onto the columns not yet
rounded, weighted by the inverse Hessian, so later columns absorb what earlier ones got wrong.
Scales are fixed group by group from the already-updated weights, so the result lies exactly on the
grid of the stored format and ``fmt.quantize(w_q, scales)`` stores it bit-exactly.
"""
from __future__ import annotations

import torch

from calibrators.collect import run_with_input_hooks
from calibrators.statistics import HessianAccumulator
from compressor.numerics.formats import WeightFormat
from compressor.numerics.hessian import upper_cholesky_of_inverse

def collect_hessians(model, batches, layer_names, forward, token_mask) -> dict[str, tuple[torch.Tensor, int]]:
    """{layer: (H = 2/n · Σ xᵀx over real tokens, float64 [in, in], n)} for each named layer's input."""
    sums = HessianAccumulator()
    run_with_input_hooks(model, batches, layer_names, sums, forward, token_mask, desc="calibration: hessians")
    return {name: (sums.hessians[name], sums.counts[name]) for name in sums.hessians}


@torch.no_grad()
def gptq_quantize(
    weight: torch.Tensor, hessian: torch.Tensor, fmt: WeightFormat, block_size: int = 128, damp: float = 0.01,
    report: dict | None = None, mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    """(rounded weight, float32 [out, in] on ``fmt``'s grid; the scales to store it with ``fmt.quantize``).
    ``report``, when given, receives the damping actually used (``damp``). ``mask`` (bool, True = kept)
    keeps a sparse layer's pruned weights exactly zero: they round to 0 (on every format's grid) and
    their error moves onto the kept weights like any other rounding error.

    Columns keep their order (no act-order), so each scale group stays a contiguous run of columns.
    """
    w = weight.detach().double().clone()
    h = hessian.detach().to(w.device).double().clone()
    columns = w.shape[1]
    if h.shape != (columns, columns):
        raise ValueError(f"GPTQ: Hessian shape {tuple(h.shape)} does not match weight {tuple(w.shape)}")
    # An input that was always zero carries no information: its weight cannot matter, so make it 0.
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    u = upper_cholesky_of_inverse(h, damp, report)

    keep = None if mask is None else mask.to(w.device).double()
    shared = fmt.shared_scales(weight.detach().float() if mask is None else weight.detach().float() * mask)
    group = fmt.group_size or columns
    q = torch.zeros_like(w)
    per_group: list[dict] = []
    scales: dict = {}
    for b0 in range(0, columns, block_size):
        b1 = min(b0 + block_size, columns)
        block = w[:, b0:b1].clone()
        errors = torch.zeros_like(block)  # scaled errors of this block, applied to later blocks at its end
        for j in range(b0, b1):
            i = j - b0
            if j % group == 0:
                # Scales come from the group's current weights. Columns past this block have not yet
                # received this block's errors (they are applied lazily), so add them here.
                g1 = min(j + group, columns)
                later = w[:, b1:g1] - errors[:, :i] @ u[b0:j, b1:g1]
                current = torch.cat([block[:, i:], later], dim=1)[:, : g1 - j]
                if keep is not None:
                    current = current * keep[:, j:g1]
                per_group.append(fmt.group_scales(current.float(), shared))
                scales = {**shared, **per_group[-1]}
            rounded = fmt.fake_quantize(block[:, i : i + 1].float(), scales).double()[:, 0]
            if keep is not None:
                rounded = rounded * keep[:, j]
            q[:, j] = rounded
            err = (block[:, i] - rounded) / u[j, j]
            block[:, i:] -= err[:, None] * u[j, j:b1][None, :]
            errors[:, i] = err
        w[:, b1:] -= errors @ u[b0:b1, b1:]

    stacked = {key: torch.cat([g[key] for g in per_group], dim=1) for key in per_group[0]}
    return q.float(), {**shared, **stacked}
