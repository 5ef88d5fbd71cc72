"""compressor compare: the original and each compressed model on the same inputs in one run.

One harness for every model kind: it loads each model, exports it to ONNX for ONNX Runtime, times the
exports on the same inputs (models interleaved), measures the weight files, and leaves the quality part to
the task evaluator of the model's kind (compressor/evaluation/): STS Spearman and embedding fidelity for text
encoders, sample quality for Diffusion Transformers, top-1 accuracy and agreement for image classifiers.
Writes report.json, report.md and the evaluator's figures (report.png, samples.png)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tqdm.auto import tqdm

from compressor.errors import CompressorError
from compressor.numerics.formats import is_float_scheme
from compressor.passes.plan import scheme_counts
from compressor.evaluation import evaluator_class, evaluator_for
from compressor.evaluation.base import Candidate, CompareOptions, TaskEvaluator
from compressor.evaluation.onnx_runner import median_latencies
from compressor.quant_linear import QuantLinear
from compressor.atomic import atomic_directory, check_can_write
from compressor.checkpoint import checkpoint_bytes, is_compressed_checkpoint, load_any
from exporters.onnx_export import export_onnx, onnx_session

LATENCY_STATISTIC = "median after 3 warm-up runs, models interleaved"
SPARSE_CPU_NOTE = (
    "Sparsity does not make a CPU faster: ONNX Runtime's CPU provider has no sparse kernels, so a sparse model "
    "runs the same dense GEMMs as its dense twin and its latency here gains nothing from the zeros. 2:4 "
    "sparsity pays off only on NVIDIA sparse tensor cores, through TensorRT (`compressor export --format "
    "tensorrt` sets SPARSE_WEIGHTS). On a CPU, only structured pruning (fewer heads and channels, fewer MACs) "
    "and lower-precision kernels cut latency.")


def _describe(handle) -> dict:
    layers = handle.info.get("layers", [])
    formats = scheme_counts(layers)
    return {
        "recipe": handle.info.get("recipe", {}).get("name", "fp32"),
        "bits_per_weight": handle.info.get("bits_per_weight", 32.0),
        "formats": formats,
        "int8_layers": formats.get("int8", 0),
        "float_layers": [layer["name"] for layer in layers if is_float_scheme(layer["format"])],
        "embeddings": [f"{t['name']}: {t['format']}" for t in handle.info.get("embeddings", [])],
        "pruned": bool(handle.info.get("structure")),
        **_macs_and_sparsity(handle),
    }


def _macs_and_sparsity(handle) -> dict:
    """Multiply-accumulates per token of the model's Linears (structured pruning lowers them) and the
    share of those Linears' weights that are pruned zeros (sparsity does not lower them)."""
    # the adapter's Linears still in float, and those already quantized
    names = [*handle.adapter.quantizable_layers(handle.model),
             *(n for n, m in handle.model.named_modules() if isinstance(m, QuantLinear))]
    sizes = {name: handle.model.get_submodule(name).in_features * handle.model.get_submodule(name).out_features
             for name in names}
    found = handle.info.get("sparsity") or {}
    zeros = sum(fraction * sizes[name] for name, fraction in found.get("layers", {}).items() if name in sizes)
    return {"linear_macs_per_token": sum(sizes.values()), "sparsity_pattern": found.get("pattern"),
            "sparsity": zeros / max(sum(sizes.values()), 1)}


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
    eval_data: str | Path | None,
    report_dir: str | Path,
    *,
    threads: int = 2,
    repeats: int = 15,
    overwrite: bool = False,
    evaluator: TaskEvaluator | None = None,
    **settings,
) -> dict:
    """Compare the original at ``model_dir`` with each compressed checkpoint and write the report.

    Without ``evaluator``, the one for the original's kind is built from ``eval_data`` and ``settings``
    (the fields of CompareOptions: judge, samples, steps, guidance, seed, batch, length)."""
    report_dir = Path(report_dir)
    check_can_write(report_dir, overwrite)
    original = load_any(model_dir)
    if evaluator is None:
        evaluator = evaluator_for(original.adapter.kind, CompareOptions(eval_data=eval_data, model_dir=model_dir, **settings))
    for path in compressed_dirs:
        if not is_compressed_checkpoint(path):
            raise CompressorError(f"{path} is not a compressed checkpoint (run compressor compress first)")
    names = ["original"] + [Path(p).name for p in compressed_dirs]
    if len(set(names)) != len(names):
        raise CompressorError("compared directories need distinct names")
    paths = [Path(model_dir)] + [Path(p) for p in compressed_dirs]

    rows, sessions, feeds = [], {}, None
    with tempfile.TemporaryDirectory(prefix="compressor-compare-") as scratch:
        for name, path in tqdm(list(zip(names, paths)), desc="evaluating", unit="model"):
            handle = original if name == "original" else load_any(path)
            onnx_path = export_onnx(handle, Path(scratch) / f"{name}.onnx", "onnxruntime")
            model = Candidate(name, handle, onnx_session(onnx_path, threads))
            sessions[name] = model.session
            row = {"model": name, "path": str(path), **_describe(handle), "onnxruntime_kernels": _kernels(handle)}
            row.update(evaluator.evaluate(model))
            row["weights_bytes"] = checkpoint_bytes(path)
            row["onnx_bytes"] = onnx_path.stat().st_size
            if feeds is None:
                feeds = evaluator.latency_feeds(model)
            rows.append(row)
        latency = median_latencies(sessions, feeds, repeats=repeats)

    base = rows[0]
    for row in rows:
        row[evaluator.latency_key] = latency[row["model"]] * 1000
        row.update(evaluator.latency_metrics(latency[row["model"]]))
        row["latency_ratio"] = latency[row["model"]] / latency["original"]
        row["size_ratio"] = row["weights_bytes"] / base["weights_bytes"]
        row["macs_ratio"] = row["linear_macs_per_token"] / base["linear_macs_per_token"]
    shape = dict(evaluator.latency_setup())
    statistic = shape.pop("statistic", LATENCY_STATISTIC)
    report = {
        "kind": evaluator.kind,
        **evaluator.describe(),
        "latency_setup": {"runtime": "onnxruntime CPUExecutionProvider", "onnx_target": "onnxruntime", **shape,
                          "threads": threads, "repeats": repeats, "statistic": statistic},
        "models": rows,
    }
    with atomic_directory(report_dir, overwrite) as out:
        (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        (out / "report.md").write_text(markdown_table(report), encoding="utf-8")
        evaluator.write_figures(report, out)
    return report


def report_files(report: dict) -> list[str]:
    """The files a report directory holds."""
    return ["report.json", "report.md", *evaluator_class(report["kind"]).figures]


def markdown_table(report: dict) -> str:
    """report.md: one row per model (the evaluator's columns between the size and latency ones), then notes."""
    evaluator = evaluator_class(report["kind"])
    task_columns = evaluator.columns(report)
    head = ["model", "recipe", "bits/weight", "MACs ×", "sparsity", *(c.header for c in task_columns),
            evaluator.latency_header, "latency ×", "weights MB", "size ×"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["models"]:
        sparsity = f"{row['sparsity_pattern']} ({row['sparsity']:.0%})" if row.get("sparsity_pattern") else "–"
        cells = [row["model"], row["recipe"], f"{row['bits_per_weight']:.2f}", f"{row.get('macs_ratio', 1.0):.2f}",
                 sparsity, *(c.render(row) for c in task_columns),
                 f"{row[evaluator.latency_key]:.2f}", f"{row['latency_ratio']:.2f}",
                 f"{row['weights_bytes'] / 1e6:.2f}", f"{row['size_ratio']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    setup = report["latency_setup"]
    shape = ", ".join(f"{key} {setup[key]}" for key in ("batch", "length") if key in setup)
    notes = [
        "",
        *evaluator.notes(report),
        f"Latency: each model's ONNX export in {setup['runtime']}, {shape}, {setup['threads']} threads, "
        f"{setup['statistic']}, {setup['repeats']} runs.",
        "Size: bytes of the weight files in each checkpoint directory; bits/weight: effective bits per quantized "
        "Linear weight with scales (a float layer counts 16, the original 32). MACs ×: multiply-accumulates per "
        "token of the Linears against the original's; sparsity: the pattern and share of those weights that are zero.",
        *([SPARSE_CPU_NOTE] if any(row.get("sparsity_pattern") for row in report["models"]) else []),
        "",
        "Which ONNX Runtime kernels the latency comes from (layers per kernel): real low-precision kernels are "
        "MatMulIntegerToFloat (INT8) and MatMulNBits (INT4); FP4, FP8, INT3 and VQ weights have no CPU kernel: the "
        "file holds them packed, the graph decodes them (ONNX Runtime folds the decode into float weights at load) "
        "and float MatMuls run, with their input quantization computed in float, so "
        "their accuracy is exact but their latency is not that of FP4/FP8 hardware.",
        "",
    ]
    for row in report["models"]:
        kernels = "; ".join(f"{count} × {kernel}" for kernel, count in row.get("onnxruntime_kernels", {}).items())
        notes.append(f"- {row['model']}: {kernels or 'float MatMul everywhere'}")
    return "\n".join(lines + notes) + "\n"


def format_console_table(report: dict) -> str:
    return markdown_table(report).split("\n\n")[0]


def compare_diffusion(model_dir, compressed_dirs: list, report_dir, setup, judge_path=None,
                      real_images=None, latency_batch: int = 16, threads: int = 2,
                      repeats: int = 15, overwrite: bool = False) -> dict:
    """`compressor compare` for a DiT with a given sampling setup and real images already loaded."""
    from compressor.evaluation.generated_images import GeneratedImages

    evaluator = GeneratedImages(setup, judge_path, real_images, latency_batch)
    return compare(model_dir, compressed_dirs, None, report_dir, threads=threads, repeats=repeats,
                   overwrite=overwrite, evaluator=evaluator)
