"""SparseGPT: the pattern holds exactly, the output error beats magnitude and Wanda pruning on correlated
inputs, and with uncorrelated inputs it is plain magnitude pruning."""
from __future__ import annotations

import pytest
import torch

from compressor.passes.sparsegpt import sparsegpt_prune


from tests.test_gptq import correlated_inputs, hessian, output_error  # noqa: E402  (the same layer fixtures as GPTQ)


# Baselines written independently of compressor.numerics.sparsity: plain torch, one mask per score.
def keep_top_24(scores: torch.Tensor) -> torch.Tensor:
    groups = scores.reshape(scores.shape[0], -1, 4)
    top = groups.topk(2, dim=-1).indices
    return torch.zeros_like(groups, dtype=torch.bool).scatter(-1, top, True).reshape(scores.shape)


def keep_top_half(scores: torch.Tensor) -> torch.Tensor:
    top = scores.topk(scores.shape[1] // 2, dim=1).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter(1, top, True)


def weight(rows: int = 32, columns: int = 128, seed: int = 1) -> torch.Tensor:
    return torch.randn(rows, columns, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("target", [(2, 4), (1, 4), (4, 8)])
def test_nm_pattern_holds_exactly(target):
    n, m = target
    w, x = weight(), correlated_inputs()
    pruned, mask = sparsegpt_prune(w, hessian(x), target, block_size=64)
    assert pruned.dtype == torch.float32 and pruned.shape == w.shape and mask.dtype == torch.bool
    assert torch.equal(pruned[~mask], torch.zeros(int((~mask).sum())))
    assert torch.equal(mask.reshape(32, -1, m).sum(dim=-1), torch.full((32, 128 // m), n))
    assert int(((pruned != 0).reshape(32, -1, m).sum(dim=-1) > n).sum()) == 0


@pytest.mark.parametrize("target, keep_top", [((2, 4), keep_top_24), (0.5, keep_top_half)])
def test_beats_magnitude_and_wanda(target, keep_top):
    w, x = weight(), correlated_inputs()
    pruned, _ = sparsegpt_prune(w, hessian(x), target)
    magnitude = w * keep_top(w.abs())
    wanda = w * keep_top(w.abs() * x.norm(dim=0))
    error = output_error(x, w, pruned)
    assert error < output_error(x, w, magnitude)
    assert error < output_error(x, w, wanda)


def test_identity_hessian_is_magnitude_pruning():
    # H = I: H⁻¹ and its Cholesky factor U are diagonal, so the update err · U[j, j+1:] onto other
    # columns is zero and every saliency w² / U_jj² is w² times the same constant.
    w = weight(16, 64, seed=2)
    pruned, mask = sparsegpt_prune(w, torch.eye(64, dtype=torch.float64), (2, 4), block_size=32)
    expected = keep_top_24(w.abs())
    assert torch.equal(mask, expected)
    assert torch.equal(pruned, w * expected)


def test_unstructured_half_per_row():
    # Each block of 128 columns zeroes round(0.5 · 128) = 64 per row: with two full blocks, exactly
    # half of every row; a 96-column last block adds round(0.5 · 96) = 48.
    x = correlated_inputs(features=256)
    pruned, mask = sparsegpt_prune(weight(8, 256), hessian(x), 0.5)
    assert torch.equal(mask.sum(dim=1), torch.full((8,), 128))
    assert torch.equal(pruned[~mask], torch.zeros(8 * 128))
    x = correlated_inputs(features=224)
    _, mask = sparsegpt_prune(weight(8, 224), hessian(x), 0.5)
    assert torch.equal(mask.sum(dim=1), torch.full((8,), 64 + 48))


def test_dead_input_is_pruned_without_nan():
    x = correlated_inputs()
    x[:, 5] = 0.0
    pruned, mask = sparsegpt_prune(weight(), hessian(x), (2, 4), report=(report := {}))
    assert torch.isfinite(pruned).all() and report["damp"] == 0.01
    assert not mask[:, 5].any()


def test_rejects_bad_shapes():
    x = correlated_inputs()
    with pytest.raises(ValueError, match="multiples of M"):
        sparsegpt_prune(weight(), hessian(x), (2, 4), block_size=66)
    with pytest.raises(ValueError, match="Hessian shape"):
        sparsegpt_prune(weight(), torch.eye(64, dtype=torch.float64), (2, 4))
    with pytest.raises(ValueError, match="sparsity"):
        sparsegpt_prune(weight(), hessian(x), 1.5)
