"""Score an exported encoder graph on the held-out STS-B pairs on another machine, with numpy and ONNX Runtime only.

    python benchmarks/onnx_sts.py tokenize OUT.npz              # here: the held-out pairs, tokenized
    python benchmarks/onnx_sts.py score GRAPH.onnx [...] --data OUT.npz   # there: Spearman ×100

Integer kernels differ between CPUs (benchmarks/onnx_latency.py), so a graph's accuracy is only known
on the CPU that runs it. Tokenizing here (the default model's tokenizer, the held-out split of
benchmarks/harness.py) leaves the other machine nothing to install.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from harness import cosine_spearman, split_sts


def tokenize(out: Path) -> None:
    from compressor.model import default_model_dir, load_model

    _, pairs = split_sts()
    handle = load_model(default_model_dir())
    arrays = {"scores": np.asarray(pairs.scores, dtype=np.float64)}
    for side, sentences in (("first", pairs.first), ("second", pairs.second)):
        batch = handle.tokenize(sentences, 128)
        for name, tensor in batch.items():
            arrays[f"{side}.{name}"] = tensor.numpy()
    np.savez_compressed(out, **arrays)


def score(graph: Path, data: Path, batch: int = 64) -> float:
    import onnxruntime as ort

    arrays = np.load(data)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    pooled = {}
    for side in ("first", "second"):
        rows = []
        for start in range(0, len(arrays["scores"]), batch):
            feeds = {n: arrays[f"{side}.{n}"][start:start + batch] for n in names}
            hidden = session.run(None, feeds)[0]
            mask = feeds["attention_mask"][..., None].astype(hidden.dtype)
            mean = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1.0)
            rows.append(mean / np.linalg.norm(mean, axis=1, keepdims=True))
        pooled[side] = np.concatenate(rows)
    return cosine_spearman(pooled["first"], pooled["second"], arrays["scores"])


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tokenize")
    t.add_argument("out", type=Path)
    s = sub.add_parser("score")
    s.add_argument("graphs", type=Path, nargs="+")
    s.add_argument("--data", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "tokenize":
        tokenize(args.out)
    else:
        print(json.dumps({g.name: score(g, args.data) for g in args.graphs}, indent=2))


if __name__ == "__main__":
    main()
