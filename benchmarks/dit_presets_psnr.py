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
import tempfile
from pathlib import Path

import torch

from compressor.diffusion.quality import psnr, ssim
from compressor.model import load_model
from compressor.pipeline import compress
from compressor.recipe import load_recipe
from harness import DIT_MODEL, RESULTS, draw, write_results

PRESETS = ["int8", "fp8", "w4a8", "fp4-int8"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=str(DIT_MODEL))
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--presets", nargs="+", default=PRESETS)
    p.add_argument("--output", default=str(RESULTS / "dit_presets_psnr.json"))
    args = p.parse_args()
    torch.set_num_threads(2)
    reference = draw(load_model(args.model), args.samples, seed=1000)
    results = {"model": "examples/mnist_dit/model", "samples": args.samples, "presets": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.presets:
            handle = compress(args.model, load_recipe(name), None, Path(scratch) / name)
            images = draw(handle, args.samples, seed=1000)
            results["presets"][name] = {"psnr": psnr(reference, images), "ssim": ssim(reference, images),
                                        "bits_per_weight": handle.info["bits_per_weight"]}
            print(name, results["presets"][name], flush=True)
    write_results(args.output, results)


if __name__ == "__main__":
    main()
