"""Pruning the example MNIST DiT: 2:4 on the attention and MLP Linears, and 25% of the MLP channels removed.

    python benchmarks/pruning_dit.py [--samples 1000] [--output FILE]

Each model is compressed on the default calibration trajectory (64 images, seed 0). FP32 and each
pruned model then sample the same images (classes in turn, seed 1000, never the calibration noise;
DDIM 25 steps, guidance 1.5). Judge accuracy is the share of samples the example judge
(examples/mnist_dit/judge.pt) classifies as the class asked for; PSNR is against the FP32 samples.
Writes benchmarks/results/pruning_dit.json.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from compressor.diffusion.quality import psnr, ssim
from compressor.model import load_model
from compressor.pipeline import compress
from compressor.recipe import Recipe
from harness import RESULTS, add_dit_arguments, draw, judge_accuracy, write_results

RECIPES = {
    "sparse24 (2:4, SparseGPT)": [{"sparsify": {"target": "2:4"}}],
    "MLP channels -25%": [{"prune_structured": {"ratios": {"channels": 0.25}}}],
}


def main() -> None:
    p = argparse.ArgumentParser()
    add_dit_arguments(p)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--output", default=str(RESULTS / "pruning_dit.json"))
    args = p.parse_args()
    torch.set_num_threads(2)
    judge = torch.jit.load(args.judge).eval()
    reference = draw(load_model(args.model), args.samples, seed=1000)
    results = {"model": "examples/mnist_dit/model", "samples": args.samples,
               "fp32": {"judge_accuracy": judge_accuracy(judge, reference)}, "models": {}}
    print("FP32", results["fp32"], flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        for i, (label, passes) in enumerate(RECIPES.items()):
            handle = compress(args.model, Recipe.from_dict({"name": f"pruned-{i}", "passes": passes}), None,
                              Path(scratch) / str(i))
            images = draw(handle, args.samples, seed=1000)
            row = {"judge_accuracy": judge_accuracy(judge, images), "psnr": psnr(reference, images),
                   "ssim": ssim(reference, images), "passes": handle.info["passes"]}
            row["judge_delta_points"] = 100 * (row["judge_accuracy"] - results["fp32"]["judge_accuracy"])
            results["models"][label] = row
            print(label, {k: v for k, v in row.items() if k != "passes"}, flush=True)
    write_results(args.output, results)


if __name__ == "__main__":
    main()
