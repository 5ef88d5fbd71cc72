"""Vector quantization on all-MiniLM-L6-v2: held-out STS-B Spearman of the VQ presets against INT3 with GPTQ,
and what their ONNX files hold.

    python benchmarks/vq_minilm.py [--calib-seeds 0 1 2] [--output benchmarks/results/vq_minilm.json]

In one run (2 threads; calibration sentences from one half of STS-B dev, scores on the other half,
benchmarks/harness.py):
  * PyTorch Spearman ×100 of FP32, `vq3`, `vq-mix` (--max-bits 2.5 unless --mix-bits) and INT3 with groups
    of 64 rounded by GPTQ (3.5 bits: the scalar baseline at more bits than either VQ preset), each on the
    same sentences, for several calibration draws (--calib-seeds; one draw's score moves by tenths of a
    point with the sentences drawn), then their mean; `vq2` and `nvfp4` on the first draw;
    effective bits per weight over the quantized Linears, codebooks, scales and index padding counted;
  * ONNX (`onnxruntime` target) of `vq3` and `nvfp4` against FP32: file bytes, the bytes of the quantized
    Linears' initializers against their FP32 bytes, and ONNX Runtime's Spearman next to PyTorch's.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import onnx
import torch

from calibrators.data import sample_sentences
from compressor.model import default_model_dir, load_model
from compressor.pipeline import compress_model
from compressor.quant_linear import QuantLinear
from compressor.recipe import Recipe, load_recipe
from exporters.onnx_codebook import TABLE_PREFIX
from exporters.onnx_export import export_onnx
from harness import RESULTS, embedding_spearman, format_counts, onnx_spearman, split_sts, write_results

INT3_GPTQ = {"name": "int3-g64-gptq",
             "passes": [{"quantize": {"scheme": "w3a16-int3", "group_size": 64, "rounding": "gptq"}}]}


def linear_initializer_bytes(path: Path, handle) -> tuple[int, int]:
    """(bytes of the initializers that belong to quantized Linears, with the decode tables they share; those
    Linears' FP32 weight bytes)."""
    names = {f"model.{n}" for n, m in handle.model.named_modules() if isinstance(m, QuantLinear)}  # graph keys
    fp32 = sum(4 * m.in_features * m.out_features for m in handle.model.modules() if isinstance(m, QuantLinear))
    model = onnx.load(str(path))
    stored = sum(len(t.raw_data) or onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer
                 if (".weight" in t.name and t.name.rsplit(".weight", 1)[0] in names) or t.name.startswith(TABLE_PREFIX))
    return stored, fp32


def compress_and_score(recipe: Recipe, calib: list[str], pairs, base: float):
    handle = load_model(default_model_dir())
    record = compress_model(handle, calib, recipe)
    row = {"model": recipe.name, "bits_per_weight": record["bits_per_weight"],
           "spearman": embedding_spearman(handle, pairs), "formats": format_counts(record["layers"]),
           "compress_seconds": record["seconds"]}
    if record.get("search"):
        row["max_bits"] = record["search"]["max_bits"]
    row["delta"] = row["spearman"] - base
    print(f"  {row['model']}: {row['spearman']:.3f} ({row['delta']:+.3f}) at {row['bits_per_weight']:.3f} bits, "
          f"{row['formats']}", flush=True)
    return row, handle


def summarise(draws: list[dict]) -> dict:
    """Per model: mean, lowest and highest Δ over the calibration draws, and its mean bits."""
    names = list(dict.fromkeys(r["model"] for d in draws for r in d["models"]))
    summary = {}
    for name in names:
        rows = [r for d in draws for r in d["models"] if r["model"] == name]
        deltas = [r["delta"] for r in rows]
        summary[name] = {"draws": len(rows), "bits_per_weight": sum(r["bits_per_weight"] for r in rows) / len(rows),
                         "mean_delta": sum(deltas) / len(deltas), "min_delta": min(deltas), "max_delta": max(deltas)}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calib-samples", type=int, help="calibration sentences (default: the VQ presets' own, 1024)")
    parser.add_argument("--calib-seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="one calibration draw per seed; vq3, vq-mix and INT3 are compressed on each")
    parser.add_argument("--mix-bits", type=float, default=2.5)
    parser.add_argument("--output", default=str(RESULTS / "vq_minilm.json"))
    parser.add_argument("--save-graphs", help="keep the FP32, vq3 and nvfp4 ONNX files here (for "
                        "benchmarks/onnx_packed_load.py)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    calib_pool, pairs = split_sts()
    samples = args.calib_samples or load_recipe("vq3").calibration.calib_samples
    fp32 = load_model(default_model_dir())
    base = embedding_spearman(fp32, pairs)
    print(f"FP32: {base:.3f}", flush=True)
    mix = load_recipe("vq-mix")
    mix.find("quantize").config.max_bits = args.mix_bits
    draws, handles = [], {}
    for n, seed in enumerate(args.calib_seeds):
        calib = sample_sentences(calib_pool, samples, seed)
        print(f"calibration draw {seed} ({len(calib)} sentences)", flush=True)
        # Every recipe of a draw sees the same sentences; vq2 and nvfp4 only on the first draw (no bar to hold).
        recipes = [load_recipe("vq3"), mix, Recipe.from_dict(INT3_GPTQ)]
        if n == 0:
            recipes += [load_recipe("vq2"), load_recipe("nvfp4")]
        rows = []
        for recipe in recipes:
            row, handle = compress_and_score(recipe, calib, pairs, base)
            rows.append(row)
            if n == 0:
                handles[recipe.name] = handle
        draws.append({"seed": seed, "calib_samples": len(calib), "models": rows})
    first = draws[0]["models"]
    exports = {}
    with tempfile.TemporaryDirectory() as scratch:
        if args.save_graphs:
            scratch = args.save_graphs
            Path(scratch).mkdir(parents=True, exist_ok=True)
        reference = export_onnx(fp32, Path(scratch) / "fp32.onnx", "onnxruntime")
        exports["fp32"] = {"file_bytes": reference.stat().st_size}
        for name in ("vq3", "nvfp4"):
            path = export_onnx(handles[name], Path(scratch) / f"{name}.onnx", "onnxruntime")
            stored, dense = linear_initializer_bytes(path, handles[name])
            row = next(r for r in first if r["model"] == name)
            exports[name] = {"file_bytes": path.stat().st_size, "file_ratio": path.stat().st_size / exports["fp32"]["file_bytes"],
                             "linear_bytes": stored, "linear_fp32_bytes": dense, "linear_ratio": stored / dense,
                             "onnxruntime_spearman": onnx_spearman(path, handles[name], pairs),
                             "pytorch_spearman": row["spearman"]}
            print(name, exports[name], flush=True)
    summary = summarise(draws)
    result = {"model": "all-MiniLM-L6-v2", "eval": f"STS-B dev, {len(pairs.scores)} held-out pairs",
              "calib_samples": samples, "calib_seeds": args.calib_seeds, "fp32_spearman": base,
              "summary": summary, "draws": draws, "onnx": exports}
    write_results(args.output, result)
    print("| model | draws | bits/weight | mean Δ | lowest Δ | highest Δ |\n|---|---|---|---|---|---|")
    for name, row in summary.items():
        print(f"| {name} | {row['draws']} | {row['bits_per_weight']:.3f} | {row['mean_delta']:+.3f} | "
              f"{row['min_delta']:+.3f} | {row['max_delta']:+.3f} |")


if __name__ == "__main__":
    main()
