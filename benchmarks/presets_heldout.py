"""Every preset on all-MiniLM-L6-v2, calibrated and scored on disjoint halves of STS-B dev.

    python benchmarks/presets_heldout.py [--presets int8 nvfp4 ...] [--output FILE]

Calibration: 256 sentences sampled (seed 0) from the calibration half of ``benchmarks/harness.py``'s
split; evaluation: the 750 held-out pairs, Spearman x100 of the PyTorch model with each format's exact
numerics (2 threads). Also records effective bits per weight and the checkpoint's weight bytes
against the FP32 checkpoint. Writes benchmarks/results/presets_heldout.json and prints a table.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from compressor.model import default_model_dir, load_model
from compressor.pipeline import compress_model
from compressor.errors import CompressorError
from compressor.recipe import PRESETS, load_recipe
from compressor.checkpoint import checkpoint_bytes
from exporters.checkpoint import save_compressed
from harness import RESULTS, embedding_spearman, held_out_calibration, write_results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--calib-samples", type=int, default=256)
    parser.add_argument("--output", default=str(RESULTS / "presets_heldout.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    calib, pairs = held_out_calibration(args.calib_samples)
    fp32 = load_model(default_model_dir())
    base = embedding_spearman(fp32, pairs)
    results = {"model": "all-MiniLM-L6-v2", "calib_samples": len(calib),
               "eval": f"STS-B dev, {len(pairs.scores)} held-out pairs", "fp32_spearman": base, "presets": []}
    print(f"FP32 {base:.3f} on {len(pairs.scores)} held-out pairs", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.presets:
            recipe = load_recipe(name)
            handle = load_model(default_model_dir())
            try:
                record = compress_model(handle, calib, recipe)
            except CompressorError as exc:  # a preset for another model family (a DiT's step cache)
                results.setdefault("not_applicable", {})[name] = str(exc)
                print(f"{name}: not for this model ({exc})", flush=True)
                continue
            record.update(source=str(default_model_dir()),
                          calibration={"data": "STS-B dev calibration half", "samples": len(calib),
                                       "max_length": 128, "default": False})
            path = save_compressed(handle, Path(scratch) / name, record)
            row = {"preset": name, "spearman": embedding_spearman(handle, pairs),
                   "bits_per_weight": record["bits_per_weight"],
                   "checkpoint_ratio": checkpoint_bytes(path) / checkpoint_bytes(default_model_dir()),
                   "compress_seconds": record["seconds"]}
            row["delta"] = row["spearman"] - base
            results["presets"].append(row)
            print(f"{name}: {row['spearman']:.3f} ({row['delta']:+.3f}), {row['bits_per_weight']:.3f} bits, "
                  f"checkpoint {row['checkpoint_ratio']:.3f}x", flush=True)
    write_results(args.output, results)
    print(f"\n| preset | bits/weight | Spearman | Δ FP32 | checkpoint × FP32 |\n|---|---|---|---|---|")
    for row in results["presets"]:
        print(f"| {row['preset']} | {row['bits_per_weight']:.2f} | {row['spearman']:.2f} | {row['delta']:+.2f} | "
              f"{row['checkpoint_ratio']:.2f} |")


if __name__ == "__main__":
    main()
