"""Pruning presets on all-MiniLM-L6-v2: accuracy on held-out STS-B pairs, ONNX latency, 2:4 checks, size.

    python benchmarks/pruning_minilm.py [--presets P ...] [--keep-macs 0.6] [--calib-samples N] [--repeats 20]
                                        [--save-graphs DIR] [--output FILE]

Calibration: as many sentences as each preset calibrates on (256; 1024 for the 2:4 presets) from the
calibration half of STS-B dev (benchmarks/harness.py); Spearman x100 on the other 750 pairs, in
PyTorch. Latency: ONNX Runtime CPU, batch 32, length 128, 2 threads,
median of interleaved runs after warm-up, every graph in one session set (FP32, structured FP32,
structured INT8 and unpruned INT8 for the onnxruntime target with uint8 and with int8 weights,
2:4 FP32; `benchmarks/onnx_latency.py` times the same graphs on another CPU); the INT8 graphs are also
scored in ONNX Runtime on this CPU. The 2:4 graphs of both targets are checked along the axis TensorRT
reads as input channels. Sizes: bytes of the sparse Linear weights in the
checkpoint against their dense FP32 bytes. Writes benchmarks/results/pruning_minilm.json.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open

from calibrators.data import sample_sentences
from compressor.evaluation.onnx_runner import latency_feeds, median_latencies
from compressor.model import default_model_dir, load_model
from compressor.pipeline import compress_model
from compressor.recipe import load_recipe
from exporters.checkpoint import save_compressed
from exporters.cpu_features import cpu_description
from exporters.onnx_export import export_onnx, onnx_session
from exporters.sparsity_check import check_nm_sparsity
from harness import RESULTS, embedding_spearman, latency_summary, onnx_spearman, split_sts, write_results

PRESETS = ["prune-structured", "prune-structured-int8", "sparse24", "sparse24-int8", "sparse24-w4a16-nvfp4", "int8"]
# timed graphs; unpruned int8 is there to show what this CPU's INT8 kernels give on their own
LATENCY = {"prune-structured": "onnxruntime", "prune-structured-int8": "onnxruntime", "sparse24": "onnxruntime",
           "int8": "onnxruntime"}


def sparse_weight_ratio(path: Path, layers) -> float:
    """Bytes stored for the sparse layers' weights / their dense FP32 bytes."""
    stored = dense = 0
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        for key in f.keys():
            if any(key.startswith(f"{name}.weight") for name in layers):
                tensor = f.get_tensor(key)
                stored += tensor.numel() * tensor.element_size()
    handle = load_model(default_model_dir())
    for name in layers:
        dense += handle.model.get_submodule(name).weight.numel() * 4
    return stored / dense


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    parser.add_argument("--keep-macs", type=float, default=0.6)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--calib-samples", type=int, help="calibrate every preset on this many sentences instead")
    parser.add_argument("--save-graphs", help="also keep the timed ONNX graphs in this folder")
    parser.add_argument("--output", default=str(RESULTS / "pruning_minilm.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    calib_pool, pairs = split_sts()
    fp32 = load_model(default_model_dir())
    base = embedding_spearman(fp32, pairs)
    results = {"model": "all-MiniLM-L6-v2", "eval": f"STS-B dev, {len(pairs.scores)} held-out pairs",
               "fp32_spearman": base, "keep_macs": args.keep_macs, "presets": {}}
    print(f"FP32 {base:.3f}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        graphs = {"fp32": export_onnx(fp32, scratch / "fp32.onnx", "onnxruntime")}
        for name in args.presets:
            recipe = load_recipe(name)
            prune = recipe.find("prune_structured")
            if prune is not None:
                prune.config.keep_macs = args.keep_macs
            samples = args.calib_samples or recipe.calibration.calib_samples
            calib = sample_sentences(calib_pool, samples, recipe.calibration.seed)
            handle = load_model(default_model_dir())
            record = compress_model(handle, calib, recipe)
            record.update(source=str(default_model_dir()),
                          calibration={"data": "STS-B dev calibration half", "samples": len(calib), "max_length": 128})
            path = save_compressed(handle, scratch / name, record)
            row = {"spearman": embedding_spearman(handle, pairs), "seconds": record["seconds"]}
            row["delta"] = row["spearman"] - base
            for step in record["passes"]:
                if step["pass"] == "prune_structured":
                    row["kept_macs"] = step["kept_macs"]
                    row["removed"] = step["removed"]
                    row["units"] = {k: v["kept"] for k, v in step["units"].items()}
            if record.get("sparsity"):
                row["sparse_layers"] = len(record["sparsity"]["layers"])
                row["sparse_weight_bytes_ratio"] = sparse_weight_ratio(path, record["sparsity"]["layers"])
                row["two_four_check"] = {}
                for target in ("onnxruntime", "tensorrt"):
                    graph = export_onnx(handle, scratch / f"{name}_{target}.onnx", target)
                    checked = check_nm_sparsity(graph, 2, 4)
                    row["two_four_check"][target] = {"sparse": sum(r["sparse"] for r in checked), "weights": len(checked)}
                    if name in LATENCY and target == LATENCY[name]:
                        graphs[name] = graph
            elif name.endswith("int8"):  # both forms of the integer GEMM's weights (exporters/cpu_features.py)
                row["onnxruntime_spearman"] = {}
                for weights, kernel in (("uint8", "u8u8"), ("int8", "u8s8")):
                    graph = export_onnx(handle, scratch / f"{name}-{kernel}.onnx", "onnxruntime", int8_weights=weights)
                    graphs[f"{name} {kernel}"] = graph
                    row["onnxruntime_spearman"][kernel] = onnx_spearman(graph, handle, pairs)
            elif name in LATENCY:
                graphs[name] = export_onnx(handle, scratch / f"{name}.onnx", LATENCY[name])
            results["presets"][name] = row
            print(name, {k: v for k, v in row.items() if k != "units"}, flush=True)
        sessions = {name: onnx_session(path) for name, path in graphs.items()}
        feeds = latency_feeds([i.name for i in sessions["fp32"].get_inputs()], 32, 128)
        latency = median_latencies(sessions, feeds, repeats=args.repeats)
        results["latency"] = {**latency_summary(latency, "ONNX Runtime CPU, batch 32, length 128, 2 threads, "
                                                f"median of {args.repeats} interleaved runs"), "cpu": cpu_description()}
        print(results["latency"], flush=True)
        if args.save_graphs:
            Path(args.save_graphs).mkdir(parents=True, exist_ok=True)
            for name, graph in graphs.items():
                shutil.copy(graph, Path(args.save_graphs) / f"{name.replace(' ', '-')}.onnx")
    write_results(args.output, results)


if __name__ == "__main__":
    main()
