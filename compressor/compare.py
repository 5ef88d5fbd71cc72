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
    int8 = [layer["name"] for layer in layers if layer["format"] == "int8"]
    return {
        "recipe": handle.info.get("recipe", {}).get("name", "fp32"),
        "int8_layers": len(int8),
        "float_layers": [layer["name"] for layer in layers if layer["format"] != "int8"],
    }


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
            row = {"model": name, "path": str(path), **_describe(handle)}
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
    head = ["model", "recipe"] + (["Spearman", "Δ"] if has_task else []) + [
        "cos to original", "latency ms", "latency ×", "weights MB", "size ×"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["models"]:
        cells = [row["model"], row["recipe"]]
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
        f"{setup['statistic']}, {setup['repeats']} runs. INT8 layers run as integer GEMMs (MatMulIntegerToFloat).",
        "Size: bytes of the weight files in each checkpoint directory.",
    ]
    return "\n".join(lines + notes) + "\n"


def plot_report(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["models"]
    has_task = report["task"] is not None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for row in rows:
        y = row["spearman"] if has_task else row["cosine_mean"]
        ax.scatter(row["latency_ratio"], y, s=40)
        ax.annotate(row["model"], (row["latency_ratio"], y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel(f"latency vs original (batch {report['latency_setup']['batch']}, "
                  f"length {report['latency_setup']['length']}, ONNX Runtime CPU)")
    ax.set_ylabel("STS Spearman ×100" if has_task else "cosine to original")
    ax.set_title("accuracy against latency")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def format_console_table(report: dict) -> str:
    return markdown_table(report).split("\n\n")[0]
