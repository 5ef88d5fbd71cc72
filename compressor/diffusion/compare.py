"""compressor compare for diffusion transformers: sample the same images with the original and each
compressed model (same seed, scheduler, steps and guidance), then score the samples against the
original's (PSNR, SSIM) and, given a judge classifier, by class accuracy and Fréchet distance to real
held-out images; plus ONNX latency per denoising step and size."""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from compressor.diffusion.quality import frechet_distance, judge_scores, psnr, save_sample_grid, ssim
from compressor.diffusion.sampling import sample
from compressor.errors import CompressorError
from compressor.evaluation.onnx_runner import median_latencies
from exporters.atomic import atomic_directory, check_can_write
from exporters.checkpoint import checkpoint_bytes, is_compressed_checkpoint, load_any
from exporters.onnx_export import export_onnx, onnx_session


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


def generate(handle, labels: torch.Tensor, setup: SamplingSetup, desc: str = "sampling") -> torch.Tensor:
    """Class-conditional samples from ``handle``'s PyTorch model (each format's exact numerics)."""
    adapter, model = handle.adapter, handle.model
    classes = adapter.num_classes(model)
    if classes is None:
        raise CompressorError("image-quality comparison needs a class-conditional model (DiT with class labels)")
    out = []
    for index, start in enumerate(tqdm(range(0, len(labels), setup.chunk), desc=desc, unit="chunk", leave=False)):
        chunk = labels[start : start + setup.chunk]
        out.append(sample(adapter.denoiser(model), adapter.scheduler(), chunk, shape=adapter.latent_shape(model),
                          steps=setup.steps, guidance=setup.guidance, seed=setup.seed + index,
                          null_conditioning=adapter.null_conditioning(model, chunk)))
    return torch.cat(out)


def compare_diffusion(model_dir, compressed_dirs: list, report_dir, setup: SamplingSetup, judge_path=None,
                      real_images: torch.Tensor | None = None, latency_batch: int = 16, threads: int = 2,
                      repeats: int = 15, overwrite: bool = False) -> dict:
    from compressor.evaluation.judge import load_judge

    setup.validate()
    check_can_write(Path(report_dir), overwrite)
    for path in compressed_dirs:
        if not is_compressed_checkpoint(path):
            raise CompressorError(f"{path} is not a compressed checkpoint (run compressor compress first)")
    judge = load_judge(judge_path) if judge_path is not None else None
    names = ["original"] + [Path(p).name for p in compressed_dirs]
    if len(set(names)) != len(names):
        raise CompressorError("compared directories need distinct names")
    paths = [Path(model_dir)] + [Path(p) for p in compressed_dirs]
    real_features = None
    if judge is not None and real_images is not None:
        real_features = judge_scores(judge, real_images, torch.zeros(len(real_images), dtype=torch.long))["features"]

    rows, images, sessions = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="compressor-compare-") as scratch:
        for name, path in tqdm(list(zip(names, paths)), desc="evaluating", unit="model"):
            handle = load_any(path)
            labels = torch.arange(setup.samples) % handle.adapter.num_classes(handle.model)
            images[name] = generate(handle, labels, setup, desc=f"sampling {name}")
            row = {"model": name, "path": str(path), "recipe": handle.info.get("recipe", {}).get("name", "fp32"),
                   "bits_per_weight": handle.info.get("bits_per_weight", 32.0),
                   "weights_bytes": checkpoint_bytes(path), "formats": _formats(handle.info)}
            if name != "original":
                row["psnr_db"] = psnr(images["original"], images[name])
                row["ssim"] = ssim(images["original"], images[name])
            if judge is not None:
                scores = judge_scores(judge, images[name], labels)
                row["judge_accuracy"] = scores["accuracy"]
                if real_features is not None:
                    row["frechet_distance"] = frechet_distance(scores["features"], real_features)
            onnx_path = export_onnx(handle, Path(scratch) / f"{name}.onnx", "onnxruntime")
            sessions[name] = onnx_session(onnx_path, threads)
            feeds = {k: v.numpy() for k, v in handle.adapter.dummy_inputs(handle, batch=latency_batch).items()}
            rows.append(row)
        latency = median_latencies(sessions, feeds, repeats=repeats)
    base = rows[0]
    for row in rows:
        row["latency_ms_per_step"] = latency[row["model"]] * 1000
        row["latency_ratio"] = latency[row["model"]] / latency["original"]
        row["size_ratio"] = row["weights_bytes"] / base["weights_bytes"]
    report = {
        "sampling": {**setup.__dict__, "scheduler": "DDIM", "labels": "classes in turn"},
        "judge": str(judge_path) if judge_path is not None else None,
        "real_images": len(real_images) if real_images is not None else 0,
        "latency_setup": {"runtime": "onnxruntime CPUExecutionProvider", "onnx_target": "onnxruntime",
                          "batch": latency_batch, "threads": threads, "repeats": repeats,
                          "statistic": "median per denoiser call after 3 warm-up runs, models interleaved"},
        "models": rows,
    }
    with atomic_directory(report_dir, overwrite) as out:
        (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        (out / "report.md").write_text(markdown_table(report), encoding="utf-8")
        # one column per class: the first images are classes 0..9 in turn
        save_sample_grid(images, out / "samples.png", columns=min(10, setup.samples))
    return report


def _formats(info: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for layer in info.get("layers", []):
        counts[layer["format"]] = counts.get(layer["format"], 0) + 1
    return counts


def markdown_table(report: dict) -> str:
    has_judge = report["judge"] is not None
    has_fd = report["real_images"] > 0 and has_judge
    head = ["model", "recipe", "bits/weight", "PSNR dB", "SSIM"] + (["judge acc %"] if has_judge else []) + (
        ["Fréchet"] if has_fd else []) + ["ms/step", "latency ×", "weights MB", "size ×"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["models"]:
        cells = [row["model"], row["recipe"], f"{row['bits_per_weight']:.2f}",
                 f"{row['psnr_db']:.2f}" if "psnr_db" in row else "-", f"{row['ssim']:.4f}" if "ssim" in row else "-"]
        if has_judge:
            cells.append(f"{100 * row['judge_accuracy']:.1f}")
        if has_fd:
            cells.append(f"{row['frechet_distance']:.3f}")
        cells += [f"{row['latency_ms_per_step']:.2f}", f"{row['latency_ratio']:.2f}",
                  f"{row['weights_bytes'] / 1e6:.2f}", f"{row['size_ratio']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    s, lat = report["sampling"], report["latency_setup"]
    notes = [
        "",
        (f"Samples: {s['samples']} per model, classes in turn, seed {s['seed']}, DDIM {s['steps']} steps, "
         f"guidance {s['guidance']:g}, in PyTorch with each format's exact numerics. PSNR and SSIM compare each "
         "model's samples with the original's from the same noise."),
    ]
    if has_judge:
        notes.append(f"Judge `{report['judge']}`: class accuracy of the samples"
                     + (f"; Fréchet distance between judge features of the samples and {report['real_images']} "
                        "real held-out images." if has_fd else "."))
    notes.append(f"Latency: one denoiser call of the ONNX export, {lat['runtime']}, batch {lat['batch']}, "
                 f"{lat['threads']} threads, {lat['statistic']}, {lat['repeats']} runs.")
    return "\n".join(lines + notes) + "\n"


def images_from(path) -> torch.Tensor:
    """Real images to measure the Fréchet distance against: the held-out split of an MNIST idx directory."""
    from compressor.evaluation.mnist import load_mnist

    path = Path(path)
    if not path.is_dir():
        raise CompressorError(f"--eval-data for a diffusion model must be a directory of MNIST idx files, got {path}")
    return load_mnist(path, "heldout")[0]



