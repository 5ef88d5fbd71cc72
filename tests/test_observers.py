"""Tests for calibrators.observers (range observers choosing a symmetric amax)."""

import math

import numpy as np
import pytest
import torch

from calibrators.observers import (
    OBSERVERS,
    AbsHistogram,
    EntropyObserver,
    MaxObserver,
    MSEObserver,
    PercentileObserver,
    RangeObserver,
    make_observer,
)

ALL_NAMES = ["entropy", "max", "mse", "percentile"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fake_quant_mse(x: torch.Tensor, amax: float, num_bits: int = 8) -> float:
    """Mean squared error of symmetric quantize-dequantize of x at amax."""
    qmax = 2 ** (num_bits - 1) - 1
    scale = amax / qmax
    x = x.double()
    q = torch.clamp(torch.round(x / scale), -qmax, qmax) * scale
    return float(((q - x) ** 2).mean())


def feed(obs: RangeObserver, x: torch.Tensor, batches: int = 4) -> RangeObserver:
    for chunk in x.chunk(batches):
        obs.observe(chunk)
    return obs


# --- max ----------------------------------------------------------------------


def test_max_observer_tracks_true_abs_max_over_batches():
    g = gen(1)
    batches = [torch.randn(3, 17, 5, generator=g) * s for s in (1.0, 4.0, 0.5)]
    batches[1][0, 3, 2] = -42.5  # most extreme value is negative, in a middle batch
    obs = MaxObserver()
    for b in batches:
        obs.observe(b)
    expected = max(float(b.abs().max()) for b in batches)
    assert expected == 42.5
    assert obs.compute_amax() == pytest.approx(expected, rel=0, abs=0)


# --- histogram ----------------------------------------------------------------


def test_histogram_growth_keeps_all_counts_and_matches_direct_histogram():
    g = gen(2)
    parts = [torch.rand(1000, generator=g) * 1e-3, torch.rand(5000, generator=g) * 3.0,
             torch.randn(7000, generator=g) * 40.0, torch.rand(10, generator=g)]
    hist = AbsHistogram(num_bins=256)
    for p in parts:
        hist.add(p.abs())
    n = sum(p.numel() for p in parts)
    assert hist.total == n
    assert hist.range >= hist.max_value == max(float(p.abs().max()) for p in parts)
    # Doubling merges bins exactly, so counts agree with a one-shot histogram over
    # the final range (up to float rounding right at bin edges).
    direct = torch.histc(torch.cat(parts).abs().double(), bins=256, min=0.0, max=hist.range)
    assert float((direct - hist.counts).abs().sum()) <= 0.001 * n
    assert hist.edges.shape == (257,) and hist.centers.shape == (256,)
    assert float(hist.edges[-1]) == pytest.approx(hist.range)


def test_histogram_handles_zero_batches_before_growth():
    hist = AbsHistogram(num_bins=64)
    hist.add(torch.zeros(100))
    hist.add(torch.full((10,), 2.0))
    assert hist.total == 110
    assert float(hist.counts[0]) == 100 and float(hist.counts[-1]) == 10


def test_histogram_rejects_odd_bin_count():
    with pytest.raises(ValueError, match="num_bins"):
        AbsHistogram(num_bins=7)


# --- percentile ---------------------------------------------------------------


@pytest.mark.parametrize("pct", [50.0, 99.0, 99.9, 99.99])
def test_percentile_matches_numpy_within_a_bin(pct):
    x = torch.randn(400_000, generator=gen(3)) * 2.0
    obs = feed(PercentileObserver(percentile=pct), x)
    expected = float(np.percentile(x.abs().numpy(), pct))
    assert abs(obs.compute_amax() - expected) <= obs.histogram.bin_width


def test_percentile_100_is_the_max():
    x = torch.randn(10_000, generator=gen(4))
    obs = feed(PercentileObserver(percentile=100), x)
    assert obs.compute_amax() == pytest.approx(float(x.abs().max()))


@pytest.mark.parametrize("bad", [0, -1.0, 100.01, 1000])
def test_bad_percentile_raises(bad):
    with pytest.raises(ValueError, match="percentile"):
        PercentileObserver(percentile=bad)


# --- mse ----------------------------------------------------------------------


def test_mse_on_gaussian_clips_below_max_and_is_near_grid_optimum():
    x = torch.randn(200_000, generator=gen(5))
    obs = feed(MSEObserver(), x)
    amax = obs.compute_amax()
    top = float(x.abs().max())
    assert amax < 0.95 * top
    err = fake_quant_mse(x, amax)
    assert err < fake_quant_mse(x, top)
    grid_best = min(fake_quant_mse(x, float(a)) for a in torch.linspace(0.4 * top, top, 120))
    assert err <= 1.01 * grid_best


def test_mse_clips_harder_at_fewer_bits():
    x = torch.randn(200_000, generator=gen(6))
    a8 = feed(MSEObserver(num_bits=8), x).compute_amax()
    a4 = feed(MSEObserver(num_bits=4), x).compute_amax()
    assert a4 < a8
    # Known optimum for 4-bit symmetric Gaussian is around 2.5 sigma (tolerant bounds).
    assert 2.0 < a4 < 3.2


# --- entropy ------------------------------------------------------------------


def test_entropy_on_uniform_returns_close_to_max():
    x = torch.rand(200_000, generator=gen(7)) * 6.0 - 3.0
    amax = feed(EntropyObserver(), x).compute_amax()
    assert 0.95 * 3.0 <= amax <= float(x.abs().max())


def test_entropy_on_gaussian_clips_but_keeps_the_bulk():
    x = torch.randn(200_000, generator=gen(8))
    amax = feed(EntropyObserver(), x).compute_amax()
    assert 2.5 < amax < float(x.abs().max())


# --- outliers -----------------------------------------------------------------


@pytest.mark.parametrize("cls", [MSEObserver, EntropyObserver])
def test_single_huge_outlier_is_clipped(cls):
    x = torch.randn(1_000_000, generator=gen(9))
    x[12345] = 100.0  # MSE only clips it if the bulk is large enough to outweigh it
    amax = feed(cls(), x).compute_amax()
    assert amax < 20.0  # far below the outlier...
    assert amax > 2.0   # ...but still covering the Gaussian bulk


# --- common behaviour -----------------------------------------------------------


@pytest.mark.parametrize("name", ALL_NAMES)
def test_compute_amax_before_observe_raises(name):
    obs = make_observer(name)
    with pytest.raises(RuntimeError, match="observer has seen no data"):
        obs.compute_amax()
    obs.observe(torch.empty(0))  # empty batches do not count as data
    with pytest.raises(RuntimeError, match="observer has seen no data"):
        obs.compute_amax()


@pytest.mark.parametrize("name", ALL_NAMES)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_input_raises(name, bad):
    obs = make_observer(name)
    x = torch.randn(100, generator=gen(10))
    x[7] = bad
    with pytest.raises(ValueError, match="non-finite"):
        obs.observe(x)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_all_zero_data_gives_zero_amax(name):
    obs = make_observer(name)
    obs.observe(torch.zeros(4, 4))
    assert obs.compute_amax() == 0.0


@pytest.mark.parametrize("name", ALL_NAMES)
def test_accepts_half_precision_and_amax_bounded_by_max(name):
    x = torch.randn(2, 3, 1000, generator=gen(11)).half()
    obs = feed(make_observer(name), x)
    value = obs.compute_amax()
    assert 0.0 < value <= float(x.abs().max().float()) + 1e-6


def test_make_observer_and_registry():
    assert sorted(OBSERVERS) == ALL_NAMES
    for name, cls in OBSERVERS.items():
        assert cls.name == name
        assert isinstance(make_observer(name), cls)
    obs = make_observer("percentile", percentile=99.5, num_bits=6, num_bins=512)
    assert isinstance(obs, PercentileObserver)
    assert (obs.percentile, obs.num_bits, obs.quant_max, obs.histogram.num_bins) == (99.5, 6, 31, 512)
    with pytest.raises(ValueError) as info:
        make_observer("xyz")
    assert str(info.value) == "unknown observer 'xyz'; choose one of: entropy, max, mse, percentile"


def test_bad_num_bits_raises():
    with pytest.raises(ValueError, match="num_bits"):
        MaxObserver(num_bits=1)
