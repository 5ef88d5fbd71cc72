"""W8A8, W4A8 and the FP4-INT8 hybrid on the example MNIST DiT: image quality against FP32.

    python benchmarks/dit_mnist.py [--model examples/mnist_dit/model] [--mnist ../shared/data/mnist] [--samples 1000]

Compresses the DiT trained by examples/train_mnist_dit.py with the int8, fp8, w4a8 and fp4-int8
(--max-bits 5.0) presets, and with the hybrid search without W4A8 among its candidates (nvfp4-int8),
each calibrated on the default trajectory (every class in turn, seed 0, the recipe's DDIM steps and
guidance). Then runs `compressor compare` on them: 1,000 class-conditional samples per model from
the same noise, PSNR/SSIM against the FP32 samples, the judge classifier's class accuracy, Fréchet
distance of judge features to the 1,000 held-out MNIST images, ONNX Runtime latency per denoising
step and size. Writes benchmarks/results/dit_mnist.json and benchmarks/results/dit_compare/
(report.md, samples.png), and prints the Done-when checks.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from compressor.cli import plan_table
from compressor.compare import markdown_table
from compressor.compare import compare_diffusion
from compressor.evaluation.generated_images import SamplingSetup, images_from
from compressor.pipeline import compress
from compressor.recipe import FLAT_PRESETS, flat_recipe, load_recipe
from harness import RESULTS, ROOT, add_dit_arguments, format_counts, timed, write_results

PRESETS = ["int8", "fp8", "w4a8", "fp4-int8", "nvfp4-int8"]
# settings that are not presets: name -> (base preset, overrides)
VARIANTS = {
    # the hybrid search without W4A8 among its candidates: NVFP4 W4A4 or INT8 W8A8 per layer
    "nvfp4-int8": ("fp4-int8", {"name": "nvfp4-int8", "candidates": ["nvfp4", "int8"]}),
}


def relabel_paths(report: dict, report_dir: Path, model: str) -> None:
    """Paths in the scratch directory mean nothing after the run; others are made relative to the repository."""
    for row in report["models"]:
        row["path"] = row["model"] if row["model"] != "original" else model
    if report["judge"]:
        report["judge"] = _relative(report["judge"])
    write_results(report_dir / "report.json", report)
    (report_dir / "report.md").write_text(markdown_table(report), encoding="utf-8")


def _relative(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return Path(path).name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dit_arguments(p, mnist=True)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=1.5)
    p.add_argument("--presets", nargs="+", default=PRESETS)
    p.add_argument("--seed", type=int, default=1000, help="sampling seed of the evaluation images")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", default=str(RESULTS))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.output)
    results = {"model": "examples/mnist_dit/model", "presets": {}}
    with tempfile.TemporaryDirectory(prefix="dit-bench-") as scratch:
        dirs = []
        for preset in args.presets:
            base, overrides = VARIANTS.get(preset, (preset, {}))
            recipe = flat_recipe({**FLAT_PRESETS[base], "name": base, **overrides}) if overrides else load_recipe(base)
            handle, seconds = timed(lambda: compress(args.model, recipe, None, Path(scratch) / preset))
            print(plan_table(handle.info), flush=True)
            results["presets"][preset] = {
                "seconds": round(seconds, 1),
                "bits_per_weight": handle.info["bits_per_weight"],
                "bits_per_weight_all_layers": handle.info["bits_per_weight_all_layers"],
                "formats": format_counts(handle.info["layers"]),
                "search": handle.info.get("search"),
                "calibration": handle.info["calibration"]["description"],
            }
            dirs.append(Path(scratch) / preset)
        # Evaluation noise from another seed than the calibration trajectory's (seed 0): no model is
        # scored on the images it was calibrated on.
        setup = SamplingSetup(args.samples, args.steps, args.guidance, seed=args.seed)
        report = compare_diffusion(args.model, dirs, out / "dit_compare", setup, judge_path=args.judge,
                                   real_images=images_from(args.mnist), latency_batch=16, threads=args.threads,
                                   overwrite=True)
    relabel_paths(report, out / "dit_compare", results["model"])
    results["compare"] = report
    rows = {row["model"]: row for row in report["models"]}
    fp32 = rows["original"]
    checks = {}
    if "int8" in rows:
        r = rows["int8"]
        checks["int8: PSNR >= 30 dB"] = r["psnr_db"] >= 30
        checks["int8: judge accuracy within 1 point"] = abs(r["judge_accuracy"] - fp32["judge_accuracy"]) <= 0.01
        checks["int8: Fréchet within 5%"] = r["frechet_distance"] <= 1.05 * fp32["frechet_distance"]
    if "w4a8" in rows:
        checks["w4a8: judge accuracy within 3 points"] = abs(rows["w4a8"]["judge_accuracy"] - fp32["judge_accuracy"]) <= 0.03
    for hybrid in ("fp4-int8", "nvfp4-int8"):
        if "w4a8" in rows and hybrid in rows:
            checks[f"{hybrid} <= 5.0 bits beats w4a8 on Fréchet"] = (
                rows[hybrid]["bits_per_weight"] <= 5.0 + 1e-9
                and rows[hybrid]["frechet_distance"] < rows["w4a8"]["frechet_distance"])
    results["checks"] = checks
    write_results(out / "dit_mnist.json", results)
    print(markdown_table(report))
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")


if __name__ == "__main__":
    main()
