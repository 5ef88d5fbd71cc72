"""Token merging inside the MNIST DiT's blocks (ToMeSD-style: merge before attention and MLP, unmerge after):
speed per denoiser call and sample quality, for a few r (latent tokens merged per block, of 49).

    python benchmarks/dit_token_merging.py [--r 8 16 24] [--samples 1000] [--output FILE]

Each r is the `tome` pass with that fixed r. Samples: classes in turn, seed 1000 (never the calibration
noise), DDIM 25 steps, guidance 1.5; judge accuracy by examples/mnist_dit/judge.pt; PSNR against the FP32
samples. Speed: PyTorch denoiser calls on a batch of 200 latents (a guided batch of 100 images), 2
threads, the median of interleaved repeats. Writes benchmarks/results/dit_token_merging.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.dit_presets_psnr import draw  # noqa: E402
from benchmarks.pruning_dit import judge_accuracy  # noqa: E402
from compressor.diffusion.quality import psnr, ssim  # noqa: E402
from compressor.model import load_model  # noqa: E402
from compressor.tokens.tome import patch_token_merging, tome_schedule  # noqa: E402


def call_seconds(handle, batch: dict, repeats: int) -> list[float]:
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            handle.adapter.forward(handle.model, batch)
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "examples/mnist_dit/model"))
    p.add_argument("--judge", default=str(ROOT / "examples/mnist_dit/judge.pt"))
    p.add_argument("--r", nargs="*", type=int, default=[8, 16, 24])
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--output", default=str(ROOT / "benchmarks/results/dit_token_merging.json"))
    args = p.parse_args()
    torch.set_num_threads(2)
    judge = torch.jit.load(args.judge).eval()
    handle = load_model(args.model)
    blocks = len(handle.model.transformer_blocks)
    generator = torch.Generator().manual_seed(0)
    batch = {"hidden_states": torch.randn(200, *handle.adapter.latent_shape(handle.model), generator=generator),
             "timestep": torch.full((200,), 500), "class_labels": torch.arange(200) % 11}
    rows, reference, times = [], None, {}
    for r in [0, *args.r]:
        patch_token_merging(handle.model, tome_schedule(r, blocks))
        images = draw(handle, args.samples, seed=1000)
        reference = images if reference is None else reference
        row = {"r": r, "tokens_in_attention_and_mlp": 49 - r, "judge_accuracy": judge_accuracy(judge, images)}
        if r:
            row.update(psnr=psnr(reference, images), ssim=ssim(reference, images))
        rows.append(row)
        print(row, flush=True)
    for _ in range(args.repeats):  # interleaved: drift hits every r alike
        for row in rows:
            patch_token_merging(handle.model, tome_schedule(row["r"], blocks))
            times.setdefault(row["r"], []).extend(call_seconds(handle, batch, 1))
    base = float(np.median(times[0]))
    for row in rows:
        row["ms_per_denoiser_call"] = 1000 * float(np.median(times[row["r"]]))
        row["speedup"] = base / float(np.median(times[row["r"]]))
        row["judge_delta_points"] = 100 * (row["judge_accuracy"] - rows[0]["judge_accuracy"])
    result = {"model": "examples/mnist_dit/model", "samples": args.samples, "latent_tokens": 49,
              "timing": "PyTorch, batch 200 latents, 2 threads, median of interleaved calls", "models": rows}
    Path(args.output).write_text(json.dumps(result, indent=2), encoding="utf-8")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
