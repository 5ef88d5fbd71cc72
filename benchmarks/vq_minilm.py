"""Vector quantization on all-MiniLM-L6-v2: held-out STS-B Spearman of the VQ presets against INT3 with GPTQ,
and what their ONNX files hold.

    python benchmarks/vq_minilm.py [--output benchmarks/results/vq_minilm.json]

In one run (2 threads; 256 calibration sentences from one half of STS-B dev, scores on the other half,
benchmarks/heldout.py):
  * PyTorch Spearman ×100 of FP32, `vq3`, `vq-mix` (--max-bits 2.5 unless --mix-bits), `vq2`, and INT3 with
    groups of 64 rounded by GPTQ (3.5 bits: the scalar baseline at more bits than either VQ preset);
    effective bits per weight over the quantized Linears, codebooks, scales and index padding counted;
  * ONNX (`onnxruntime` target) of `vq3` and `nvfp4` against FP32: file bytes, the bytes of the quantized
    Linears' initializers against their FP32 bytes, and ONNX Runtime's Spearman next to PyTorch's.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import onnx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.heldout import split_sts  # noqa: E402
from benchmarks.lowbit_minilm import torch_spearman  # noqa: E402
from calibrators.data import sample_sentences  # noqa: E402
from compressor.evaluation.metrics import sts_spearman  # noqa: E402
from compressor.evaluation.onnx_runner import onnx_embed  # noqa: E402
from compressor.model import default_model_dir, load_model  # noqa: E402
from compressor.pipeline import compress_model  # noqa: E402
from compressor.quant_linear import QuantLinear  # noqa: E402
from compressor.recipe import Recipe, load_recipe  # noqa: E402
from exporters.onnx_codebook import TABLE_PREFIX  # noqa: E402
from exporters.onnx_export import export_onnx, onnx_session  # noqa: E402

INT3_GPTQ = {"name": "int3-g64-gptq",
             "passes": [{"quantize": {"scheme": "w3a16-int3", "group_size": 64, "rounding": "gptq"}}]}


def onnx_spearman(path: Path, handle, pairs) -> float:
    session = onnx_session(path, 2)
    return sts_spearman(onnx_embed(session, handle, pairs.first), onnx_embed(session, handle, pairs.second), pairs.scores)


def linear_initializer_bytes(path: Path, handle) -> tuple[int, int]:
    """(bytes of the initializers that belong to quantized Linears, with the decode tables they share; those
    Linears' FP32 weight bytes)."""
    names = {f"model.{n}" for n, m in handle.model.named_modules() if isinstance(m, QuantLinear)}  # graph keys
    fp32 = sum(4 * m.in_features * m.out_features for m in handle.model.modules() if isinstance(m, QuantLinear))
    model = onnx.load(str(path))
    stored = sum(len(t.raw_data) or onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer
                 if (".weight" in t.name and t.name.rsplit(".weight", 1)[0] in names) or t.name.startswith(TABLE_PREFIX))
    return stored, fp32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calib-samples", type=int, default=256)
    parser.add_argument("--mix-bits", type=float, default=2.5)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "vq_minilm.json"))
    parser.add_argument("--save-graphs", help="keep the FP32, vq3 and nvfp4 ONNX files here (for "
                        "benchmarks/onnx_packed_load.py)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    calib_pool, pairs = split_sts()
    calib = sample_sentences(calib_pool, args.calib_samples)
    fp32 = load_model(default_model_dir())
    base = torch_spearman(fp32, pairs)
    print(f"FP32: {base:.3f}", flush=True)
    mix = load_recipe("vq-mix")
    mix.find("quantize").config.max_bits = args.mix_bits
    recipes = [load_recipe("vq3"), mix, load_recipe("vq2"), Recipe.from_dict(INT3_GPTQ), load_recipe("nvfp4")]
    rows, handles = [], {}
    for recipe in recipes:
        handle = load_model(default_model_dir())
        record = compress_model(handle, calib, recipe)
        row = {"model": recipe.name, "bits_per_weight": record["bits_per_weight"], "spearman": torch_spearman(handle, pairs),
               "formats": {f: sum(r["format"] == f for r in record["layers"]) for f in {r["format"] for r in record["layers"]}},
               "compress_seconds": record["seconds"]}
        if record.get("search"):
            row["max_bits"] = record["search"]["max_bits"]
        row["delta"] = row["spearman"] - base
        rows.append(row)
        handles[recipe.name] = handle
        print(f"{row['model']}: {row['spearman']:.3f} ({row['delta']:+.3f}) at {row['bits_per_weight']:.3f} bits, "
              f"{row['formats']}", flush=True)
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
            row = next(r for r in rows if r["model"] == name)
            exports[name] = {"file_bytes": path.stat().st_size, "file_ratio": path.stat().st_size / exports["fp32"]["file_bytes"],
                             "linear_bytes": stored, "linear_fp32_bytes": dense, "linear_ratio": stored / dense,
                             "onnxruntime_spearman": onnx_spearman(path, handles[name], pairs),
                             "pytorch_spearman": row["spearman"]}
            print(name, exports[name], flush=True)
    result = {"model": "all-MiniLM-L6-v2", "eval": f"STS-B dev, {len(pairs.scores)} held-out pairs",
              "calib_samples": len(calib), "fp32_spearman": base, "models": rows, "onnx": exports}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2), encoding="utf-8")
    print("| model | bits/weight | Spearman | Δ |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['bits_per_weight']:.3f} | {row['spearman']:.3f} | {row['delta']:+.3f} |")


if __name__ == "__main__":
    main()
