"""GPTQ rounding: on the format's grid, better than round-to-nearest on correlated inputs, and
equal to it where there is nothing to compensate."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor.numerics.formats import Int8Weight, make_weight_format
from compressor.passes.gptq import collect_hessians, gptq_quantize

FORMATS = ("int8", "fp8", "int4", "nvfp4", "mxfp4")


def correlated_inputs(tokens: int = 512, features: int = 128, seed: int = 0) -> torch.Tensor:
    """X = Z A: a random mixing matrix makes the input channels strongly correlated."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(tokens, features, generator=g)
    a = torch.randn(features, features, generator=g) / features**0.5 + torch.eye(features)
    return z @ a


def hessian(x: torch.Tensor) -> torch.Tensor:
    return 2.0 * x.double().T @ x.double() / len(x)


def output_error(x: torch.Tensor, w: torch.Tensor, w_q: torch.Tensor) -> float:
    return float((x @ w.T - x @ w_q.T).pow(2).sum())


def rtn(fmt, w: torch.Tensor) -> torch.Tensor:
    return fmt.dequantize(fmt.quantize(w))


@pytest.mark.parametrize("name", FORMATS)
def test_storable_and_better_than_round_to_nearest(name):
    fmt = make_weight_format(name)
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(1))
    x = correlated_inputs()
    w_q, scales = gptq_quantize(w, hessian(x), fmt)

    assert w_q.dtype == torch.float32 and w_q.shape == w.shape
    assert torch.equal(fmt.dequantize(fmt.quantize(w_q, scales)), w_q)
    gptq_error, rtn_error = output_error(x, w, w_q), output_error(x, w, rtn(fmt, w))
    if name in ("int4", "nvfp4", "mxfp4"):
        assert gptq_error < rtn_error
    else:  # 8-bit rounding error is tiny; allow float noise on the comparison
        assert gptq_error <= rtn_error * (1 + 1e-6)


def test_identity_hessian_is_round_to_nearest():
    # Uncorrelated inputs: H⁻¹ is diagonal, so no column's error reaches another.
    fmt = make_weight_format("int8")
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(2))
    w_q, _ = gptq_quantize(w, torch.eye(64), fmt)
    assert torch.equal(w_q, rtn(fmt, w))


def test_dead_input_channel_gives_no_nan():
    x = correlated_inputs()
    x[:, 5] = 0.0
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(3))
    # damp=0 as well: then only the dead-channel handling keeps H invertible.
    for name, damp in (("int4", 0.01), ("nvfp4", 0.01), ("int8", 0.0)):
        fmt = make_weight_format(name)
        w_q, scales = gptq_quantize(w, hessian(x), fmt, damp=damp)
        assert torch.isfinite(w_q).all()
        assert (w_q[:, 5] == 0).all()  # a dead input's weight is set to zero
        assert torch.equal(fmt.dequantize(fmt.quantize(w_q, scales)), w_q)


def test_hand_computed_two_inputs():
    # int8 with one scale per row: scale = amax / 127 = 1.27 / 127 = 0.01.
    # Column 0: 0.3049 rounds to 0.30, error e0 = 0.0049.
    # H = [[4, -1.5], [-1.5, 1]] gives H⁻¹ ∝ [[1, 1.5], [1.5, 4]], and GPTQ moves column 1 by
    # -e0 · H⁻¹[0,1] / H⁻¹[0,0] = -0.0049 · 1.5 = -0.00735: 1.27 becomes 1.26265, which rounds to
    # 1.26 (round-to-nearest keeps 1.27).
    w = torch.tensor([[0.3049, 1.27]])
    h = torch.tensor([[4.0, -1.5], [-1.5, 1.0]], dtype=torch.float64)
    w_q, scales = gptq_quantize(w, h, Int8Weight(), damp=0.0)
    assert torch.allclose(scales["scale"], torch.tensor([[0.01]]))
    assert torch.allclose(w_q, torch.tensor([[0.30, 1.26]]), atol=1e-6)
    assert torch.allclose(rtn(Int8Weight(), w), torch.tensor([[0.30, 1.27]]), atol=1e-6)

    def loss(q):  # the quantity GPTQ minimises: (w - q) H (w - q)ᵀ
        e = (w - q).double()
        return float(e @ h @ e.T)

    assert loss(w_q) < loss(rtn(Int8Weight(), w))


@pytest.mark.parametrize("block_size", [32, 96])
def test_block_size_does_not_change_the_result(block_size):
    # Lazy block updates only reorder the arithmetic; with a block boundary inside an int4 group
    # (96) the group's scales must still see the errors of the block's earlier columns.
    fmt = make_weight_format("int4")
    w = torch.randn(16, 256, generator=torch.Generator().manual_seed(4))
    h = hessian(correlated_inputs(features=256))
    reference, ref_scales = gptq_quantize(w, h, fmt, block_size=128)
    w_q, scales = gptq_quantize(w, h, fmt, block_size=block_size)
    assert torch.allclose(scales["scale"], ref_scales["scale"], rtol=1e-6)
    assert torch.allclose(w_q, reference, atol=1e-6)


def test_indefinite_hessian_raises():
    with pytest.raises(ValueError, match="not positive definite"):
        gptq_quantize(torch.randn(4, 8), -torch.eye(8), make_weight_format("int8"))


def test_collect_hessians_matches_direct_computation():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))
    batches = []
    for tokens in (5, 7):
        x = torch.randn(2, tokens, 8)
        mask = torch.ones(2, tokens, dtype=torch.bool)
        mask[1, tokens - 2 :] = False  # padding: must be left out
        batches.append({"x": x, "mask": mask})
    result = collect_hessians(
        model, batches, ["0", "2"], forward=lambda m, b: m(b["x"]), token_mask=lambda b: b["mask"]
    )

    x0 = torch.cat([b["x"][b["mask"]] for b in batches]).double()
    h0, n0 = result["0"]
    assert n0 == len(x0) == 20
    assert torch.allclose(h0, 2.0 * x0.T @ x0 / len(x0))

    with torch.no_grad():
        x2 = torch.relu(model[0](torch.cat([b["x"][b["mask"]] for b in batches]))).double()
    h2, n2 = result["2"]
    assert n2 == 20 and h2.shape == (4, 4)
    assert torch.allclose(h2, 2.0 * x2.T @ x2 / len(x2))


def test_escalated_damping_is_reported():
    from compressor.numerics.formats import make_weight_format
    from compressor.passes.gptq import gptq_quantize

    torch.manual_seed(0)
    weight = torch.randn(4, 16)
    x = torch.randn(3, 16)
    x[:, 1] = -x[:, 0]  # rank-deficient and indefinite after a tiny negative perturbation
    hessian = (2.0 / 3 * x.T @ x).double()
    hessian -= torch.eye(16, dtype=torch.float64) * 0.05 * float(hessian.diagonal().mean())
    report: dict = {}
    gptq_quantize(weight, hessian, make_weight_format("int8"), damp=0.01, report=report)
    assert report["damp"] > 0.01  # 0.01 x the mean diagonal cannot lift a -0.05 x shift
    report = {}
    gptq_quantize(weight, torch.eye(16, dtype=torch.float64), make_weight_format("int8"), damp=0.01, report=report)
    assert report["damp"] == 0.01
