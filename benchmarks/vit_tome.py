"""Token merging on the MNIST ViT example: held-out top-1 and ONNX Runtime throughput of FP32, the `tome` and
`tome-int8` presets, `tome` merging inside the blocks only (`merge_embeddings: false`), and a sweep of fixed r
(the accuracy/throughput curve; `--sweep-schedule` decreasing merges 2r tokens in the first block down to 0
in the last, constant merges r in every block; both merge twice the first block's count on the embeddings).

    python benchmarks/vit_tome.py [--model examples/mnist_vit/model] [--data ../shared/data/mnist]
                                  [--sweep 8 12 16 20] [--output benchmarks/results/vit_tome.json]

Calibration reads 256 images from the first 9,000 of the MNIST file; scoring uses its last 1,000, which
neither training nor calibration saw. Each model is exported for the `onnxruntime` target and timed on
batch 64 with 2 threads, models interleaved (median of the repeats), all in this one run.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from compressor.evaluation.image_classification import classification_metrics, onnx_logits
from compressor.evaluation.onnx_runner import median_latencies
from compressor.model import load_model
from compressor.pipeline import compress
from compressor.recipe import Recipe, load_recipe
from compressor.checkpoint import load_compressed
from exporters.onnx_export import export_onnx, onnx_session
from harness import MNIST, RESULTS, ROOT, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "examples" / "mnist_vit" / "model"))
    parser.add_argument("--data", default=str(MNIST))
    parser.add_argument("--presets", nargs="*", default=["tome", "tome-int8"])
    parser.add_argument("--sweep", nargs="*", type=int, default=[8, 12, 16, 20])
    parser.add_argument("--sweep-schedule", default="decreasing", choices=["constant", "decreasing"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--output", default=str(RESULTS / "vit_tome.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    original = load_model(args.model)
    images, labels = original.adapter.images(original, args.data, "evaluation")
    recipes = [load_recipe(name) for name in args.presets]
    if "tome" in args.presets:  # what merging on the embeddings adds to the preset
        blocks_only = load_recipe("tome")
        tome = blocks_only.find("tome")
        tome.config = tome.config.model_copy(update={"merge_embeddings": False})
        recipes.append(Recipe("tome-blocks-only", blocks_only.passes, blocks_only.calibration))
    recipes += [Recipe.from_dict({"name": f"tome-r{r}", "passes": [{"tome": {"r": r, "schedule": args.sweep_schedule}}]})
                for r in args.sweep]
    rows, sessions, reference = {}, {}, None
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        handles = {"fp32": original}
        for recipe in recipes:
            print(f"compressing {recipe.name}", flush=True)
            compress(args.model, recipe, args.data, scratch / recipe.name)
            handles[recipe.name] = load_compressed(scratch / recipe.name)
        for name, handle in handles.items():
            session = onnx_session(export_onnx(handle, scratch / f"{name}.onnx", "onnxruntime"), args.threads)
            logits = onnx_logits(type("Model", (), {"session": session})(), images, args.batch)
            reference = logits if reference is None else reference
            tome = handle.info.get("token_reduction") or {}
            rows[name] = {"model": name, "embeddings": tome.get("embeddings", 0), "schedule": tome.get("schedule"),
                          "bits_per_weight": handle.info.get("bits_per_weight", 32.0),
                          **classification_metrics(logits, labels, reference)}
            sessions[name] = session
            print(name, rows[name], flush=True)
        feeds = {"pixel_values": images[torch.arange(args.batch) % len(images)].numpy()}
        latency = median_latencies(sessions, feeds, repeats=args.repeats)
    for name, row in rows.items():
        row["latency_ms"] = latency[name] * 1000
        row["images_per_second"] = args.batch / latency[name]
        row["throughput_ratio"] = latency["fp32"] / latency[name]
        row["top1_change_points"] = 100 * (row["top1_accuracy"] - rows["fp32"]["top1_accuracy"])
    result = {"model": os.path.relpath(args.model, ROOT), "eval": f"last 1000 images of {os.path.relpath(args.data, ROOT)}", "calibration": "256 of the first 9000",
              "batch": args.batch, "threads": args.threads, "repeats": args.repeats, "models": list(rows.values())}
    write_results(args.output, result)
    print(f"{'model':16s} {'top-1 %':>8s} {'Δ pts':>7s} {'agree %':>8s} {'img/s':>7s} {'×':>6s}  embeddings schedule")
    for row in rows.values():
        print(f"{row['model']:16s} {100 * row['top1_accuracy']:8.2f} {row['top1_change_points']:+7.2f} "
              f"{100 * row['top1_agreement']:8.2f} {row['images_per_second']:7.0f} {row['throughput_ratio']:6.2f}  "
              f"{row['embeddings']} {row['schedule']}")


if __name__ == "__main__":
    main()
