"""Candidate-assignment refinement of a vector-quantized weight (the VQ4DiT method).

Nearest-entry assignment minimises each sub-vector's own error, not the layer's output error. Here every
sub-vector keeps a few candidate entries (its nearest ones, and the entry it has now) with a learnable
weight each; the codebook is learnable too. Both are trained by gradient descent on the layer's output
error over the calibration inputs, tr((Ŵ − W) H (Ŵ − W)ᵀ), with Ŵ built from the softmax-weighted
candidates. The softmax is sharpened as training goes, each sub-vector then takes its most weighted
candidate, and the codebook is trained once more for the hard assignment. The result is kept only when
its output error beats the starting point's, so refinement never makes a layer worse.
"""
from __future__ import annotations

import torch

from compressor.numerics.vq import sub_vectors


def output_error(weight: torch.Tensor, reference: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """tr(ΔW H ΔWᵀ) / tr(W H Wᵀ): the layer's relative output error over the calibration inputs."""
    delta = weight - reference
    return ((delta @ hessian) * delta).sum() / ((reference @ hessian) * reference).sum().clamp_min(1e-30)


def _candidates(points: torch.Tensor, codebook: torch.Tensor, current: torch.Tensor, count: int) -> torch.Tensor:
    """[n, count] entry indices: the current one first, then the nearest others."""
    distance = torch.cdist(points, codebook)
    distance.scatter_(1, current[:, None], -1.0)  # the current entry ranks first
    return distance.topk(min(count, len(codebook)), dim=1, largest=False).indices


@torch.enable_grad()
def refine_assignment(weight: torch.Tensor, hessian: torch.Tensor, codebook: torch.Tensor, scale: torch.Tensor,
                      indices: torch.Tensor, dim: int, candidates: int = 4, steps: int = 200, lr: float = 0.01,
                      ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(codebook float16, indices int64 [rows, in/dim], report) refining a VQ weight's ``indices`` and
    ``codebook`` against the float ``weight`` [rows, in] under ``hessian`` [in, in]."""
    rows, columns = weight.shape
    reference = weight.detach().float()
    h = hessian.detach().float()
    s = scale.float()[:, None]
    points = sub_vectors(reference / s, dim)

    def rebuild(vectors: torch.Tensor) -> torch.Tensor:
        return vectors.reshape(rows, columns) * s

    start_codebook = codebook.float()
    start_error = float(output_error(rebuild(start_codebook[indices.reshape(-1)]), reference, h))
    options = _candidates(points, start_codebook, indices.reshape(-1), candidates)
    logits = torch.zeros(options.shape, requires_grad=True)
    with torch.no_grad():
        logits[:, 0] = 2.0  # start close to the current assignment
    entries = start_codebook.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([logits, entries], lr=lr)
    for step in range(steps):
        temperature = 1.0 - 0.9 * step / max(steps - 1, 1)  # 1 → 0.1: soft, then nearly hard
        weights = torch.softmax(logits / temperature, dim=1)
        vectors = (weights[..., None] * entries[options]).sum(dim=1)
        loss = output_error(rebuild(vectors), reference, h)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    hard = options.gather(1, logits.detach().argmax(dim=1, keepdim=True))[:, 0]
    entries = entries.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([entries], lr=lr)
    for _ in range(steps // 2):
        loss = output_error(rebuild(entries[hard]), reference, h)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    refined = entries.detach().half()
    refined_error = float(output_error(rebuild(refined.float()[hard]), reference, h))
    report = {"error_before": start_error, "error_after": min(refined_error, start_error)}
    if refined_error >= start_error:
        return codebook.half(), indices.reshape(rows, -1), report
    return refined, hard.reshape(rows, -1), report
