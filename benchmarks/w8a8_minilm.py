"""W8A8 on all-MiniLM-L6-v2: STS-B dev accuracy, ONNX parity, ONNX Runtime latency, compress time.

    python benchmarks/w8a8_minilm.py [--stsb ../shared/data/stsb/sts-dev.csv] [--repeats 30]

Measures, in one run on this machine:
  * Spearman x100 on the held-out half of STS-B dev (calibration on the other half, benchmarks/harness.py) of FP32, of W8A8 (PyTorch), and of the tensorrt- and
    onnxruntime-target ONNX exports run in ONNX Runtime;
  * the same in PyTorch for ablations (forced fallback; no SmoothQuant; max calibration; MSE and
    entropy observers);
  * latency of the onnxruntime-target ONNX against the FP32 ONNX, batch 32, length 128, 2 threads,
    median of interleaved runs after warm-up;
  * wall time of `compressor compress` on 256 calibration sentences (the CLI, model load included).
Writes benchmarks/results/w8a8_minilm.json and prints a table.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from compressor.evaluation.onnx_runner import latency_feeds, median_latencies
from compressor.model import default_model_dir, load_model
from compressor.pipeline import compress_model
from compressor.recipe import flat_recipe
from exporters.onnx_export import export_onnx, onnx_session
from harness import (
    RESULTS, add_sts_arguments, embedding_spearman, held_out_calibration, latency_summary, onnx_spearman, timed,
    write_results
)

ABLATIONS = {
    "int8 (default: percentile 99.99 + SmoothQuant, fallback only above 1% output error)": {},
    "int8 + forced fallback (2 most sensitive layers in float)": {"fallback_tolerance": 0.0},
    "int8, no SmoothQuant, no fallback": {"smoothquant": False, "fallback_max_layers": 0},
    "int8-minmax (max calibration only)": {"observer": "max", "smoothquant": False, "fallback_max_layers": 0},
    "int8, MSE observer + SmoothQuant": {"observer": "mse"},
    "int8, entropy observer + SmoothQuant": {"observer": "entropy"},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    add_sts_arguments(parser)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--output", default=str(RESULTS / "w8a8_minilm.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    # calibrate on one half of dev, score on the other (benchmarks/harness.py)
    calib, pairs = held_out_calibration(args.calib_samples, args.stsb)
    results: dict = {"model": "all-MiniLM-L6-v2", "eval": f"STS-B dev, {len(pairs.scores)} held-out pairs (calibration on the other half)", "calib_samples": len(calib)}

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        calib_file = scratch / "calib.txt"
        calib_file.write_text("\n".join(calib) + "\n", encoding="utf-8")

        # Wall time of the command a user runs, model load and checkpoint write included.
        _, seconds = timed(lambda: subprocess.run(
            [sys.executable, "-m", "compressor", "compress", str(default_model_dir()), "--recipe", "int8",
             "--calib-data", str(calib_file), "--output", str(scratch / "int8")],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        results["compress_cli_seconds"] = round(seconds, 1)

        fp32 = load_model(default_model_dir())
        results["fp32_spearman"] = embedding_spearman(fp32, pairs)
        export_onnx(fp32, scratch / "fp32.onnx", "onnxruntime")
        results["fp32_onnx_spearman"] = onnx_spearman(scratch / "fp32.onnx", fp32, pairs)

        rows = []
        for name, overrides in ABLATIONS.items():
            handle = load_model(default_model_dir())
            record = compress_model(handle, calib, flat_recipe(overrides))
            row = {
                "recipe": name,
                "float_layers": [layer["name"] for layer in record["layers"] if layer["format"] != "int8"],
                "smoothed_layers": sum(layer["smoothing_alpha"] is not None for layer in record["layers"]),
                "compress_seconds": record["seconds"],
                "spearman_torch": embedding_spearman(handle, pairs),
            }
            if not rows:  # the default recipe: both ONNX targets, and latency
                for target in ("tensorrt", "onnxruntime"):
                    path = export_onnx(handle, scratch / f"int8_{target}.onnx", target)
                    row[f"spearman_onnx_{target}"] = onnx_spearman(path, handle, pairs)
                sessions = {
                    "fp32": onnx_session(scratch / "fp32.onnx"),
                    "int8_onnxruntime": onnx_session(scratch / "int8_onnxruntime.onnx"),
                    "int8_tensorrt_qdq": onnx_session(scratch / "int8_tensorrt.onnx"),
                }
                feeds = latency_feeds([i.name for i in sessions["fp32"].get_inputs()], 32, 128)
                latency = median_latencies(sessions, feeds, repeats=args.repeats)
                results["latency"] = latency_summary(latency, "ONNX Runtime CPU, batch 32, length 128, 2 threads, "
                                                     f"median of {args.repeats} interleaved runs after 3 warm-ups")
            row["delta_torch"] = row["spearman_torch"] - results["fp32_spearman"]
            rows.append(row)
            print(f"{name}: {row['spearman_torch']:.3f} ({row['delta_torch']:+.3f})", flush=True)
        results["recipes"] = rows

    write_results(args.output, results)
    print(f"\nFP32: {results['fp32_spearman']:.3f} (PyTorch), {results['fp32_onnx_spearman']:.3f} (ONNX Runtime)")
    print("| recipe | float layers | Spearman | Δ FP32 |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['recipe']} | {len(row['float_layers'])} | {row['spearman_torch']:.3f} | {row['delta_torch']:+.3f} |")
    default = rows[0]
    print(f"\ndefault int8, tensorrt-target ONNX in ONNX Runtime: {default['spearman_onnx_tensorrt']:.3f}; "
          f"onnxruntime-target: {default['spearman_onnx_onnxruntime']:.3f}")
    print(f"latency ({results['latency']['setup']}): {results['latency']['ratio_to_fp32']}")
    print(f"compressor compress wall time ({len(calib)} sentences): {results['compress_cli_seconds']} s")


if __name__ == "__main__":
    main()
