"""Vector quantization on the example MNIST DiT: judge accuracy and PSNR against the FP32 samples.

    python benchmarks/vq_dit.py [--samples 1000] [--vq3-bits 3.3]

Same protocol as benchmarks/dit_mnist.py: calibration on the default trajectory (every class in turn, seed 0),
1,000 class-conditional samples per model from seed 1000, DDIM 25 steps, guidance 1.5, PSNR against the FP32
samples and the judge classifier's accuracy. The DiT's Linears are 128 wide, where a per-layer codebook and
row scales cost more than on MiniLM: vq3 (2-weight sub-vectors, 64 entries) is 3.06-3.25 bits there, so the
`vq3` model runs the preset with --vq3-bits (default 3.3) instead of its 3.0, searching vq3 against vq2 only
(the preset's NVFP4/INT8 fallbacks left out), and so takes vq3 on every Linear. `vq3-preset` is the preset as it
is (3.0 bits, where the 128-wide layers mix vq3 and vq2); `vq2` is the preset as it is.
Writes benchmarks/results/vq_dit.json.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from compressor.compare import compare_diffusion
from compressor.evaluation.generated_images import SamplingSetup, images_from
from compressor.pipeline import compress
from compressor.recipe import load_recipe
from harness import RESULTS, add_dit_arguments, format_counts, write_results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dit_arguments(p, mnist=True)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--vq3-bits", type=float, default=3.3)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--output", default=str(RESULTS / "vq_dit.json"))
    args = p.parse_args()
    torch.set_num_threads(2)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="vq-dit-") as scratch:
        dirs = []
        for name in ("vq3", "vq3-preset", "vq2"):
            recipe = load_recipe(name.removesuffix("-preset"))
            if name == "vq3":
                config = recipe.find("quantize").config
                # The recorded figures: vq3 against vq2 only (at 3.3 bits the search takes vq3 on every Linear).
                config.max_bits, config.candidates = args.vq3_bits, ["vq3", "vq2"]
            handle = compress(args.model, recipe, None, Path(scratch) / name)
            rows[name] = {"bits_per_weight": handle.info["bits_per_weight"],
                          "formats": format_counts(handle.info["layers"])}
            print(name, rows[name], flush=True)
            dirs.append(Path(scratch) / name)
        setup = SamplingSetup(args.samples, 25, 1.5, seed=args.seed)
        report = compare_diffusion(args.model, dirs, Path(scratch) / "compare", setup, judge_path=args.judge,
                                   real_images=images_from(args.mnist), latency_batch=16, threads=2, overwrite=True)
    by_model = {row["model"]: row for row in report["models"]}
    fp32 = by_model["original"]
    result = {"model": "examples/mnist_dit/model", "samples": args.samples, "seed": args.seed,
              "fp32_judge_accuracy": fp32["judge_accuracy"], "models": {}}
    for name, row in rows.items():
        r = by_model[name]
        row.update(judge_accuracy=r["judge_accuracy"], judge_change_points=100 * (r["judge_accuracy"] - fp32["judge_accuracy"]),
                   psnr_db=r.get("psnr_db"), ssim=r.get("ssim"), frechet_distance=r.get("frechet_distance"))
        result["models"][name] = row
        print(f"{name}: {row['bits_per_weight']:.3f} bits, judge {100 * row['judge_accuracy']:.1f}% "
              f"({row['judge_change_points']:+.1f}), PSNR {row['psnr_db']:.2f} dB", flush=True)
    print(f"FP32 judge {100 * fp32['judge_accuracy']:.1f}%")
    write_results(args.output, result)


if __name__ == "__main__":
    main()
