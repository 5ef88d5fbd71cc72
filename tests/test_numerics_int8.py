"""compressor.numerics.int8 and the W8A8 QuantLinear: symmetric INT8 arithmetic and the W8A8 Linear."""
import math

import pytest
import torch
from torch import nn

from compressor.quant_linear import QuantLinear
from compressor.numerics.int8 import (
    INT8_MAX,
    INT8_MIN,
    dequantize_int8,
    fake_quantize_int8,
    int8_scale,
    quantize_int8,
    quantize_weight_int8_per_channel,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- quantize_int8 -----------------------------------------------------------------------------


def test_round_half_to_even_scale_one():
    x = torch.tensor([0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, -3.5, 0.49, 0.51, -0.51])
    q = quantize_int8(x, torch.tensor(1.0))
    assert q.dtype == torch.int8
    assert q.tolist() == [0, 2, 2, 4, 0, -2, -2, -4, 0, 1, -1]


def test_round_half_to_even_with_non_unit_scale():
    # Exact binary fractions: x / 0.25 is exactly .5 away from an integer.
    x = torch.tensor([0.125, 0.375, 0.625, -0.125, -0.375])
    q = quantize_int8(x, torch.tensor(0.25))
    assert q.tolist() == [0, 2, 2, 0, -2]


def test_saturation_at_int8_limits():
    x = torch.tensor([126.4, 127.0, 127.6, 128.0, 1e6, -127.0, -128.0, -128.4, -129.0, -1e6])
    q = quantize_int8(x, torch.tensor(1.0))
    assert q.tolist() == [126, 127, 127, 127, 127, -127, -128, -128, -128, -128]
    assert (INT8_MIN, INT8_MAX) == (-128, 127)


def test_per_channel_axis0():
    x = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    q = quantize_int8(x, torch.tensor([1.0, 0.5]), axis=0)
    assert q.tolist() == [[1, 2, 3], [2, 4, 6]]


def test_per_channel_axis1_and_negative_axis():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    scale = torch.tensor([1.0, 0.5, 0.25])
    expected = [[1, 4, 12], [4, 10, 24]]
    assert quantize_int8(x, scale, axis=1).tolist() == expected
    assert quantize_int8(x, scale, axis=-1).tolist() == expected
    # dequantize uses the same axis convention
    assert torch.equal(dequantize_int8(quantize_int8(x, scale, axis=1), scale, axis=1), x)


def test_per_channel_axis_on_3d_tensor():
    x = torch.ones(2, 3, 4)
    scale = torch.tensor([1.0, 0.5, 0.25])
    q = quantize_int8(x, scale, axis=1)
    assert q[:, 0].unique().tolist() == [1]
    assert q[:, 1].unique().tolist() == [2]
    assert q[:, 2].unique().tolist() == [4]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_rejected(bad):
    x = torch.tensor([1.0, bad, 2.0])
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_int8(x, torch.tensor(1.0))


def test_round_trip_error_at_most_half_a_step():
    scale = torch.tensor(0.037)
    x = (torch.rand(10_000, generator=gen(1)) * 2 - 1) * 127 * float(scale)  # inside the range
    err = (dequantize_int8(quantize_int8(x, scale), scale) - x).abs()
    assert float(err.max()) <= float(scale) / 2 * (1 + 1e-5)
    # and the error is not trivially zero: values really were rounded
    assert float(err.mean()) > float(scale) / 10


def test_round_trip_clips_out_of_range_values():
    scale = torch.tensor(0.1)
    x = torch.tensor([100.0, -100.0])
    assert dequantize_int8(quantize_int8(x, scale), scale).tolist() == pytest.approx([12.7, -12.8])


def test_fake_quantize_matches_quantize_dequantize():
    scale = torch.tensor(0.05)
    x = torch.randn(4096, generator=gen(2)) * 3  # some values saturate
    expected = dequantize_int8(quantize_int8(x, scale), scale)
    assert torch.allclose(fake_quantize_int8(x, scale), expected, atol=1e-7, rtol=0)


# --- scales ----------------------------------------------------------------------------------


def test_int8_scale_values():
    assert float(int8_scale(12.7)) == pytest.approx(0.1)
    s = int8_scale(torch.tensor([0.0, 2.54, 127.0]))
    assert s.tolist() == pytest.approx([1.0, 0.02, 1.0])


def test_int8_scale_zero_amax_is_positive_and_harmless():
    s = int8_scale(0.0)
    assert float(s) > 0 and math.isfinite(float(s))
    q = quantize_int8(torch.zeros(5), s)
    assert q.tolist() == [0] * 5
    # a tiny but positive amax still gives a positive, finite scale
    tiny = int8_scale(torch.tensor(1e-45))
    assert float(tiny) > 0 and math.isfinite(float(tiny))


def test_per_channel_weight_quantization_bound():
    w = torch.randn(64, 48, generator=gen(3))
    w[5] *= 100.0  # an outlier row must not hurt the others: scales are per output channel
    w[7] = 0.0  # an all-zero row
    q, scale = quantize_weight_int8_per_channel(w)
    assert q.dtype == torch.int8 and q.shape == w.shape
    assert scale.shape == (64,)
    assert torch.allclose(scale[torch.arange(64) != 7], w.abs().amax(dim=1)[torch.arange(64) != 7] / 127)
    assert float(scale[7]) > 0 and q[7].eq(0).all()
    # each row's largest magnitude maps to ±127
    assert q[torch.arange(64) != 7].abs().amax(dim=1).eq(127).all()
    err = (dequantize_int8(q, scale, axis=0) - w).abs()
    assert (err <= scale[:, None] / 2 * (1 + 1e-5)).all()
    assert float(err[0].max()) < float(w[5].abs().max()) / 127 / 2 / 10  # row 0 kept its own fine scale


# --- W8A8 QuantLinear --------------------------------------------------------------------------


def _rel_error(a, b):
    return float((a - b).norm() / b.norm())


def _linear(in_features=64, out_features=32, bias=True, seed=0):
    torch.manual_seed(seed)
    layer = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        layer.bias.uniform_(-1, 1) if bias else None
    return layer


def test_from_linear_close_to_float():
    linear = _linear()
    x = torch.randn(256, 64, generator=gen(4))
    layer = QuantLinear.from_linear(linear, "int8", float(x.abs().max()))
    assert layer.weight_values.dtype == torch.int8
    assert layer.weight_scale.dtype == torch.float32
    assert layer.input_smooth is None
    assert float(layer.input_scale) == pytest.approx(float(x.abs().max()) / 127)
    assert torch.equal(layer.bias, linear.bias.detach())
    with torch.no_grad():
        ref = linear(x)
        out = layer(x)
    err = _rel_error(out, ref)
    assert 0 < err < 0.02
    # int8 buffers are what gets saved
    state = layer.state_dict()
    assert state["weight_values"].dtype == torch.int8
    assert set(state) == {"weight_values", "weight_scale", "input_scale", "bias"}


def test_from_linear_without_bias():
    linear = _linear(bias=False)
    layer = QuantLinear.from_linear(linear, "int8", 4.0)
    assert layer.bias is None
    x = torch.randn(32, 64, generator=gen(5))
    with torch.no_grad():
        assert _rel_error(layer(x), linear(x)) < 0.02


def test_from_linear_dequantized_weight_within_half_step():
    linear = _linear()
    layer = QuantLinear.from_linear(linear, "int8", 3.0)
    err = (layer.dequantized_weight() - linear.weight.detach()).abs()
    assert (err <= layer.weight_scale[:, None] / 2 * (1 + 1e-5)).all()


def test_from_linear_with_smoothing_keeps_float_product():
    linear = _linear()
    smooth = 2.0 ** (torch.rand(64, generator=gen(6)) * 2 - 1)  # positive, in [0.5, 2]
    x = torch.randn(256, 64, generator=gen(7))
    amax = float((x * smooth).abs().max())
    layer = QuantLinear.from_linear(linear, "int8", amax, smooth)
    assert layer.weight_values.dtype == torch.int8
    assert torch.equal(layer.input_smooth, smooth)
    # the stored weight is W / smooth (i.e. W * s): dequantized weight * smooth ≈ W
    w = linear.weight.detach()
    deq = layer.dequantized_weight()
    assert (deq - w / smooth).abs().le(layer.weight_scale[:, None] / 2 * (1 + 1e-5)).all()
    assert torch.allclose(deq * smooth, w, atol=float((layer.weight_scale[:, None] * smooth).max()) / 2 + 1e-6)
    # the float product (x * smooth) @ (W / smooth)^T equals x @ W^T
    assert torch.allclose((x * smooth) @ (w / smooth).T, x @ w.T, atol=1e-4)
    with torch.no_grad():
        ref = linear(x)
        out = layer(x)
    assert 0 < _rel_error(out, ref) < 0.03
    # the smoothing is not a no-op: dropping it gives a clearly different (wrong) output
    unsmoothed = nn.functional.linear(x, deq, layer.bias)
    assert _rel_error(unsmoothed, ref) > 0.2


def test_smoothing_helps_with_outlier_channels():
    linear = _linear()
    x = torch.randn(512, 64, generator=gen(8))
    x[:, :3] *= 80.0  # outlier input channels ruin a per-tensor input scale
    w_amax = linear.weight.detach().abs().amax(dim=0)
    s = (x.abs().amax(dim=0).sqrt() / w_amax.sqrt())  # alpha = 0.5
    smooth = 1.0 / s
    plain = QuantLinear.from_linear(linear, "int8", float(x.abs().max()))
    smoothed = QuantLinear.from_linear(linear, "int8", float((x * smooth).abs().max()), smooth)
    with torch.no_grad():
        ref = linear(x)
        assert _rel_error(smoothed(x), ref) < 0.5 * _rel_error(plain(x), ref)
