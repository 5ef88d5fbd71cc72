"""What packed weights cost ONNX Runtime at load and at run time, with its constant folding on and off.

    .venv/bin/python benchmarks/onnx_packed_load.py MODEL.onnx [MODEL.onnx ...] [--output results.json]
        [--threads 2] [--runs 5] [--batch 32] [--sequence 128]

For each graph: the file's size, the bytes of its initializers by data type, and for each constant
folding setting (``exporters.onnx_export.onnx_session``): how much the process's resident memory grows
when the session is created and after its first run (VmRSS, and the peak VmHWM, from /proc/self/status),
and the median latency of ``--runs`` further runs. Growth is counted from just before the session is
created; "trimmed" is the growth at load once the C heap has returned its free memory (glibc
``malloc_trim``, done right after that load measurement, so the first-run figure starts from there):
what the session holds, as against what loading allocated and freed but the allocator kept. "peak"
is the high-water mark (VmHWM) over the whole measurement. Every (graph, setting) is measured in a fresh Python
process, so one session's allocations do not hide or inflate another's.

With folding on, ONNX Runtime evaluates the in-graph decode once at load and keeps float weights; with
it off, the packed bytes stay and every run decodes them again. Inputs are fixed (seed 0): int64 inputs
are token ids (``input_ids``: random below ``--vocab``; ``attention_mask``: ones; anything else: zeros),
float inputs standard normal; a dynamic dimension named ``batch`` gets ``--batch``, any other
``--sequence``. Linux only (reads /proc).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from harness import median, time_call, timed, write_results


# --- one measurement, in its own process -------------------------------------------------------


def memory_kib() -> dict[str, int]:
    """Resident (VmRSS) and peak resident (VmHWM) memory of this process, in KiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def release_free_heap() -> bool:
    """Give the C heap's free memory back to the system (glibc's malloc_trim), so resident memory shows what
    the session holds rather than what its loading freed but the allocator kept. False where unavailable."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def make_inputs(session, batch: int, sequence: int, vocab: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    feeds = {}
    for value in session.get_inputs():
        shape = [dim if isinstance(dim, int) else batch if dim == "batch" else sequence for dim in value.shape]
        if value.type == "tensor(int64)":
            if value.name == "input_ids":
                feeds[value.name] = rng.integers(0, vocab, shape, dtype=np.int64)
            elif value.name == "attention_mask":
                feeds[value.name] = np.ones(shape, dtype=np.int64)
            else:
                feeds[value.name] = np.zeros(shape, dtype=np.int64)
        elif value.type == "tensor(float)":
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
        else:
            raise SystemExit(f"{value.name}: no test input for {value.type}")
    return feeds


def measure(args) -> dict:
    """Session creation, first run and latency for one graph and folding setting (this process only)."""
    import numpy as np  # noqa: F401 (imported before the baseline, like onnxruntime)
    import onnxruntime  # noqa: F401

    from exporters.onnx_export import onnx_session

    base = memory_kib()
    session, load_s = timed(lambda: onnx_session(args.measure, args.threads, constant_folding=args.folding == "on"))
    loaded = memory_kib()
    trimmed = memory_kib() if release_free_heap() else None
    feeds = make_inputs(session, args.batch, args.sequence, args.vocab)
    first_s = timed(lambda: session.run(None, feeds))[1]  # outputs freed before memory is read
    first = memory_kib()
    times = time_call(lambda: session.run(None, feeds), args.runs)
    return {
        "load_s": load_s,
        "first_run_s": first_s,
        "median_ms": 1000 * median(times),
        "rss_growth_load_mib": (loaded["VmRSS"] - base["VmRSS"]) / 1024,
        "rss_growth_load_trimmed_mib": None if trimmed is None else (trimmed["VmRSS"] - base["VmRSS"]) / 1024,
        "rss_growth_first_run_mib": (first["VmRSS"] - base["VmRSS"]) / 1024,
        "peak_growth_mib": (memory_kib()["VmHWM"] - base["VmRSS"]) / 1024,
    }


# --- the driver --------------------------------------------------------------------------------


def initializer_bytes(path: Path) -> dict[str, int]:
    """Bytes of the graph's initializers by ONNX data type name."""
    import onnx
    from onnx import TensorProto, numpy_helper

    totals: dict[str, int] = {}
    for init in onnx.load(str(path)).graph.initializer:
        size = len(init.raw_data) or numpy_helper.to_array(init).nbytes
        name = TensorProto.DataType.Name(init.data_type)
        totals[name] = totals.get(name, 0) + size
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def run_child(path: Path, folding: str, args) -> dict:
    command = [sys.executable, __file__, "--measure", str(path), "--folding", folding, "--threads", str(args.threads),
               "--runs", str(args.runs), "--batch", str(args.batch), "--sequence", str(args.sequence),
               "--vocab", str(args.vocab)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{path} (folding {folding}) failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_table(results: list[dict]) -> None:
    print(f"{'graph':<28} {'MiB':>7} {'folding':>7} {'load MiB':>9} {'trimmed':>8} {'1st run MiB':>11} "
          f"{'peak MiB':>9} {'load s':>7} {'median ms':>10}")
    for row in results:
        for folding, m in row["sessions"].items():
            trimmed = m["rss_growth_load_trimmed_mib"]
            print(f"{row['graph'][:28]:<28} {row['file_bytes'] / 2**20:>7.2f} {folding:>7} "
                  f"{m['rss_growth_load_mib']:>9.1f} {'-' if trimmed is None else f'{trimmed:.1f}':>8} "
                  f"{m['rss_growth_first_run_mib']:>11.1f} {m['peak_growth_mib']:>9.1f} "
                  f"{m['load_s']:>7.3f} {m['median_ms']:>10.2f}")
        print(f"{'':<28} initializers: " + ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in row["initializer_bytes"].items()))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("graphs", nargs="*", type=Path)
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5, help="timed runs after the first")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sequence", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=1000, help="token ids are drawn below this")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: the child process's graph
    parser.add_argument("--folding", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args)))
        return
    if not args.graphs:
        parser.error("give at least one ONNX file")
    results = []
    for path in args.graphs:
        sessions = {folding: run_child(path, folding, args) for folding in ("on", "off")}
        results.append({"graph": path.name, "file_bytes": path.stat().st_size,
                        "initializer_bytes": initializer_bytes(path), "sessions": sessions})
    settings = {k: getattr(args, k) for k in ("threads", "runs", "batch", "sequence", "vocab")}
    print_table(results)
    if args.output:
        write_results(args.output, {"settings": settings, "graphs": results})


if __name__ == "__main__":
    main()
