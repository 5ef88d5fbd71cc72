"""W4A4 NVFP4 and MXFP4 with and without block-wise Hadamard rotations, on held-out STS-B pairs.

    python benchmarks/fp4_rotation_minilm.py [--stsb PATH] [--calib-samples 256]

all-MiniLM-L6-v2, 2 threads. Calibration: 256 sentences sampled from the calibration half of the
STS-B dev pairs (``benchmarks/harness.py``); score: Spearman ×100 in PyTorch on the other 750 pairs.
Every setting spells out its rotation and rounding, so the figures do not move when a preset
changes; the table marks the settings the presets use now. Writes
benchmarks/results/fp4_rotation_minilm.json and prints a table.
"""
from __future__ import annotations

import argparse
import copy

import torch

from compressor.model import default_model_dir, load_model
from compressor.pipeline import compress_model
from compressor.recipe import PRESETS, Recipe, load_recipe
from harness import RESULTS, add_sts_arguments, embedding_spearman, held_out_calibration, write_results

# (label, preset, overrides of its quantize pass): every setting names rotation and rounding explicitly.
SETTINGS = [
    (f"{fmt.upper()} W4A4, {rounding}, {'Hadamard rotation' if rotation == 'hadamard' else 'no rotation'}",
     fmt, {"rounding": rounding, "rotation": rotation})
    for fmt in ("nvfp4", "mxfp4") for rotation in ("none", "hadamard") for rounding in ("rtn", "gptq")
]


def setting_recipe(preset: str, overrides: dict) -> Recipe:
    """The preset's pass list with ``overrides`` applied to its quantize pass."""
    passes = copy.deepcopy(PRESETS[preset])
    for entry in passes:
        if isinstance(entry, dict) and "quantize" in entry:
            entry["quantize"] = {**entry["quantize"], **overrides}
    return Recipe.from_dict({"name": preset, "passes": passes}, where=f"setting {preset} {overrides}")


def is_preset(recipe: Recipe, preset: str) -> bool:
    return recipe.to_dict()["passes"] == load_recipe(preset).to_dict()["passes"]


def main() -> None:
    parser = argparse.ArgumentParser()
    add_sts_arguments(parser)
    parser.add_argument("--only", nargs="*", help="labels (substrings) of the settings to run; default all")
    parser.add_argument("--output", default=str(RESULTS / "fp4_rotation_minilm.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    calib, held_out = held_out_calibration(args.calib_samples, args.stsb)
    results: dict = {
        "model": "all-MiniLM-L6-v2",
        "eval": f"STS-B dev, held-out half ({len(held_out.scores)} pairs, benchmarks/harness.py)",
        "calib": f"{len(calib)} sentences sampled from the calibration half",
    }
    results["fp32_spearman"] = base = embedding_spearman(load_model(default_model_dir()), held_out)
    print(f"FP32: {base:.3f}", flush=True)
    rows = []
    for label, preset, overrides in SETTINGS:
        if args.only and not any(s in label for s in args.only):
            continue
        recipe = setting_recipe(preset, overrides)
        handle = load_model(default_model_dir())
        record = compress_model(handle, calib, recipe)
        row = {
            "setting": label,
            "preset": preset,
            "overrides": overrides,
            "is_preset_now": is_preset(recipe, preset),
            "spearman": embedding_spearman(handle, held_out),
            "bits_per_weight": record["bits_per_weight"],
            "output_error": record["output_error"]["output_error_final"],
            "rotated_layers": sum(bool(r.get("rotation")) for r in record["layers"]),
            "layers": len(record["layers"]),
            "compress_seconds": record["seconds"],
        }
        row["delta"] = row["spearman"] - base
        rows.append(row)
        print(f"{label}: {row['spearman']:.3f} ({row['delta']:+.3f}), output error {row['output_error']:.4f}, "
              f"{row['rotated_layers']}/{row['layers']} rotated", flush=True)
    results["settings"] = rows
    write_results(args.output, results)
    print(f"\nFP32 {base:.3f} (held-out pairs)\n| setting | bits/weight | Spearman | Δ FP32 | output error | preset now |"
          "\n|---|---|---|---|---|---|")
    for row in rows:
        mark = f"`{row['preset']}`" if row["is_preset_now"] else ""
        print(f"| {row['setting']} | {row['bits_per_weight']:.2f} | {row['spearman']:.3f} | {row['delta']:+.3f} | "
              f"{row['output_error']:.4f} | {mark} |")


if __name__ == "__main__":
    main()
