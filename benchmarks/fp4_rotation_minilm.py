"""W4A4 NVFP4 and MXFP4 with and without block-wise Hadamard rotations, on held-out STS-B pairs.

    python benchmarks/fp4_rotation_minilm.py [--stsb PATH] [--calib-samples 256]

all-MiniLM-L6-v2, 2 threads. Calibration: 256 sentences sampled from the calibration half of the
STS-B dev pairs (``benchmarks/heldout.py``); score: Spearman ×100 in PyTorch on the other 750 pairs.
Every setting spells out its rotation and rounding, so the figures do not move when a preset
changes; the table marks the settings the presets use now. Writes
benchmarks/results/fp4_rotation_minilm.json and prints a table.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.heldout import STS_DEV, split_sts  # noqa: E402
from calibrators.data import sample_sentences  # noqa: E402
from compressor.evaluation.metrics import sts_spearman  # noqa: E402
from compressor.model import default_model_dir, load_model  # noqa: E402
from compressor.pipeline import compress_model  # noqa: E402
from compressor.recipe import PRESETS, Recipe, load_recipe  # noqa: E402

# (label, preset, overrides of its quantize pass): every setting names rotation and rounding explicitly.
SETTINGS = [
    (f"{fmt.upper()} W4A4, {rounding}, {'Hadamard rotation' if rotation == 'hadamard' else 'no rotation'}",
     fmt, {"rounding": rounding, "rotation": rotation})
    for fmt in ("nvfp4", "mxfp4") for rotation in ("none", "hadamard") for rounding in ("rtn", "gptq")
]


def spearman(handle, pairs) -> float:
    return sts_spearman(handle.embed(pairs.first).numpy(), handle.embed(pairs.second).numpy(), pairs.scores)


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
    parser.add_argument("--stsb", default=str(STS_DEV))
    parser.add_argument("--calib-samples", type=int, default=256)
    parser.add_argument("--only", nargs="*", help="labels (substrings) of the settings to run; default all")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "fp4_rotation_minilm.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    calib_pool, held_out = split_sts(args.stsb)
    calib = sample_sentences(calib_pool, args.calib_samples)
    results: dict = {
        "model": "all-MiniLM-L6-v2",
        "eval": f"STS-B dev, held-out half ({len(held_out.scores)} pairs, benchmarks/heldout.py)",
        "calib": f"{len(calib)} sentences sampled from the calibration half",
    }
    results["fp32_spearman"] = base = spearman(load_model(default_model_dir()), held_out)
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
            "spearman": spearman(handle, held_out),
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
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"\nFP32 {base:.3f} (held-out pairs)\n| setting | bits/weight | Spearman | Δ FP32 | output error | preset now |"
          "\n|---|---|---|---|---|---|")
    for row in rows:
        mark = f"`{row['preset']}`" if row["is_preset_now"] else ""
        print(f"| {row['setting']} | {row['bits_per_weight']:.2f} | {row['spearman']:.3f} | {row['delta']:+.3f} | "
              f"{row['output_error']:.4f} | {mark} |")


if __name__ == "__main__":
    main()
