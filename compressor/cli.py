"""The ``compressor`` command: compress, export, compare."""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from compressor.errors import CompressorError
from compressor.model import resolve_model_dir


def _compress(args) -> None:
    from compressor.data import default_calibration_file
    from compressor.pipeline import compress
    from compressor.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    overrides = {"calib_samples": args.num_samples} if args.num_samples else {}
    if overrides:
        recipe = type(recipe).from_dict(overrides, base=recipe)
    calib = args.calib_data
    if calib is None:
        calib = default_calibration_file()
        print(f"no --calib-data given: calibrating on the packaged sentences ({calib})", file=sys.stderr)
    handle = compress(resolve_model_dir(args.model_dir), recipe, calib, args.output, overwrite=args.overwrite)
    print(plan_table(handle.info))
    print(f"wrote {args.output} in {handle.info['seconds']:.1f} s")


def plan_table(record: dict) -> str:
    lines = [f"{'layer':<44} {'format':<6} {'input amax':>10} {'alpha':>5}  note"]
    for layer in record["layers"]:
        alpha = "-" if layer["smoothing_alpha"] is None else f"{layer['smoothing_alpha']:.2f}"
        lines.append(f"{layer['name']:<44} {layer['format']:<6} {layer['input_amax']:>10.3f} {alpha:>5}  {layer['note']}")
    int8 = sum(layer["format"] == "int8" for layer in record["layers"])
    lines.append(f"{int8}/{len(record['layers'])} layers in W8A8")
    errors = record.get("output_error")
    if errors:
        before, after = errors["output_error_quantized"], errors["output_error_final"]
        if record["fallback"]:
            lines.append(f"fallback: relative output error {before:.2%} with every layer INT8, {after:.2%} with "
                         f"{len(record['fallback'])} layer(s) in float (tolerance {errors['tolerance']:.2%})")
        elif before <= errors["tolerance"]:
            lines.append(f"fallback: none needed, relative output error {before:.2%} "
                         f"(tolerance {errors['tolerance']:.2%})")
        else:
            lines.append(f"fallback: none applied (disabled, or no layer removed enough error); relative output "
                         f"error {before:.2%} is above the tolerance {errors['tolerance']:.2%}")
    return "\n".join(lines)


def _export(args) -> None:
    from exporters.checkpoint import load_any
    from exporters.onnx_export import export_onnx

    handle = load_any(resolve_model_dir(args.model_dir))
    if args.format == "onnx":
        export_onnx(handle, args.output, args.target, overwrite=args.overwrite)
    else:
        from exporters.tensorrt_engine import build_engine, import_tensorrt

        import_tensorrt()  # fail before exporting when TensorRT is missing
        with tempfile.TemporaryDirectory() as scratch:
            onnx_path = export_onnx(handle, Path(scratch) / "model.onnx", "tensorrt")
            build_engine(onnx_path, args.output, overwrite=args.overwrite)
    print(f"wrote {args.output}")


def _compare(args) -> None:
    from compressor.compare import compare, format_console_table

    report = compare(
        resolve_model_dir(args.model_dir), args.compressed, args.eval_data, args.report,
        batch=args.batch, length=args.length, threads=args.threads, repeats=args.repeats, overwrite=args.overwrite,
    )
    print(format_console_table(report))
    print(f"wrote {args.report}/report.json, report.md, report.png")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compressor", description="Post-training compression of transformer checkpoints.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compress", help="calibrate and quantize a checkpoint into a compressed checkpoint directory")
    p.add_argument("model_dir", help="Hugging Face checkpoint directory, or 'default' for the embedded all-MiniLM-L6-v2")
    p.add_argument("--recipe", default="int8", help="preset name (int8, int8-minmax) or a recipe .yaml file")
    p.add_argument("--calib-data", help="text file, one sentence per line, or a TSV such as STS-B (default: packaged sentences)")
    p.add_argument("--num-samples", type=int, help="calibration sentences to use (default: the recipe's, 256)")
    p.add_argument("--output", required=True, help="output directory (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.set_defaults(run=_compress)

    p = sub.add_parser("export", help="export a checkpoint (original or compressed) to ONNX or a TensorRT engine")
    p.add_argument("model_dir")
    p.add_argument("--format", choices=("onnx", "tensorrt"), default="onnx")
    p.add_argument("--target", choices=("onnxruntime", "tensorrt"), default="onnxruntime",
                   help="ONNX flavour: integer kernels for ONNX Runtime, or Q/DQ explicit quantization for TensorRT")
    p.add_argument("--output", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(run=_export)

    p = sub.add_parser("compare", help="accuracy, fidelity, latency and size of the original and compressed models")
    p.add_argument("model_dir", help="the original checkpoint directory (or 'default')")
    p.add_argument("compressed", nargs="+", help="compressed checkpoint directories")
    p.add_argument("--eval-data", required=True, help="STS-style TSV (Spearman + fidelity) or plain sentences (fidelity)")
    p.add_argument("--report", required=True, help="report directory: report.json, report.md, report.png")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(run=_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except CompressorError as exc:
        print(f"compressor: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("compressor: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
