"""FP4 / INT4 / FP8 and the FP4-INT8 hybrid on all-MiniLM-L6-v2, STS-B dev.

    python benchmarks/lowbit_minilm.py [--stsb ../shared/data/stsb/sts-dev.csv] [--repeats 15]

Measures, in one run (2 threads; 256 calibration sentences from one half of STS-B dev, scores on the other half):
  * Spearman x100 in PyTorch of FP32 and of each low-bit setting, with round-to-nearest (rtn)
    against the error-compensating rounding (gptq) and the activation-aware scaling (awq);
  * the fp4-int8 search at --max-bits 5.0: accuracy, effective bits, the plan and the three
    layers the sensitivity search ranks worst;
  * bytes: NVFP4 Linear weights against their FP32 bytes, and the whole W4A16 NVFP4 checkpoint
    with quantized embeddings against the FP32 checkpoint;
  * `compressor compare` over the presets: accuracy of each ONNX export in ONNX Runtime, effective
    bits, size, latency, and the accuracy/size plot (benchmarks/results/lowbit_compare/).
Writes benchmarks/results/lowbit_minilm.json and prints a table.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from compressor.compare import compare
from compressor.model import default_model_dir, load_model
from compressor.pipeline import compress_model
from compressor.quant_linear import QuantLinear
from compressor.recipe import FLAT_PRESETS, flat_recipe, load_recipe
from compressor.checkpoint import checkpoint_bytes
from exporters.checkpoint import save_compressed
from harness import (
    RESULTS, add_sts_arguments, embedding_spearman, format_counts, held_out_calibration, write_results, write_sts_tsv
)

# (label, preset, overrides)
SETTINGS = [
    ("W4A16 NVFP4, rtn", "w4a16-nvfp4", {"rounding": "rtn"}),
    ("W4A16 NVFP4, gptq (preset w4a16-nvfp4)", "w4a16-nvfp4", {}),
    ("W4A16 INT4 g128, rtn", "int4-awq", {"awq": False}),
    ("W4A16 INT4 g128, gptq", "int4-awq", {"awq": False, "rounding": "gptq"}),
    ("W4A16 INT4 g128, awq (preset int4-awq)", "int4-awq", {}),
    ("W4A16 INT4 g128, awq + gptq", "int4-awq", {"rounding": "gptq"}),
    ("W4A4 NVFP4, rtn", "nvfp4", {"rounding": "rtn"}),
    ("W4A4 NVFP4, gptq (preset nvfp4)", "nvfp4", {}),
    ("W4A4 MXFP4, rtn", "mxfp4", {"rounding": "rtn", "rotation": "none"}),
    ("W4A4 MXFP4, gptq", "mxfp4", {"rotation": "none"}),
    ("W4A4 MXFP4, gptq, Hadamard-rotated (preset mxfp4)", "mxfp4", {}),
    ("W8A8 FP8 (preset fp8)", "fp8", {}),
    ("NVFP4 W4A4 / INT8 W8A8 search, max 5.0 bits", "fp4-int8", {"candidates": ["nvfp4", "int8"]}),
    ("fp4-int8 search, W4A8 also a candidate, max 5.0 bits (preset fp4-int8)", "fp4-int8", {}),
    ("W4A16 NVFP4 gptq + INT8 embeddings", "w4a16-nvfp4", {"embeddings": "int8", "name": "w4a16-nvfp4-emb8"}),
    ("W4A16 NVFP4 gptq + NVFP4 embeddings", "w4a16-nvfp4", {"embeddings": "nvfp4", "name": "w4a16-nvfp4-emb4"}),
]
COMPARED = ["int8", "fp8", "w4a16-nvfp4", "int4-awq", "nvfp4", "mxfp4", "fp4-int8", "w4a16-nvfp4-emb8"]


def nvfp4_linear_bytes(model) -> tuple[int, int]:
    layers = [m for m in model.modules() if isinstance(m, QuantLinear) and m.format.name == "nvfp4"]
    return sum(m.storage_bytes() for m in layers), sum(4 * m.in_features * m.out_features for m in layers)


def main() -> None:
    parser = argparse.ArgumentParser()
    add_sts_arguments(parser)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--output", default=str(RESULTS / "lowbit_minilm.json"))
    parser.add_argument("--report", default=str(RESULTS / "lowbit_compare"))
    parser.add_argument("--skip-compare", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    # calibrate on one half of dev, score on the other (benchmarks/harness.py)
    calib, pairs = held_out_calibration(args.calib_samples, args.stsb)
    results: dict = {"model": "all-MiniLM-L6-v2", "eval": f"STS-B dev, {len(pairs.scores)} held-out pairs (calibration on the other half)", "calib_samples": len(calib)}
    fp32 = load_model(default_model_dir())
    results["fp32_spearman"] = base = embedding_spearman(fp32, pairs)
    print(f"FP32: {base:.3f}", flush=True)

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        saved = {}
        for label, preset, overrides in SETTINGS:
            recipe = flat_recipe({**FLAT_PRESETS[preset], "name": preset, **overrides}) if overrides else load_recipe(preset)
            handle = load_model(default_model_dir())
            record = compress_model(handle, calib, recipe)
            row = {
                "setting": label,
                "recipe": recipe.to_dict(),
                "spearman": embedding_spearman(handle, pairs),
                "bits_per_weight": record["bits_per_weight"],
                "output_error": record["output_error"]["output_error_final"],
                "formats": format_counts(record["layers"]),
                "compress_seconds": record["seconds"],
            }
            row["delta"] = row["spearman"] - base
            nv_bytes, fp_bytes = nvfp4_linear_bytes(handle.model)
            if nv_bytes:
                row["nvfp4_linear_bytes_ratio"] = nv_bytes / fp_bytes
                results.setdefault("nvfp4_linear_bytes_ratio", row["nvfp4_linear_bytes_ratio"])
            if record["search"]:
                row["search"] = record["search"]
                row["plan"] = {r["name"]: r["format"] for r in record["layers"]}
            if not overrides or set(overrides) <= {"name", "embeddings"}:  # presets: keep a checkpoint
                record.update(source=str(default_model_dir()), calibration={"data": args.stsb, "samples": len(calib),
                                                                           "max_length": recipe.calibration.max_length})
                path = save_compressed(handle, scratch / recipe.name, record)
                row["checkpoint_bytes"] = checkpoint_bytes(path)
                row["checkpoint_ratio"] = row["checkpoint_bytes"] / checkpoint_bytes(default_model_dir())
                saved[recipe.name] = path
            rows.append(row)
            print(f"{label}: {row['spearman']:.3f} ({row['delta']:+.3f}), {row['bits_per_weight']:.3f} bits"
                  + (f", checkpoint {row['checkpoint_ratio']:.3f}x" if "checkpoint_ratio" in row else ""), flush=True)
        results["settings"] = rows
        if not args.skip_compare:
            paths = []
            for name in COMPARED:
                if saved.get(name) is None:
                    recipe = load_recipe(name)
                    handle = load_model(default_model_dir())
                    rec = compress_model(handle, calib, recipe)
                    rec.update(source=str(default_model_dir()),
                               calibration={"data": args.stsb, "samples": len(calib), "max_length": recipe.calibration.max_length})
                    saved[name] = save_compressed(handle, scratch / name, rec)
                paths.append(saved[name])
            held_out = write_sts_tsv(pairs, scratch / "held_out.tsv")
            report = compare(default_model_dir(), paths, held_out, args.report, repeats=args.repeats, overwrite=True)
            for row in report["models"][1:]:  # scratch paths mean nothing after the run
                row["path"] = row["model"]
            report["eval_data"] = f"{len(pairs.scores)} held-out STS-B dev pairs"
            write_results(Path(args.report) / "report.json", report)
            results["compare"] = [
                {k: row[k] for k in ("model", "recipe", "bits_per_weight", "spearman", "spearman_delta", "latency_ratio",
                                     "weights_bytes", "size_ratio", "onnxruntime_kernels")}
                for row in report["models"]
            ]

    write_results(args.output, results)
    print(f"\nFP32 {base:.3f}\n| setting | bits/weight | Spearman | Δ FP32 | checkpoint × FP32 |\n|---|---|---|---|---|")
    for row in rows:
        ratio = f"{row['checkpoint_ratio']:.3f}" if "checkpoint_ratio" in row else "-"
        print(f"| {row['setting']} | {row['bits_per_weight']:.3f} | {row['spearman']:.3f} | {row['delta']:+.3f} | {ratio} |")
    for row in rows:
        if "search" in row:
            print(f"\n{row['setting']}: plan {row['formats']}; most sensitive: {row['search']['most_sensitive']}")
    print(f"NVFP4 Linear weight bytes / FP32 bytes: {results.get('nvfp4_linear_bytes_ratio', 0):.4f}")
    for row in results.get("compare", []):
        print(row)


if __name__ == "__main__":
    main()
