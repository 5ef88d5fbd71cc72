"""Step caching on the MNIST DiT: transformer-block evaluations per image, sampling wall time, judge accuracy
and PSNR against the FP32 samples, for FP32, `step-cache` and `step-cache-int8`, at each guidance scale asked.

    python benchmarks/dit_step_cache.py [--samples 1000] [--guidance 1.5 2 3] [--output benchmarks/results/dit_step_cache.json]

Each preset calibrates once on the default trajectory (64 images, seed 0), a threshold per guidance scale
of its table. Every model then samples the same images at each guidance scale (classes in turn, seed 1000,
never the calibration noise; DDIM 25 steps, batches of 100) in PyTorch on 2 threads, one after the other in
this process, with the cache prepared for that guidance (``StepCache.prepare``); the wall time covers the
sampling loop only. Judge: examples/mnist_dit/judge.pt.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from compressor.diffusion.quality import psnr, ssim
from compressor.diffusion.step_cache import step_cache_of
from compressor.model import load_model
from compressor.pipeline import compress
from compressor.recipe import load_recipe
from compressor.checkpoint import load_compressed
from harness import RESULTS, add_dit_arguments, draw, judge_accuracy, timed, write_results


def timed_draw(handle, samples: int, guidance: float) -> tuple[torch.Tensor, float, float]:
    """(images, seconds, block evaluations per image)."""
    cache = step_cache_of(handle.model)
    if cache is not None:
        cache.prepare(guidance, 25)
        cache.reset_counts()
    images, seconds = timed(lambda: draw(handle, samples, seed=1000, guidance=guidance))
    blocks = len(handle.model.transformer_blocks)
    evaluations = cache.block_evaluations / cache.trajectories if cache is not None else 25 * blocks
    return images, seconds, evaluations


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dit_arguments(p)
    p.add_argument("--presets", nargs="*", default=["step-cache", "step-cache-int8"])
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--guidance", nargs="+", type=float, default=[1.5, 2.0, 3.0])
    p.add_argument("--output", default=str(RESULTS / "dit_step_cache.json"))
    args = p.parse_args()
    torch.set_num_threads(2)
    judge = torch.jit.load(args.judge).eval()
    handles = {"fp32": load_model(args.model)}
    records = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.presets:
            compress(args.model, load_recipe(name), None, Path(scratch) / name)
            handles[name] = load_compressed(Path(scratch) / name)  # loading applies the recorded cache
            records[name] = next(s for s in handles[name].info["passes"] if s["pass"] == "step_cache")
        draw(handles["fp32"], 100, seed=1000)  # warm-up
        rows = []
        for guidance in args.guidance:
            reference, base = None, None
            for name, handle in handles.items():
                images, seconds, evaluations = timed_draw(handle, args.samples, guidance)
                row = {"model": name, "guidance": guidance, "sampling_seconds": seconds,
                       "block_evaluations": evaluations, "judge_accuracy": judge_accuracy(judge, images)}
                if name == "fp32":
                    reference, base = images, row
                else:
                    row.update(psnr=psnr(reference, images), ssim=ssim(reference, images),
                               threshold=step_cache_of(handle.model).threshold)
                row["block_evaluations_ratio"] = row["block_evaluations"] / base["block_evaluations"]
                row["speedup"] = base["sampling_seconds"] / row["sampling_seconds"]
                row["judge_delta_points"] = 100 * (row["judge_accuracy"] - base["judge_accuracy"])
                rows.append(row)
                print(row, flush=True)
    result = {"model": "examples/mnist_dit/model", "samples": args.samples,
              "sampling": "classes in turn, seed 1000, DDIM 25 steps, batches of 100, 2 threads",
              "calibration": {name: record["calibration"] for name, record in records.items()},
              "models": rows}
    write_results(args.output, result)
    print(f"{'model':16s} {'guid':>4s} {'thresh':>6s} {'blocks/img':>10s} {'×':>5s} {'seconds':>8s} {'speed':>6s} "
          f"{'judge %':>8s} {'Δ':>6s} {'PSNR':>6s}")
    for row in rows:
        print(f"{row['model']:16s} {row['guidance']:4g} {row.get('threshold', 0):6.3f} {row['block_evaluations']:10.1f} "
              f"{row['block_evaluations_ratio']:5.2f} {row['sampling_seconds']:8.1f} {row['speedup']:6.2f} "
              f"{100 * row['judge_accuracy']:8.1f} {row['judge_delta_points']:+6.1f} {row.get('psnr', float('nan')):6.2f}")


if __name__ == "__main__":
    main()
