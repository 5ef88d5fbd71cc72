"""compressor compare: the original and each compressed model on the same inputs in one run."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tqdm.auto import tqdm

from calibrators.data import read_sentence_pairs, read_sentences
from compressor.errors import CompressorError
from compressor.evaluation.metrics import embedding_fidelity, relative_error, sts_spearman
from compressor.evaluation.onnx_runner import latency_feeds, median_latencies, onnx_embed
from exporters.atomic import atomic_directory, check_can_write
from exporters.checkpoint import checkpoint_bytes, is_compressed_checkpoint, load_any
from exporters.onnx_export import export_onnx, onnx_session

FIDELITY_SENTENCES = 512


def _eval_sentences(path):
    """Labelled STS pairs where the file has them, else plain sentences (fidelity only)."""
    try:
        pairs = read_sentence_pairs(path)
        return pairs, pairs.first + pairs.second
    except CompressorError:
        return None, read_sentences(path)


def _describe(handle) -> dict:
    layers = handle.info.get("layers", [])
    formats: dict[str, int] = {}
    for layer in layers:
        formats[layer["format"]] = formats.get(layer["format"], 0) + 1
    return {
        "recipe": handle.info.get("recipe", {}).get("name", "fp32"),
        "bits_per_weight": handle.info.get("bits_per_weight", 32.0),
        "formats": formats,
        "int8_layers": formats.get("int8", 0),
        "float_layers": [layer["name"] for layer in layers if layer["format"] == "float"],
        "embeddings": [f"{t['name']}: {t['format']}" for t in handle.info.get("embeddings", [])],
    }


def _kernels(handle) -> dict[str, int]:
    """How many layers run on each kind of ONNX Runtime kernel (real low-precision or float)."""
    from exporters.onnx_export import runtime_kernels

    counts: dict[str, int] = {}
    for kernel in runtime_kernels(handle, "onnxruntime").values():
        counts[kernel] = counts.get(kernel, 0) + 1
    return counts


def compare(
    model_dir: str | Path,
    compressed_dirs: list[str | Path],
    eval_data: str | Path,
    report_dir: str | Path,
    batch: int = 32,
    length: int = 128,
    threads: int = 2,
    repeats: int = 15,
    overwrite: bool = False,
) -> dict:
    check_can_write(Path(report_dir), overwrite)
    for path in compressed_dirs:
        if not is_compressed_checkpoint(path):
            raise CompressorError(f"{path} is not a compressed checkpoint (run compressor compress first)")
    pairs, sentences = _eval_sentences(eval_data)
    probe = sentences[:FIDELITY_SENTENCES]
    names = ["original"] + [Path(p).name for p in compressed_dirs]
    if len(set(names)) != len(names):
        raise CompressorError("compared directories need distinct names")
    paths = [Path(model_dir)] + [Path(p) for p in compressed_dirs]

    rows, sessions, probe_outputs = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="compressor-compare-") as scratch:
        for name, path in tqdm(list(zip(names, paths)), desc="evaluating", unit="model"):
            handle = load_any(path)
            onnx_path = export_onnx(handle, Path(scratch) / f"{name}.onnx", "onnxruntime")
            session = sessions[name] = onnx_session(onnx_path, threads)
            row = {"model": name, "path": str(path), **_describe(handle), "onnxruntime_kernels": _kernels(handle)}
            if pairs is not None:
                first = onnx_embed(session, handle, pairs.first)
                second = onnx_embed(session, handle, pairs.second)
                row["spearman"] = sts_spearman(first, second, pairs.scores)
            probe_outputs[name] = onnx_embed(session, handle, probe)
            row["weights_bytes"] = checkpoint_bytes(path)
            row["onnx_bytes"] = onnx_path.stat().st_size
            rows.append(row)
            input_names = [i.name for i in session.get_inputs()]
        feeds = latency_feeds(input_names, batch, length)
        latency = median_latencies(sessions, feeds, repeats=repeats)

    base = rows[0]
    for row in rows:
        row.update(embedding_fidelity(probe_outputs["original"], probe_outputs[row["model"]]))
        row["embedding_rel_error"] = relative_error(probe_outputs["original"], probe_outputs[row["model"]])
        row["latency_ms"] = latency[row["model"]] * 1000
        row["latency_ratio"] = latency[row["model"]] / latency["original"]
        row["size_ratio"] = row["weights_bytes"] / base["weights_bytes"]
        if "spearman" in row:
            row["spearman_delta"] = row["spearman"] - base["spearman"]
    report = {
        "eval_data": str(eval_data),
        "task": "STS Spearman x100 (cosine of mean-pooled embeddings)" if pairs is not None else None,
        "fidelity_sentences": len(probe),
        "latency_setup": {
            "runtime": "onnxruntime CPUExecutionProvider",
            "onnx_target": "onnxruntime",
            "batch": batch,
            "length": length,
            "threads": threads,
            "repeats": repeats,
            "statistic": "median after 3 warm-up runs, models interleaved",
        },
        "models": rows,
    }
    with atomic_directory(report_dir, overwrite) as out:
        (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        (out / "report.md").write_text(markdown_table(report), encoding="utf-8")
        plot_report(report, out / "report.png")
    return report


def markdown_table(report: dict) -> str:
    setup = report["latency_setup"]
    has_task = report["task"] is not None
    head = ["model", "recipe", "bits/weight"] + (["Spearman", "Δ"] if has_task else []) + [
        "cos to original", "latency ms", "latency ×", "weights MB", "size ×"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["models"]:
        cells = [row["model"], row["recipe"], f"{row['bits_per_weight']:.2f}"]
        if has_task:
            cells += [f"{row['spearman']:.2f}", f"{row['spearman_delta']:+.2f}"]
        cells += [
            f"{row['cosine_mean']:.5f}",
            f"{row['latency_ms']:.1f}",
            f"{row['latency_ratio']:.2f}",
            f"{row['weights_bytes'] / 1e6:.1f}",
            f"{row['size_ratio']:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        "",
        f"Accuracy: {report['task'] or 'no labels in the eval data; fidelity only'} on `{report['eval_data']}`, "
        "computed with each model's ONNX export in ONNX Runtime.",
        f"Latency: {setup['runtime']}, batch {setup['batch']}, length {setup['length']}, {setup['threads']} threads, "
        f"{setup['statistic']}, {setup['repeats']} runs.",
        "Size: bytes of the weight files in each checkpoint directory; bits/weight: effective bits per Linear "
        "weight with scales (a float layer counts 16, the original 32).",
        "",
        "Which ONNX Runtime kernels the latency comes from (layers per kernel): real low-precision kernels are "
        "MatMulIntegerToFloat (INT8) and MatMulNBits (INT4); FP4 and FP8 weights have no CPU kernel and run as "
        "float MatMuls on weights dequantized at export, with their input quantization computed in float, so "
        "their accuracy is exact but their latency is not that of FP4/FP8 hardware.",
        "",
    ]
    for row in report["models"]:
        kernels = "; ".join(f"{count} × {kernel}" for kernel, count in row.get("onnxruntime_kernels", {}).items())
        notes.append(f"- {row['model']}: {kernels or 'float MatMul everywhere'}")
    return "\n".join(lines + notes) + "\n"


def plot_report(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["models"]
    has_task = report["task"] is not None
    accuracy = [row["spearman"] if has_task else row["cosine_mean"] for row in rows]
    fig, (size_ax, latency_ax) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    for ax, key in ((size_ax, "weights_bytes"), (latency_ax, "latency_ratio")):
        xs = [row[key] / 1e6 if key == "weights_bytes" else row[key] for row in rows]
        for row, x, y in zip(rows, xs, accuracy):
            ax.scatter(x, y, s=40)
            ax.annotate(row["model"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        frontier = pareto_frontier(xs, accuracy)
        ax.plot([xs[i] for i in frontier], [accuracy[i] for i in frontier], "--", color="gray", lw=1, label="frontier")
        ax.set_ylabel("STS Spearman ×100" if has_task else "cosine to original")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    size_ax.set_xlabel("weights on disk (MB)")
    size_ax.set_title("accuracy against size")
    latency_ax.set_xlabel(f"latency vs original (batch {report['latency_setup']['batch']}, "
                          f"length {report['latency_setup']['length']}, ONNX Runtime CPU)")
    latency_ax.set_title("accuracy against latency")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def pareto_frontier(cost: list[float], accuracy: list[float]) -> list[int]:
    """Indices of the points no other point beats on both lower cost and higher accuracy, by cost."""
    order = sorted(range(len(cost)), key=lambda i: (cost[i], -accuracy[i]))
    frontier, best = [], float("-inf")
    for i in order:
        if accuracy[i] > best:
            frontier.append(i)
            best = accuracy[i]
    return frontier


def format_console_table(report: dict) -> str:
    return markdown_table(report).split("\n\n")[0]
