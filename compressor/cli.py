"""The ``compressor`` command: compress, export, compare."""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from compressor.errors import CompressorError
from compressor.numerics.formats import is_float_scheme
from compressor.passes.plan import scheme_counts
from compressor.model import resolve_model_dir
from compressor.recipe import PRESETS


def _compress(args) -> None:
    from compressor.pipeline import compress
    from compressor.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    if args.num_samples is not None:
        if args.num_samples < 1:
            raise CompressorError(f"--num-samples must be at least 1, got {args.num_samples}")
        recipe = recipe.with_calibration(calib_samples=args.num_samples, calib_images=args.num_samples)
    if args.max_bits is not None:
        quantize = recipe.find("quantize")
        if quantize is None or not quantize.config.candidates:
            what = f"uses {quantize.config.scheme} everywhere" if quantize is not None else "has no quantize pass"
            raise CompressorError(f"--max-bits needs a recipe that searches per-layer formats (e.g. fp4-int8); "
                                  f"'{recipe.name}' {what}")
        if args.max_bits <= 0:
            raise CompressorError(f"--max-bits must be > 0, got {args.max_bits}")
        quantize.config.max_bits = args.max_bits
    if args.vq_dim is not None or args.vq_entries is not None:
        _set_vq_shape(recipe, args.vq_dim, args.vq_entries)
    if args.keep_macs is not None:
        prune = recipe.find("prune_structured")
        if prune is None:
            raise CompressorError(f"--keep-macs needs a recipe with structured pruning (e.g. prune-structured); "
                                  f"'{recipe.name}' has none")
        if not 0 < args.keep_macs <= 1:
            raise CompressorError(f"--keep-macs must be a fraction in (0, 1], got {args.keep_macs}")
        prune.config.keep_macs, prune.config.ratios = args.keep_macs, {}
    handle = compress(resolve_model_dir(args.model_dir), recipe, args.calib_data, args.output,
                      overwrite=args.overwrite, announce=lambda text: print(text, file=sys.stderr))
    print(plan_table(handle.info))
    from compressor.checkpoint import checkpoint_bytes

    size, original = checkpoint_bytes(args.output), checkpoint_bytes(handle.info["source"])
    print(f"wrote {args.output} in {handle.info['seconds']:.1f} s: weights {size / 1e6:.1f} MB on disk, "
          f"{size / max(original, 1):.3f}x the original's {original / 1e6:.1f} MB")


def _set_vq_shape(recipe, dim: int | None, entries: int | None) -> None:
    """--vq-dim/--vq-entries: the sub-vector size and codebook size of every VQ scheme the recipe uses."""
    from compressor.numerics.formats import SCHEMES, VQ_SHAPES
    from compressor.numerics.vq import check_vq_shape

    quantize = recipe.find("quantize")
    config = quantize.config if quantize is not None else None
    schemes = [] if config is None else [config.scheme, *config.candidates, *config.formats.values()]
    vq = [s for s in schemes if SCHEMES[s].weight in VQ_SHAPES]
    if not vq:
        raise CompressorError(f"--vq-dim/--vq-entries need a recipe with vector quantization (vq3, vq2, vq-mix); "
                              f"'{recipe.name}' has none")
    default_dim, default_entries = VQ_SHAPES[SCHEMES[vq[0]].weight]
    dim, entries = dim or default_dim, entries or default_entries
    check_vq_shape(dim, entries, where="--vq-dim/--vq-entries")
    quantize.config = type(config)(**{**config.model_dump(), "vq_dim": dim, "vq_entries": entries})


def _sensitivity_cell(layer: dict) -> str:
    sensitivity = layer.get("sensitivity")
    if not sensitivity:
        return "-"
    return " ".join(f"{scheme}={value:.2e}" for scheme, value in sensitivity.items() if not is_float_scheme(scheme))


def pruning_lines(record: dict) -> list[str]:
    """One line per pruning pass: what was removed or zeroed."""
    lines = []
    for step in record.get("passes", []):
        if step.get("pass") == "prune_structured":
            removed = step["removed"]
            lines.append(f"structured pruning: {removed['heads']} heads and {removed['channels']} channels removed; "
                         f"{step['kept_macs']:.3f} of the Linear MACs kept")
        elif step.get("pass") == "sparsify":
            dense = f"; {len(step['dense'])} kept dense" if step.get("dense") else ""
            lines.append(f"sparsity: {step['pattern']} by {step['method']} on {len(step['sparsity'])} layers, "
                         f"{step['overall']:.1%} of the eligible weights zero{dense}")
    return lines


def plan_table(record: dict) -> str:
    if not record["layers"]:  # nothing quantized
        return "\n".join(pruning_lines(record))
    lines = [*pruning_lines(record),
             f"{'layer':<44} {'format':<12} {'bits':>5} {'input amax':>10} {'alpha':>5}  {'sensitivity':<30} note"]
    for layer in record["layers"]:
        alpha = "-" if layer["smoothing_alpha"] is None else f"{layer['smoothing_alpha']:.2f}"
        lines.append(
            f"{layer['name']:<44} {layer['format']:<12} {layer.get('bits', 0):>5.2f} {layer['input_amax']:>10.3f} "
            f"{alpha:>5}  {_sensitivity_cell(layer):<30} {layer['note']}"
        )
    summary = ", ".join(f"{n} {scheme}" for scheme, n in scheme_counts(record["layers"]).items())
    lines.append(f"{len(record['layers'])} layers: {summary}; "
                 f"{record.get('bits_per_weight', 0):.3f} effective bits per weight")
    kept = [layer for layer in record["layers"] if not layer.get("in_budget", True)]
    if kept:
        lines[-1] += (f" of the quantized layers ({record['bits_per_weight_all_layers']:.3f} counting the "
                      f"{len(kept)} layers kept in float by default at 16)")
    search = record.get("search")
    if search:
        worst = ", ".join(f"{w['name']} ({w['scheme']} {w['sensitivity']:.2e} → {w['chosen']})"
                          for w in search["most_sensitive"])
        lines.append(f"search: {' / '.join(search['candidates'])} within {search['max_bits']:g} bits; "
                     f"most sensitive: {worst}")
    for table in record.get("embeddings", []):
        lines.append(f"embedding {table['name']}: {table['format']}, {table['bits']:.2f} bits per value, "
                     f"relative error {table['error']:.2e}")
    errors = record.get("output_error")
    if errors and "tolerance" in errors:  # the fallback pass ran
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
    from compressor.atomic import check_can_write

    # Argument checks first: they need no model.
    shape_texts = {"--min-shapes": args.min_shapes, "--opt-shapes": args.opt_shapes, "--max-shapes": args.max_shapes}
    if args.format == "onnx":
        engine_only = [option for option, text in shape_texts.items() if text is not None]
        engine_only += ["--sparse-weights"] if args.sparse_weights else []
        if engine_only:
            verb = "apply" if len(engine_only) > 1 else "applies"
            raise CompressorError(f"{', '.join(engine_only)} {verb} only to --format tensorrt")
        target = args.target or "onnxruntime"
    else:
        if args.target not in (None, "tensorrt"):
            raise CompressorError(f"--format tensorrt always builds the engine from the tensorrt-target graph; "
                                  f"drop --target {args.target} (or export ONNX with --format onnx)")
        from exporters.tensorrt_engine import build_engine, import_tensorrt, parse_shape_option

        low, opt, high = (parse_shape_option(text, option) for option, text in shape_texts.items())
    check_can_write(Path(args.output), args.overwrite)
    if args.format == "tensorrt":
        import_tensorrt()  # fail before loading and exporting when TensorRT is missing

    from compressor.checkpoint import load_any
    from exporters.onnx_export import export_onnx

    handle = load_any(resolve_model_dir(args.model_dir))
    if args.split:
        if args.format != "onnx":
            raise CompressorError("--split writes ONNX graphs; drop --format tensorrt")
        from exporters.dit_split import export_dit_split

        paths = export_dit_split(handle, args.output, target, overwrite=args.overwrite)
        print(f"wrote {', '.join(str(p) for p in paths.values())}")
    elif args.format == "onnx":
        export_onnx(handle, args.output, target, overwrite=args.overwrite, int8_weights=args.int8_weights)
    else:
        sparse24 = ((handle.info or {}).get("sparsity") or {}).get("pattern") == "2:4"
        with tempfile.TemporaryDirectory() as scratch:
            onnx_path = export_onnx(handle, Path(scratch) / "model.onnx", "tensorrt")
            if sparse24:  # TensorRT reads the pattern along the weights' input-channel axis: check that one
                from exporters.sparsity_check import check_nm_sparsity

                rows = check_nm_sparsity(onnx_path, 2, 4)
                print(f"2:4 sparse along the input axis: {sum(r['sparse'] for r in rows)} of {len(rows)} weight "
                      "matmuls; building with SPARSE_WEIGHTS")
            build_engine(onnx_path, args.output, min_shapes=low, opt_shapes=opt, max_shapes=high,
                         sparse_weights=args.sparse_weights or sparse24, overwrite=args.overwrite)
    print(f"wrote {args.output}")


def _compare(args) -> None:
    from compressor.compare import compare, format_console_table, report_files

    report = compare(
        resolve_model_dir(args.model_dir), args.compressed, args.eval_data, args.report,
        judge=args.judge, samples=args.num_samples, steps=args.steps, guidance=args.guidance, seed=args.seed,
        batch=args.batch, length=args.length, threads=args.threads, repeats=args.repeats, overwrite=args.overwrite,
        save_samples=args.save_samples,
    )
    print(format_console_table(report))
    print(f"wrote {args.report}/{', '.join(report_files(report))}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compressor", description="Post-training compression of transformer checkpoints.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compress", help="calibrate and quantize a checkpoint into a compressed checkpoint directory")
    p.add_argument("model_dir", help="Hugging Face checkpoint directory, or 'default' for the embedded all-MiniLM-L6-v2")
    p.add_argument("--recipe", default="int8", help=f"preset name ({', '.join(PRESETS)}) or a recipe .yaml file")
    p.add_argument("--max-bits", type=float,
                   help="budget in effective bits per weight for a per-layer format search (fp4-int8 default: 5.0, vq3: 3.0, vq-mix: 2.5)")
    p.add_argument("--vq-dim", type=int, metavar="D",
                   help="vector quantization: weights per sub-vector (vq3: 2, vq2: 4)")
    p.add_argument("--vq-entries", type=int, metavar="K",
                   help="vector quantization: codebook entries per layer (vq3: 64, vq2: 256); indices take "
                   "ceil(log2 K) bits")
    p.add_argument("--keep-macs", type=float, metavar="FRACTION",
                   help="structured pruning budget: the fraction of the blocks' Linear multiply-accumulates to keep "
                   "(prune-structured presets; default 0.6)")
    p.add_argument("--calib-data", help="text models: a file of sentences, or a TSV such as STS-B (default: packaged "
                   "sentences); class-conditional DiTs: a JSON file {\"class_labels\": [...], \"seed\": 0} "
                   "(default: every class in turn, seed 0); ViTs: an ImageFolder directory (one folder per class, "
                   "named as the model's labels) or IDX image files, whose last 1,000 images calibration never reads")
    p.add_argument("--num-samples", type=int,
                   help="calibration sentences or ViT images (default 256), or DiT calibration images (default 64)")
    p.add_argument("--output", required=True, help="output directory (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.set_defaults(run=_compress)

    p = sub.add_parser("export", help="export a checkpoint (original or compressed) to ONNX or a TensorRT engine")
    p.add_argument("model_dir")
    p.add_argument("--format", choices=("onnx", "tensorrt"), default="onnx")
    p.add_argument("--target", choices=("onnxruntime", "tensorrt"), default=None,
                   help="ONNX flavour: integer kernels for ONNX Runtime (the default), or Q/DQ explicit quantization "
                   "for TensorRT; --format tensorrt always builds from the tensorrt graph")
    for option, which, example in (("--min-shapes", "smallest", "batch=1,sequence=1"),
                                   ("--opt-shapes", "tuned-for", "batch=8,sequence=128"),
                                   ("--max-shapes", "largest", "batch=32,sequence=512")):
        p.add_argument(option, metavar="DIM=N,...",
                       help=f"--format tensorrt: {which} size of the graph's named dynamic dimensions, e.g. {example} "
                       "(defaults: batch 1/8/32, sequence 1/128/512)")
    p.add_argument("--int8-weights", choices=("auto", "int8", "uint8"), default="auto",
                   help="onnxruntime target, W8A8 layers: int8 weights (u8·s8 kernels, faster where the CPU "
                   "has VNNI or AMX int8 dot products) or uint8 (u8·u8, exact on AVX2-only CPUs, whose u8·s8 kernels "
                   "can saturate); auto picks by the exporting machine's CPU")
    p.add_argument("--split", action="store_true",
                   help="DiTs: write OUTPUT as a directory of three graphs (head.onnx: embedding and first block; "
                   "rest.onnx: the other blocks' residual; final.onnx: the output layer) for step caching at run time")
    p.add_argument("--sparse-weights", action="store_true",
                   help="--format tensorrt: let TensorRT use 2:4 structured-sparse kernels where weights allow")
    p.add_argument("--output", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(run=_export)

    p = sub.add_parser("compare", help="accuracy, fidelity, latency and size of the original and compressed models")
    p.add_argument("model_dir", help="the original checkpoint directory (or 'default')")
    p.add_argument("compressed", nargs="+", help="compressed checkpoint directories")
    p.add_argument("--eval-data", help="text models: STS-style TSV (Spearman + fidelity) or plain sentences "
                   "(fidelity); DiTs: IDX image data (a directory holding *images-idx3-ubyte*, as MNIST ships) "
                   "whose last 1,000 images are the real images for the Fréchet distance; ViTs: an ImageFolder "
                   "directory, or IDX images and labels, of which the last 1,000 are scored (top-1 accuracy and "
                   "agreement)")
    p.add_argument("--report", required=True, help="report directory: report.json, report.md and report.png "
                   "(samples.png for DiTs)")
    p.add_argument("--judge", help="DiTs: judge classifier for class accuracy and Fréchet distance, a TorchScript "
                   "file mapping images in [-1, 1] to (logits, features)")
    p.add_argument("--num-samples", type=int, default=1000, help="DiTs: images sampled per model")
    p.add_argument("--save-samples", action="store_true",
                   help="DiTs: also write samples/<model>.npz: `images` (float in [-1, 1], [N, C, H, W], as sampled) "
                   "and `labels`")
    p.add_argument("--steps", type=int, default=25, help="DiTs: DDIM steps per sample")
    p.add_argument("--guidance", type=float, default=1.5, help="DiTs: classifier-free guidance scale")
    p.add_argument("--seed", type=int, default=0, help="DiTs: sampling seed (the same noise for every model)")
    p.add_argument("--batch", type=int, default=32, help="latency batch (DiTs: 16 is a good choice)")
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
