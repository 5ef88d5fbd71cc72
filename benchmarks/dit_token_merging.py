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

import torch

from compressor.diffusion.quality import psnr, ssim
from compressor.model import load_model
from compressor.tokens.tome import patch_token_merging, tome_schedule
from harness import RESULTS, add_dit_arguments, draw, judge_accuracy, medians, time_calls, write_results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dit_arguments(p)
    p.add_argument("--r", nargs="*", type=int, default=[8, 16, 24])
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--output", default=str(RESULTS / "dit_token_merging.json"))
    args = p.parse_args()
    torch.set_num_threads(2)
    judge = torch.jit.load(args.judge).eval()
    handle = load_model(args.model)
    blocks = len(handle.model.transformer_blocks)
    generator = torch.Generator().manual_seed(0)
    batch = {"hidden_states": torch.randn(200, *handle.adapter.latent_shape(handle.model), generator=generator),
             "timestep": torch.full((200,), 500), "class_labels": torch.arange(200) % 11}
    rows, reference = [], None
    for r in [0, *args.r]:
        patch_token_merging(handle.model, handle.adapter, tome_schedule(r, blocks))
        images = draw(handle, args.samples, seed=1000)
        reference = images if reference is None else reference
        row = {"r": r, "tokens_in_attention_and_mlp": 49 - r, "judge_accuracy": judge_accuracy(judge, images)}
        if r:
            row.update(psnr=psnr(reference, images), ssim=ssim(reference, images))
        rows.append(row)
        print(row, flush=True)
    def denoise():
        return handle.adapter.forward(handle.model, batch)

    with torch.no_grad():  # one denoiser call per r in turn, each r patched in untimed: drift hits every r alike
        times = time_calls({row["r"]: denoise for row in rows}, args.repeats,
                           prepare=lambda r: patch_token_merging(handle.model, handle.adapter, tome_schedule(r, blocks)))
    seconds = medians(times)
    for row in rows:
        row["ms_per_denoiser_call"] = 1000 * seconds[row["r"]]
        row["speedup"] = seconds[0] / seconds[row["r"]]
        row["judge_delta_points"] = 100 * (row["judge_accuracy"] - rows[0]["judge_accuracy"])
    result = {"model": "examples/mnist_dit/model", "samples": args.samples, "latent_tokens": 49,
              "timing": "PyTorch, batch 200 latents, 2 threads, median of interleaved calls", "models": rows}
    write_results(args.output, result)
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
