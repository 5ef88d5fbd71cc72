"""Class-conditional Diffusion Transformers: every model samples the same images (same seed, scheduler,
steps and guidance) in PyTorch with each format's exact numerics; the samples are scored against the
original's (PSNR, SSIM) and, given a judge, by class accuracy and the Fréchet distance of judge features to
real images.

A judge is a TorchScript file (torch.jit.save) of a module mapping images in [-1, 1], shape (N, C, H, W), to
(logits (N, classes), features (N, D)); examples/mnist_judge.py writes one. Real images come from IDX data
(calibrators/images.py): the last REFERENCE_IMAGES images of it, the part a model is not trained on."""
from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from compressor.diffusion.quality import frechet_distance, judge_scores, psnr, save_sample_grid, ssim
from calibrators.sampling import sample
from compressor.diffusion.step_cache import step_cache_of
from compressor.errors import CompressorError
from compressor.evaluation.base import Candidate, Column, CompareOptions, TaskEvaluator

REFERENCE_IMAGES = 1000


@dataclass
class SamplingSetup:
    samples: int = 1000
    steps: int = 25
    guidance: float = 1.5
    seed: int = 0
    chunk: int = 250  # images per sampling batch; each chunk has its own seed, identical for every model

    def validate(self) -> SamplingSetup:
        for name in ("samples", "steps", "chunk"):
            if getattr(self, name) < 1:
                raise CompressorError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.guidance < 1:
            raise CompressorError(f"guidance must be >= 1, got {self.guidance}")
        return self


def _classes(handle) -> int:
    classes = handle.adapter.num_classes(handle.model)
    if classes is None:
        raise CompressorError("image-quality comparison needs a class-conditional model (DiT with class labels)")
    return classes


def generate(handle, labels: torch.Tensor, setup: SamplingSetup, desc: str = "sampling") -> torch.Tensor:
    """Class-conditional samples from ``handle``'s PyTorch model (each format's exact numerics)."""
    adapter, model = handle.adapter, handle.model
    _classes(handle)
    cache = step_cache_of(model)
    if cache is not None:  # the threshold calibrated for this sampling, or a warning that none was
        cache.prepare(setup.guidance, setup.steps, type(adapter.scheduler()).__name__)
    out = []
    for index, start in enumerate(tqdm(range(0, len(labels), setup.chunk), desc=desc, unit="chunk", leave=False)):
        chunk = labels[start : start + setup.chunk]
        out.append(sample(adapter.denoiser(model), adapter.scheduler(), chunk, shape=adapter.latent_shape(model),
                          steps=setup.steps, guidance=setup.guidance, seed=setup.seed + index,
                          null_conditioning=adapter.null_conditioning(model, chunk)))
    return torch.cat(out)


def load_judge(path: str | Path) -> torch.jit.ScriptModule:
    """A TorchScript judge: images in [-1, 1] → (logits, features)."""
    path = Path(path)
    if not path.is_file():
        raise CompressorError(f"judge classifier not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # newer torch prefers torch.export; this still works
            judge = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError or ValueError, depending on what is wrong
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CompressorError(f"{path} is not a TorchScript judge (torch.jit.save of a module returning "
                              f"(logits, features)): {reason}") from None
    return judge.eval()


def images_from(path: str | Path) -> torch.Tensor:
    """Real images to measure the Fréchet distance against: the last REFERENCE_IMAGES of IDX image data."""
    from calibrators.images import load_idx_images

    try:
        return load_idx_images(path, last=REFERENCE_IMAGES)[0]
    except CompressorError as exc:
        raise CompressorError(f"--eval-data for a diffusion model must be IDX images (a directory holding "
                              f"*images-idx3-ubyte*, as MNIST ships): {exc}") from None


class GeneratedImages(TaskEvaluator):
    kind = "diffusion"
    figures = ("samples.png",)
    latency_key = "latency_ms_per_step"
    latency_header = "ms/step"

    def __init__(self, setup: SamplingSetup, judge_path: str | Path | None = None,
                 real_images: torch.Tensor | None = None, latency_batch: int = 16, save_samples: bool = False):
        self.setup = setup.validate()
        self.judge_path = judge_path
        self.judge = load_judge(judge_path) if judge_path is not None else None
        self.real_count = len(real_images) if real_images is not None else 0
        self.real_features = None
        if self.judge is not None and real_images is not None:
            self.real_features = judge_scores(self.judge, real_images)["features"]
        self.latency_batch, self.save_samples = latency_batch, save_samples
        self.images: dict[str, torch.Tensor] = {}
        self.labels: torch.Tensor | None = None

    @classmethod
    def from_options(cls, options: CompareOptions) -> GeneratedImages:
        setup = SamplingSetup(options.samples, options.steps, options.guidance, options.seed).validate()
        real = images_from(options.eval_data) if options.eval_data is not None else None
        return cls(setup, options.judge, real, options.batch, options.save_samples)

    def evaluate(self, model: Candidate) -> dict:
        labels = torch.arange(self.setup.samples) % _classes(model.handle)
        self.labels = labels
        cache = step_cache_of(model.handle.model)
        if cache is not None:
            cache.reset_counts()
        started = time.perf_counter()
        images = self.images[model.name] = generate(model.handle, labels, self.setup, desc=f"sampling {model.name}")
        metrics = {"sampling_seconds": time.perf_counter() - started,
                   # transformer blocks run per image: steps × blocks without a cache (a guided pair shares them)
                   "block_evaluations": (cache.block_evaluations / cache.trajectories if cache is not None else
                                         self.setup.steps * len(model.handle.adapter.blocks(model.handle.model)))}
        if not model.is_original:
            metrics["psnr_db"] = psnr(self.images["original"], images)
            metrics["ssim"] = ssim(self.images["original"], images)
        if self.judge is not None:
            scores = judge_scores(self.judge, images, labels)
            metrics["judge_accuracy"] = scores["accuracy"]
            if self.real_features is not None:
                metrics["frechet_distance"] = frechet_distance(scores["features"], self.real_features)
        return metrics

    def latency_feeds(self, model: Candidate) -> dict:
        inputs = model.handle.adapter.dummy_inputs(model.handle, batch=self.latency_batch)
        return {name: value.numpy() for name, value in inputs.items()}

    def latency_setup(self) -> dict:
        return {"batch": self.latency_batch,
                "statistic": "median per denoiser call after 3 warm-up runs, models interleaved"}

    def describe(self) -> dict:
        return {"sampling": {**asdict(self.setup), "scheduler": "DDIM", "labels": "classes in turn"},
                "judge": str(self.judge_path) if self.judge_path is not None else None,
                "real_images": self.real_count}

    @classmethod
    def columns(cls, report: dict) -> list[Column]:
        columns = [Column("PSNR dB", "psnr_db", lambda v: f"{v:.2f}"), Column("SSIM", "ssim", lambda v: f"{v:.4f}")]
        columns.append(Column("blocks/image", "block_evaluations", lambda v: f"{v:.0f}"))
        columns.append(Column("sampling s", "sampling_seconds", lambda v: f"{v:.1f}"))
        if report["judge"] is not None:
            columns.append(Column("judge acc %", "judge_accuracy", lambda v: f"{100 * v:.1f}"))
            if report["real_images"] > 0:
                columns.append(Column("Fréchet", "frechet_distance", lambda v: f"{v:.3f}"))
        return columns

    @classmethod
    def notes(cls, report: dict) -> list[str]:
        s = report["sampling"]
        notes = [f"Samples: {s['samples']} per model, classes in turn, seed {s['seed']}, DDIM {s['steps']} steps, "
                 f"guidance {s['guidance']:g}, in PyTorch with each format's exact numerics. PSNR and SSIM compare "
                 "each model's samples with the original's from the same noise."]
        if report["judge"] is not None:
            notes.append(f"Judge `{report['judge']}`: class accuracy of the samples"
                         + (f"; Fréchet distance between judge features of the samples and {report['real_images']} "
                            "real held-out images." if report["real_images"] > 0 else "."))
        return notes

    def write_figures(self, report: dict, out: Path) -> None:
        # one column per class: the first images are classes 0..9 in turn
        save_sample_grid(self.images, out / "samples.png", columns=min(10, self.setup.samples))
        if self.save_samples:  # the images as sampled, in [-1, 1], before any 8-bit conversion
            (out / "samples").mkdir()
            for name, images in self.images.items():
                np.savez(out / "samples" / f"{name}.npz", images=images.numpy().astype(np.float32),
                         labels=self.labels.numpy())
