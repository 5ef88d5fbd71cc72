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
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.dit_presets_psnr import draw  # noqa: E402
from compressor.diffusion.quality import psnr, ssim  # noqa: E402
from compressor.model import load_model  # noqa: E402
from compressor.pipeline import compress  # noqa: E402
from compressor.recipe import Recipe  # noqa: E402

RECIPES = {
    "sparse24 (2:4, SparseGPT)": [{"sparsify": {"target": "2:4"}}],
    "MLP channels -25%": [{"prune_structured": {"ratios": {"channels": 0.25}}}],
}


def judge_accuracy(judge, images: torch.Tensor) -> float:
    labels = torch.arange(len(images)) % 10
    with torch.no_grad():
        logits = torch.cat([judge(images[i : i + 200])[0] for i in range(0, len(images), 200)])
    return float((logits.argmax(1) == labels).float().mean())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=str(ROOT / "examples/mnist_dit/model"))
    p.add_argument("--judge", default=str(ROOT / "examples/mnist_dit/judge.pt"))
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--output", default=str(ROOT / "benchmarks/results/pruning_dit.json"))
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
    Path(args.output).write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
