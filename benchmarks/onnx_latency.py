"""Time ONNX graphs side by side on another machine's CPU, shipping their structure without their weights.

    python benchmarks/onnx_latency.py strip GRAPH_DIR OUT_DIR      # here: graphs without weight bytes
    python benchmarks/onnx_latency.py time OUT_DIR [--repeats 20]  # there: refill and time

CPU latency does not depend on the weights' values, only on the graph, its shapes and its dtypes, so
a graph can travel as its structure plus the size of each large initializer, and the other machine
fills those with values of the right type (float: small normal values, so no denormals or NaN;
integers: random bytes). Small initializers (scales, zero points, shapes) travel as they are.
Timing is the compare harness's: batch 32, length 128, 2 threads, median of interleaved runs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, external_data_helper

from harness import latency_summary, write_results

WEIGHTS = "weights.bin"  # one external file per graph, left out by ``strip``
FLOATS = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}


def strip(graph_dir: Path, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(graph_dir.glob("*.onnx")):
        model = onnx.load(str(path))
        target = out_dir / path.stem
        target.mkdir(exist_ok=True)
        onnx.save_model(model, str(target / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=WEIGHTS, size_threshold=1024)
        (target / WEIGHTS).unlink()  # the bytes stay here; their layout is in model.onnx
        print(f"{path.name}: {(target / 'model.onnx').stat().st_size / 1e6:.2f} MB without weights")


def refill(directory: Path, seed: int = 0) -> None:
    """Write WEIGHTS with values of each external initializer's type at the recorded offsets."""
    rng = np.random.default_rng(seed)
    model = onnx.load(str(directory / "model.onnx"), load_external_data=False)
    tensors = [t for t in model.graph.initializer if external_data_helper.uses_external_data(t)]
    places = [{e.key: e.value for e in t.external_data} for t in tensors]
    size = max(int(p.get("offset", 0)) + int(p["length"]) for p in places)
    buffer = bytearray(size)
    for tensor, place in zip(tensors, places):
        offset, length = int(place.get("offset", 0)), int(place["length"])
        if tensor.data_type in FLOATS:
            dtype = FLOATS[tensor.data_type]
            values = (rng.standard_normal(length // np.dtype(dtype).itemsize) * 0.02).astype(dtype)
            buffer[offset:offset + length] = values.tobytes()
        else:
            buffer[offset:offset + length] = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
    (directory / WEIGHTS).write_bytes(bytes(buffer))


def time_graphs(out_dir: Path, repeats: int) -> dict:
    from compressor.evaluation.onnx_runner import latency_feeds, median_latencies
    from exporters.onnx_export import onnx_session

    names = sorted(p.name for p in out_dir.iterdir() if (p / "model.onnx").exists())
    for name in names:
        refill(out_dir / name)
    sessions = {name: onnx_session(out_dir / name / "model.onnx") for name in names}
    feeds = latency_feeds([i.name for i in next(iter(sessions.values())).get_inputs()], 32, 128)
    latency = median_latencies(sessions, feeds, repeats=repeats)
    return latency_summary(latency, "ONNX Runtime CPU, batch 32, length 128, 2 threads, "
                                    f"median of {repeats} interleaved runs")


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("strip")
    s.add_argument("graph_dir", type=Path)
    s.add_argument("out_dir", type=Path)
    t = sub.add_parser("time")
    t.add_argument("out_dir", type=Path)
    t.add_argument("--repeats", type=int, default=20)
    t.add_argument("--output", type=Path)
    args = parser.parse_args()
    if args.command == "strip":
        strip(args.graph_dir, args.out_dir)
        return
    from exporters.cpu_features import cpu_description

    result = {**time_graphs(args.out_dir, args.repeats), "cpu": cpu_description()}
    print(json.dumps(result, indent=2))
    if args.output:
        write_results(args.output, result)


if __name__ == "__main__":
    main()
