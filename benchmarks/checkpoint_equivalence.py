"""Does this checkout compress and export exactly like another revision? Each preset compresses the embedded
MiniLM with both (the other in a temporary git worktree, each in its own process) and exports it for both
ONNX targets; every stored tensor, every layer record and the bytes of every graph are compared. A refactor
that changes no behaviour writes bit-identical checkpoints and graphs.

    python benchmarks/checkpoint_equivalence.py --base REV [--presets int8 nvfp4 ...]
                                                [--output benchmarks/results/checkpoint_equivalence.json]

Calibration: 64 of the packaged sentences (16 for the output error), 1,024 search tokens, one thread, so
the two runs see the same numbers in the same order.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import RESULTS, ROOT, write_results

PRESETS = ["int8", "int8-minmax", "nvfp4", "mxfp4", "w4a16-nvfp4", "int4-awq", "fp8", "w4a8", "fp4-int8",
           "prune-structured", "sparse24-int8", "vq2", "tome-int8"]

# Run in the revision under test: its own packages first on the import path.
COMPRESS = """
import sys, torch
torch.set_num_threads(1)
from compressor.data import default_calibration_file
from compressor.model import default_model_dir
from compressor.pipeline import compress
from compressor.recipe import load_recipe
from exporters.onnx_export import export_onnx
out, names = sys.argv[1], sys.argv[2:]
for name in names:
    recipe = load_recipe(name).with_calibration(calib_samples=64, sensitivity_samples=16, search_tokens=1024)
    handle = compress(default_model_dir(), recipe, default_calibration_file(), f"{out}/{name}")
    for target in ("onnxruntime", "tensorrt"):
        export_onnx(handle, f"{out}/{name}-{target}.onnx", target, int8_weights="int8")
"""
TARGETS = ("onnxruntime", "tensorrt")


def compress_with(source: Path, out: Path, presets: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(source)}
    subprocess.run([sys.executable, "-c", COMPRESS, str(out), *presets], cwd=out.parent, env=env, check=True,
                   stdout=subprocess.DEVNULL)


def compare(a: Path, b: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    ta, tb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    tensors = sorted(set(ta) | set(tb))
    differ = [k for k in tensors if k not in ta or k not in tb or not torch.equal(ta[k], tb[k])]
    ra, rb = (json.loads((d / "compression.json").read_text(encoding="utf-8")) for d in (a, b))
    layers = [f"{x['name']}.{key}" for x, y in zip(ra["layers"], rb["layers"]) for key in x if x.get(key) != y.get(key)]
    graphs = {t: (a.parent / f"{a.name}-{t}.onnx").read_bytes() == (b.parent / f"{b.name}-{t}.onnx").read_bytes()
              for t in TARGETS}
    return {"tensors": len(tensors), "tensors_differ": differ, "layer_fields_differ": layers,
            "onnx_graphs_identical": graphs,
            "bits_per_weight": [ra.get("bits_per_weight"), rb.get("bits_per_weight")],
            "output_error_final": [ra["output_error"].get("output_error_final"),
                                   rb["output_error"].get("output_error_final")],
            "identical": not differ and not layers and len(ra["layers"]) == len(rb["layers"]) and all(graphs.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the revision to compare with (a commit, tag or branch)")
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    parser.add_argument("--output", default=str(RESULTS / "checkpoint_equivalence.json"))
    args = parser.parse_args()
    base = subprocess.run(["git", "rev-parse", args.base], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(scratch / "base"), base], cwd=ROOT, check=True)
        try:
            for tag, source in (("base", scratch / "base"), ("head", ROOT)):
                (scratch / f"out_{tag}").mkdir()
                compress_with(source, scratch / f"out_{tag}", args.presets)
                print(f"compressed with {tag}", flush=True)
            rows = {name: compare(scratch / "out_base" / name, scratch / "out_head" / name) for name in args.presets}
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(scratch / "base")], cwd=ROOT, check=False)
    for name, row in rows.items():
        print(f"{name}: {'identical' if row['identical'] else 'DIFFERENT'} ({row['tensors']} tensors, "
              f"{len(row['tensors_differ'])} differ)")
    write_results(args.output, {"base": base, "model": "all-MiniLM-L6-v2",
                                "calibration": "64 packaged sentences, 16 for the output error, 1 thread",
                                "presets": rows, "all_identical": all(r["identical"] for r in rows.values())})


if __name__ == "__main__":
    main()
