"""How far a compressed model's output is from the original's, on the batches a recipe measures it on."""
from __future__ import annotations

import torch


@torch.no_grad()
def output_error(handle, batches: list[dict], references: list[torch.Tensor]) -> float:
    """Relative squared error of the model output against the original's, over real tokens."""
    num = den = 0.0
    for batch, ref in zip(batches, references):
        mask = handle.adapter.token_mask(batch)
        out = handle.adapter.forward(handle.model, batch)
        num += float((out - ref)[mask].pow(2).sum())
        den += float(ref[mask].pow(2).sum())
    return num / max(den, 1e-12)


def pooled_error(handle, batches: list[dict], references: list[torch.Tensor]) -> float:
    """Relative squared error of what the user consumes, where the adapter pools the output into one
    vector per input (a sentence embedding); the token-level ``output_error`` otherwise."""
    if not handle.adapter.capabilities.pooling:
        return output_error(handle, batches, references)
    pool = handle.adapter.pool
    num = den = 0.0
    for batch, ref in zip(batches, references):
        out, ref = pool(handle.adapter.forward(handle.model, batch), batch), pool(ref, batch)
        num += float((out - ref).pow(2).sum())
        den += float(ref.pow(2).sum())
    return num / max(den, 1e-12)
