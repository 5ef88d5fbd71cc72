"""Image-quality metrics for generated images, checked against hand-computed values and independent
numpy/scipy implementations."""
import warnings
from types import SimpleNamespace

import matplotlib.image
import numpy as np
import pytest
import torch
from scipy import linalg, signal
from torch import nn

from compressor.diffusion import quality
from compressor.diffusion.quality import frechet_distance, judge_scores, psnr, save_sample_grid, ssim
from compressor.errors import CompressorError
from compressor.evaluation.generated_images import load_judge


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_images(seed: int, shape=(3, 2, 16, 20)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 1.8 - 0.9


# --- PSNR -----------------------------------------------------------------------------------------------------

def test_psnr_of_a_constant_offset():
    reference = random_images(0)
    # MSE 0.02**2 on data range 2: 10 * log10(4 / 0.0004) = 40 dB
    assert psnr(reference, reference + 0.02) == pytest.approx(40.0, abs=1e-9)
    assert psnr(reference, reference - 0.02, data_range=1.0) == pytest.approx(10 * np.log10(1 / 0.0004), abs=1e-9)


def test_psnr_averages_per_image_and_caps_identical_pairs():
    reference = random_images(1, (2, 1, 8, 8))
    offsets = torch.tensor([0.02, 0.2], dtype=torch.float64).view(2, 1, 1, 1)
    # per image 40 dB and 20 dB; pooling the MSE first would give about 22.97 dB instead
    assert psnr(reference, reference + offsets) == pytest.approx(30.0, abs=1e-9)
    assert psnr(reference, reference) == 100.0
    one_identical = reference + torch.tensor([0.0, 0.02], dtype=torch.float64).view(2, 1, 1, 1)
    assert psnr(reference, one_identical) == pytest.approx((100.0 + 40.0) / 2, abs=1e-9)


def test_psnr_rejects_mismatched_shapes():
    with pytest.raises(CompressorError):
        psnr(random_images(0), random_images(0)[:, :1])


# --- SSIM -----------------------------------------------------------------------------------------------------

def reference_ssim(x: np.ndarray, y: np.ndarray, data_range: float = 2.0) -> float:
    """Straightforward SSIM: scipy 'valid' convolution per image and channel with the 11x11 sigma-1.5 Gaussian."""
    offsets = np.arange(11) - 5.0
    window = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 1.5**2))
    window /= window.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    maps = []
    for image_x, image_y in zip(x, y):
        for a, b in zip(image_x, image_y):
            def blur(t):
                return signal.convolve2d(t, window, mode="valid")
            mu_a, mu_b = blur(a), blur(b)
            var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
            maps.append((2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(maps))


def test_ssim_of_identical_images_is_one():
    images = random_images(2, (2, 1, 28, 28))
    assert ssim(images, images) == pytest.approx(1.0, abs=1e-6)
    assert ssim(images.float(), images.float()) == pytest.approx(1.0, abs=1e-6)


def test_ssim_matches_an_independent_implementation():
    reference = random_images(3)
    noise = torch.randn(reference.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    candidate = (reference * 0.7 + 0.3 * noise).clamp(-1, 1)
    expected = reference_ssim(reference.numpy(), candidate.numpy())
    assert 0.05 < expected < 0.95
    assert ssim(reference, candidate) == pytest.approx(expected, abs=1e-5)
    assert ssim(reference, candidate, data_range=1.0) == pytest.approx(
        reference_ssim(reference.numpy(), candidate.numpy(), data_range=1.0), abs=1e-5)


def test_ssim_of_constant_images_has_a_closed_form():
    # no variance anywhere, so only the luminance term is left: (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.5, -0.25, (0.01 * 2.0) ** 2
    x, y = torch.full((1, 1, 11, 13), a), torch.full((1, 1, 11, 13), b)
    assert ssim(x, y) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), abs=1e-6)


def test_ssim_drops_for_a_degraded_image():
    images = random_images(5, (2, 1, 28, 28))
    blurred = torch.nn.functional.avg_pool2d(images, 3, stride=1, padding=1)
    assert ssim(images, blurred) < 0.9


def test_ssim_rejects_images_smaller_than_the_window():
    with pytest.raises(CompressorError, match="11x11"):
        ssim(torch.zeros(1, 1, 10, 28), torch.zeros(1, 1, 10, 28))


# --- Fréchet distance -----------------------------------------------------------------------------------------

def samples_with_exact_moments(seed: int, mean: np.ndarray, variances: np.ndarray, n: int = 50) -> np.ndarray:
    """Samples whose empirical mean and (N-1)-normalised covariance are exactly `mean` and diag(`variances`)."""
    z = np.random.default_rng(seed).standard_normal((n, len(mean)))
    q, _ = np.linalg.qr(z - z.mean(0))  # orthonormal columns that still sum to zero
    return mean + q * np.sqrt((n - 1) * variances)


def test_frechet_distance_of_diagonal_gaussians_has_a_closed_form():
    mu_a, var_a = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 0.25, 4.0, 2.0])
    mu_b, var_b = np.array([1.0, 1.0, 0.0, 0.0]), np.array([0.5, 1.0, 1.0, 3.0])
    a, b = samples_with_exact_moments(0, mu_a, var_a), samples_with_exact_moments(1, mu_b, var_b)
    np.testing.assert_allclose(np.cov(a, rowvar=False), np.diag(var_a), atol=1e-12)
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum(var_a + var_b - 2 * np.sqrt(var_a * var_b))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_matches_a_symmetric_square_root_formula():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((200, 6)) @ rng.standard_normal((6, 6))
    b = rng.standard_normal((150, 6)) @ rng.standard_normal((6, 6)) + 0.3
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Tr sqrt(Sa Sb) = Tr sqrt(Sa^1/2 Sb Sa^1/2), whose argument is symmetric, so eigh suffices
    values, vectors = np.linalg.eigh(cov_a)
    root_a = vectors @ np.diag(np.sqrt(values)) @ vectors.T
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    expected = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(torch.from_numpy(a).float(), torch.from_numpy(b).float()) == pytest.approx(expected, rel=1e-4)


def test_frechet_distance_of_identical_sets_is_zero():
    a = np.random.default_rng(3).standard_normal((100, 8))
    assert abs(frechet_distance(a, a.copy())) < 1e-8


def test_frechet_distance_adds_a_ridge_when_sqrtm_fails(monkeypatch):
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((60, 3)), rng.standard_normal((60, 3)) * 2
    exact = frechet_distance(a, b)
    calls = []

    def failing_first(matrix):
        calls.append(matrix)
        return np.full_like(matrix, np.nan) if len(calls) == 1 else linalg.sqrtm(matrix)

    monkeypatch.setattr(quality, "linalg", SimpleNamespace(sqrtm=failing_first))
    assert frechet_distance(a, b) == pytest.approx(exact, rel=1e-4)
    ridge = 1e-6 * np.eye(3)
    expected_retry = (np.cov(a, rowvar=False) + ridge) @ (np.cov(b, rowvar=False) + ridge)
    assert len(calls) == 2
    np.testing.assert_allclose(calls[1], expected_retry, rtol=1e-12)


def test_frechet_distance_rejects_mismatched_dimensions():
    with pytest.raises(CompressorError):
        frechet_distance(np.zeros((10, 3)), np.zeros((10, 4)))


# --- judge ----------------------------------------------------------------------------------------------------

class ArgmaxPixelJudge(nn.Module):
    """Features are the flattened pixels and the logits equal the features, so the prediction is the
    position of the brightest pixel."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, images):
        assert not torch.is_grad_enabled()
        self.batches.append(len(images))
        features = images.flatten(1)
        return features, features


def brightest_pixel_images(brightest: list[int]) -> torch.Tensor:
    images = torch.full((len(brightest), 1, 2, 2), -1.0)
    images.view(len(brightest), 4)[torch.arange(len(brightest)), torch.tensor(brightest)] = 1.0
    return images


def test_judge_scores_accuracy_and_features():
    brightest = [0, 3, 2, 1, 1, 0, 3]
    labels = [0, 3, 1, 1, 2, 0, 3]  # images 2 and 4 are misclassified: 5 of 7 correct
    images = brightest_pixel_images(brightest)
    judge = ArgmaxPixelJudge()
    scores = judge_scores(judge, images, torch.tensor(labels), batch_size=3)
    assert scores["accuracy"] == pytest.approx(5 / 7, abs=1e-12)
    assert judge.batches == [3, 3, 1]  # one call per batch of <= 3
    assert scores["features"].dtype == np.float64
    np.testing.assert_array_equal(scores["features"], images.flatten(1).numpy())
    assert judge_scores(ArgmaxPixelJudge(), images, np.array(brightest))["accuracy"] == 1.0
    unlabelled = judge_scores(ArgmaxPixelJudge(), images)
    assert unlabelled["accuracy"] is None
    np.testing.assert_array_equal(unlabelled["features"], images.flatten(1).numpy())


def test_judge_scores_rejects_a_judge_without_the_contract():
    class LogitsOnly(nn.Module):
        def forward(self, images):
            return images.flatten(1)

    with pytest.raises(CompressorError, match=r"\(logits, features\)"):
        judge_scores(LogitsOnly(), brightest_pixel_images([0, 1]), [0, 1])
    with pytest.raises(CompressorError, match="one label per image"):
        judge_scores(ArgmaxPixelJudge(), brightest_pixel_images([0, 1]), [0])


class ScriptableArgmaxPixelJudge(nn.Module):
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = images.flatten(1)
        return features, features


def test_a_torchscript_judge_file_needs_no_code_to_load(tmp_path):
    path = tmp_path / "judge.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(ScriptableArgmaxPixelJudge()), str(path))
    judge = load_judge(path)
    brightest = [2, 0, 3, 3]
    scores = judge_scores(judge, brightest_pixel_images(brightest), [2, 0, 3, 1])
    assert scores["accuracy"] == 0.75
    np.testing.assert_array_equal(scores["features"], brightest_pixel_images(brightest).flatten(1).numpy())


def test_load_judge_errors(tmp_path):
    with pytest.raises(CompressorError, match="judge classifier not found"):
        load_judge(tmp_path / "missing.pt")
    weights = tmp_path / "judge.safetensors"
    weights.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(CompressorError, match="is not a TorchScript judge") as info:
        load_judge(weights)
    assert "\n" not in str(info.value)


# --- sample grid ----------------------------------------------------------------------------------------------

def test_save_sample_grid_writes_a_png_atomically(tmp_path):
    path = tmp_path / "grid.png"
    path.write_bytes(b"old")
    rows = {
        "fp32": random_images(6, (12, 1, 28, 28)).float(),
        "int8 W8A8": torch.full((5, 1, 28, 28), -1.0),  # fewer images than columns
        "colour": torch.zeros(3, 3, 16, 16),  # 0 in [-1, 1] is mid grey
    }
    save_sample_grid(rows, path, columns=10)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[1] > pixels.shape[0]
    rgb = pixels[..., :3]
    assert (rgb.max(-1) < 0.02).any()  # the all -1 images render black
    assert (np.abs(rgb - 0.5).max(-1) < 0.01).any()  # the all 0 images render mid grey


def test_save_sample_grid_needs_rows(tmp_path):
    with pytest.raises(CompressorError):
        save_sample_grid({}, tmp_path / "grid.png")
    assert not list(tmp_path.iterdir())
