"""compressor.passes.smoothquant: migration factors and the per-layer alpha search."""
import pytest
import torch

from compressor.passes.smoothquant import SmoothingChoice, search_smoothing, smoothing_factors, w8a8_relative_error

ALPHAS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


def max_amax(t: torch.Tensor) -> float:
    return float(t.abs().max())


def gen(seed):
    return torch.Generator().manual_seed(seed)


def outlier_data(seed=0, tokens=2048, features=96, out=64):
    x = torch.randn(tokens, features, generator=gen(seed))
    x[:, [3, 17, 60]] *= torch.tensor([60.0, 120.0, 90.0])  # a few huge outlier channels
    w = torch.randn(out, features, generator=gen(seed + 1000)) * 0.05
    return x, w


def test_outliers_get_smoothed_and_error_drops():
    x, w = outlier_data()
    choice = search_smoothing(x, w, x.abs().amax(dim=0), max_amax, ALPHAS)
    assert isinstance(choice, SmoothingChoice)
    assert choice.alpha in ALPHAS
    assert choice.smooth is not None and choice.smooth.shape == (96,)
    assert choice.error_unsmoothed == pytest.approx(w8a8_relative_error(x, w, max_amax, None))
    assert choice.error == pytest.approx(w8a8_relative_error(x, w, max_amax, choice.smooth))
    assert choice.error < 0.5 * choice.error_unsmoothed
    # the outlier channels are the ones scaled down the most
    assert set(torch.argsort(choice.smooth)[:3].tolist()) == {3, 17, 60}
    # and the chosen alpha is the best of the grid
    for alpha in ALPHAS:
        smooth = 1.0 / smoothing_factors(x.abs().amax(dim=0), w, alpha)
        assert choice.error <= w8a8_relative_error(x, w, max_amax, smooth) + 1e-12


def test_outliers_with_percentile_observer():
    from calibrators.observers import make_observer

    def percentile_amax(t):
        obs = make_observer("percentile", percentile=99.99)
        obs.observe(t)
        return obs.compute_amax()

    x, w = outlier_data(seed=3)
    choice = search_smoothing(x, w, x.abs().amax(dim=0), percentile_amax, ALPHAS)
    assert choice.alpha is not None
    assert choice.error < choice.error_unsmoothed


@pytest.mark.parametrize("seed", range(8))
def test_search_never_worse_than_unsmoothed(seed):
    g = gen(seed)
    features = 32 + 16 * (seed % 3)
    x = torch.randn(512, features, generator=g) * (0.5 + torch.rand(features, generator=g))
    w = torch.randn(48, features, generator=g) * 0.1
    choice = search_smoothing(x, w, x.abs().amax(dim=0), max_amax, ALPHAS)
    base = w8a8_relative_error(x, w, max_amax, None)
    assert choice.error_unsmoothed == pytest.approx(base)
    assert choice.error <= choice.error_unsmoothed
    if choice.alpha is None:
        assert choice.smooth is None and choice.error == choice.error_unsmoothed
    else:
        assert choice.error < choice.error_unsmoothed


def test_empty_alpha_grid_means_no_smoothing():
    x, w = outlier_data()
    choice = search_smoothing(x, w, x.abs().amax(dim=0), max_amax, [])
    assert choice.alpha is None and choice.smooth is None
    assert choice.error == choice.error_unsmoothed > 0


def test_smoothing_factors_formula_and_shape():
    act = torch.tensor([4.0, 1.0, 9.0, 0.25])
    w = torch.tensor([[1.0, -2.0, 0.5, 4.0], [-0.5, 1.0, -1.0, 2.0]])  # column amax: 1, 2, 1, 4
    s = smoothing_factors(act, w, 0.5)
    assert s.shape == (4,)
    assert s.tolist() == pytest.approx([2.0, 1.0 / 2**0.5, 3.0, 0.25])
    assert smoothing_factors(act, w, 1.0).tolist() == pytest.approx(act.tolist())
    assert smoothing_factors(act, w, 0.0).tolist() == pytest.approx([1.0, 0.5, 1.0, 0.25])


def test_smoothing_factors_clamped():
    act = torch.tensor([0.0, 1e12, 1.0, 1.0])
    w = torch.tensor([[1.0, 1.0, 0.0, 1e12]])
    s = smoothing_factors(act, w, 1.0)
    assert torch.isfinite(s).all()
    assert s.tolist() == pytest.approx([1e-4, 1e4, 1.0, 1.0])
    s = smoothing_factors(act, w, 0.5)
    assert torch.isfinite(s).all() and (s >= 1e-4).all() and (s <= 1e4).all()
    # dead activation channel: sqrt(1e-5); huge activation: 1e6 → 1e4; dead weight column: 1 / sqrt(1e-5);
    # huge weight column: 1e-6 → 1e-4
    assert s.tolist() == pytest.approx([1e-5**0.5, 1e4, 1e-5**-0.5, 1e-4], rel=1e-4)
