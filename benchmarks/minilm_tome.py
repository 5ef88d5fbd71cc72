"""Token merging on all-MiniLM-L6-v2: the accuracy/latency curve on held-out STS-B pairs at real sentence
lengths (each batch padded only to its longest sentence, as a deployment batches text), and what the
`tome` preset picks.

    python benchmarks/minilm_tome.py [--r 1 2 4 6 8] [--output benchmarks/results/minilm_tome.json]

For each r (tokens merged in each of the 6 blocks) the model is exported for the `onnxruntime` target;
Spearman is scored on the 750 held-out pairs (benchmarks/harness.py) with that ONNX model, and latency
is the time to embed all 1,500 held-out sentences in batches of 32 in file order, 2 threads, the median
of interleaved repeats. The `tome` preset calibrates on sentences from the other 750 pairs.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from compressor.evaluation.onnx_runner import onnx_embed
from compressor.model import default_model_dir, load_model
from compressor.pipeline import compress_model
from compressor.recipe import load_recipe
from compressor.tokens.tome import patch_token_merging, tome_schedule
from exporters.onnx_export import export_onnx, onnx_session
from harness import RESULTS, cosine_spearman, medians, split_sts, time_calls, write_results


def embed_all(session, handle, sentences, batch):
    return onnx_embed(session, handle, sentences, batch_size=batch, max_length=128)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--r", nargs="*", type=int, default=[1, 2, 4, 6, 8, 12])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=str(RESULTS / "minilm_tome.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    calib, pairs = split_sts()
    sentences = pairs.first + pairs.second
    handle = load_model(default_model_dir())
    schedules = {"fp32": [0] * 6, **{f"r={r}": tome_schedule(r, 6) for r in args.r}}
    preset = load_model(default_model_dir())
    record = compress_model(preset, calib, load_recipe("tome"))
    schedules["tome preset"] = record["token_reduction"]["schedule"]

    rows, sessions = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, schedule in schedules.items():
            patch_token_merging(handle.model, handle.adapter, schedule)
            session = onnx_session(export_onnx(handle, Path(scratch) / f"{name}.onnx", "onnxruntime"), args.threads)
            embeddings = embed_all(session, handle, sentences, args.batch)
            half = len(pairs.first)
            rows[name] = {"model": name, "schedule": schedule,
                          "spearman": cosine_spearman(embeddings[:half], embeddings[half:], pairs.scores)}
            sessions[name] = session
            print(rows[name], flush=True)
        for session in sessions.values():  # warm-up
            embed_all(session, handle, sentences[: 4 * args.batch], args.batch)
        seconds = medians(time_calls({name: lambda s=session: embed_all(s, handle, sentences, args.batch)
                                      for name, session in sessions.items()}, args.repeats))
    for name, row in rows.items():
        row["seconds"] = seconds[name]
        row["latency_ratio"] = row["seconds"] / seconds["fp32"]
        row["spearman_change"] = row["spearman"] - rows["fp32"]["spearman"]
    tokens = [len(handle.tokenize([s], 128)["input_ids"][0]) for s in sentences]
    result = {"eval": "750 held-out STS-B dev pairs (benchmarks/harness.py)", "batch": args.batch,
              "threads": args.threads, "repeats": args.repeats, "mean_tokens": float(np.mean(tokens)),
              "tome_preset": {k: v for k, v in record["passes"][0].items() if k != "pass"},
              "models": list(rows.values())}
    write_results(args.output, result)
    print(f"mean sentence length {np.mean(tokens):.1f} tokens")
    print(f"{'model':12s} {'Spearman':>9s} {'Δ':>7s} {'seconds':>8s} {'×':>6s}  schedule")
    for row in rows.values():
        print(f"{row['model']:12s} {row['spearman']:9.3f} {row['spearman_change']:+7.3f} {row['seconds']:8.3f} "
              f"{row['latency_ratio']:6.2f}  {row['schedule']}")


if __name__ == "__main__":
    main()
