"""Image-quality metrics for generated images in [-1, 1]: PSNR, SSIM, Fréchet distance, judge accuracy and a
sample grid to look at."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

from compressor.atomic import atomic_file

from ..errors import CompressorError

PSNR_CAP_DB = 100.0


def _check_pair(reference: torch.Tensor, candidate: torch.Tensor) -> None:
    if reference.shape != candidate.shape or reference.dim() != 4 or len(reference) == 0:
        raise CompressorError(f"expected two non-empty (N, C, H, W) image batches of the same shape, "
                              f"got {tuple(reference.shape)} and {tuple(candidate.shape)}")


def psnr(reference: torch.Tensor, candidate: torch.Tensor, data_range: float = 2.0) -> float:
    """Mean over images of each image's PSNR in dB (data_range 2 for images in [-1, 1]).

    Each image's PSNR is capped at 100 dB, so identical pairs count as 100 dB instead of infinity and one
    identical pair cannot make the mean infinite."""
    _check_pair(reference, candidate)
    mse = (reference.double() - candidate.double()).pow(2).flatten(1).mean(1)
    per_image = 10 * torch.log10(data_range**2 / mse)  # mse 0 gives inf, which the cap turns into 100
    return per_image.clamp(max=PSNR_CAP_DB).mean().item()


def ssim(reference: torch.Tensor, candidate: torch.Tensor, data_range: float = 2.0) -> float:
    """Mean SSIM (Wang et al. 2004): 11x11 Gaussian window with sigma 1.5, K1 0.01, K2 0.03, no padding,
    each channel on its own, averaged over every valid pixel, channel and image."""
    _check_pair(reference, candidate)
    size, sigma = 11, 1.5
    if min(reference.shape[-2:]) < size:
        raise CompressorError(f"SSIM needs images of at least {size}x{size} pixels, got {tuple(reference.shape[-2:])}")
    x, y = reference.double(), candidate.double()
    channels = x.shape[1]
    g = torch.exp(-(torch.arange(size, dtype=torch.float64) - size // 2) ** 2 / (2 * sigma**2))
    g = g / g.sum()
    window = torch.outer(g, g).expand(channels, 1, size, size)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean().item()


def frechet_distance(features_a, features_b, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets (numpy or torch):
    ||mu_a - mu_b||^2 + Tr(Sa + Sb - 2 sqrtm(Sa Sb)), in float64."""
    a, b = (np.asarray(f.detach().cpu() if isinstance(f, torch.Tensor) else f, dtype=np.float64)
            for f in (features_a, features_b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise CompressorError(f"expected two (N, D) feature sets with N >= 2 and the same D, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        # Singular covariances (fewer samples than dimensions) can make sqrtm fail; a small ridge fixes that.
        offset = eps * np.eye(len(cov_a))
        covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    covmean = covmean.real  # round-off can leave tiny imaginary parts on a matrix whose root is real
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def judge_scores(judge, images: torch.Tensor, labels=None, batch_size: int = 500) -> dict:
    """Run a judge classifier over the images in batches. The judge maps a batch of images in [-1, 1] to
    (logits (N, classes), features (N, D)), as a TorchScript judge file does.

    Returns {"accuracy": fraction of images whose argmax logit equals their label (None without labels),
    "features": the judge's features as an (N, D) float64 array}."""
    if labels is not None:
        labels = torch.as_tensor(labels)
    if len(images) == 0 or (labels is not None and len(images) != len(labels)):
        raise CompressorError(f"expected one label per image and at least one image, "
                              f"got {len(images)} images and {len(labels) if labels is not None else 0} labels")
    correct, features = 0, []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            output = judge(batch)
            if (not isinstance(output, (tuple, list)) or len(output) != 2
                    or any(not isinstance(t, torch.Tensor) or t.dim() != 2 or len(t) != len(batch) for t in output)):
                raise CompressorError("the judge must return (logits, features), two (N, D) tensors for N images")
            logits, batch_features = output
            features.append(batch_features.double())
            if labels is not None:
                correct += (logits.argmax(1) == labels[start:start + batch_size]).sum().item()
    return {"accuracy": correct / len(images) if labels is not None else None,
            "features": torch.cat(features).cpu().numpy()}


def save_sample_grid(rows: dict[str, torch.Tensor], path: str | Path, columns: int = 10) -> None:
    """Write a PNG with one row per model: its first `columns` images side by side, labelled on the left.
    The file is written to a temporary name beside `path` and renamed, so it is complete or absent."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows:
        raise CompressorError("save_sample_grid needs at least one model's images")
    fig = Figure(figsize=(0.8 * columns + 1.5, 0.9 * len(rows) + 0.3), dpi=100)
    FigureCanvasAgg(fig)
    for ax, (name, images) in zip(fig.subplots(len(rows), 1, squeeze=False)[:, 0], rows.items()):
        shown = (images[:columns].detach().cpu().float().clamp(-1, 1) + 1) / 2
        # A white 2-pixel gap after each image keeps neighbours apart.
        strip = torch.cat(list(F.pad(shown, (0, 2), value=1.0)), dim=-1)[..., :-2].permute(1, 2, 0).numpy()
        if strip.shape[-1] == 1:
            ax.imshow(strip[..., 0], cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(strip)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_anchor("W")  # rows with fewer images stay aligned with the others on the left
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=10)
    fig.tight_layout()
    with atomic_file(path, overwrite=True) as scratch:
        fig.savefig(scratch, format="png")
