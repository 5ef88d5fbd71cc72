"""Image quality of every DiT preset against FP32 on the example MNIST DiT, in one short run.

    python benchmarks/dit_presets_psnr.py [--samples 200] [--output FILE]

Each preset compresses examples/mnist_dit/model on its default calibration trajectory (64 images,
seed 0). FP32 and each compressed model then sample the same images (classes in turn, seed 1000, so
never the calibration noise; DDIM 25 steps, guidance 1.5) with each format's exact numerics in
PyTorch; PSNR and SSIM are against the FP32 samples. Uses only the sampling loop and the adapter, so
the same script measures any version of the engine. Writes benchmarks/results/dit_presets_psnr.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compressor.diffusion.quality import psnr, ssim  # noqa: E402
from compressor.diffusion.sampling import sample  # noqa: E402
from compressor.model import load_model  # noqa: E402
from compressor.pipeline import compress  # noqa: E402
from compressor.recipe import load_recipe  # noqa: E402

PRESETS = ["int8", "fp8", "w4a8", "fp4-int8"]


def draw(handle, count: int, seed: int) -> torch.Tensor:
    adapter, model = handle.adapter, handle.model
    labels = torch.arange(count) % 10
    out = []
    for index, start in enumerate(range(0, count, 100)):
        chunk = labels[start : start + 100]
        out.append(sample(adapter.denoiser(model), adapter.scheduler(), chunk, shape=adapter.latent_shape(model),
                          steps=25, guidance=1.5, seed=seed + index, null_conditioning=adapter.null_conditioning(model, chunk)))
    return torch.cat(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=str(ROOT / "examples/mnist_dit/model"))
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--presets", nargs="+", default=PRESETS)
    p.add_argument("--output", default=str(ROOT / "benchmarks/results/dit_presets_psnr.json"))
    args = p.parse_args()
    torch.set_num_threads(2)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    reference = draw(load_model(args.model), args.samples, seed=1000)
    results = {"model": "examples/mnist_dit/model", "commit": commit, "samples": args.samples, "presets": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.presets:
            handle = compress(args.model, load_recipe(name), None, Path(scratch) / name)
            images = draw(handle, args.samples, seed=1000)
            results["presets"][name] = {"psnr": psnr(reference, images), "ssim": ssim(reference, images),
                                        "bits_per_weight": handle.info["bits_per_weight"]}
            print(name, results["presets"][name], flush=True)
    Path(args.output).write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
