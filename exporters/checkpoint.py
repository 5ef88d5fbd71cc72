"""Writing compressed checkpoint directories: the real packed tensors and scales in safetensors, the
record of what was done (compression.json) and a short model card. Reading them back is the core's
(compressor/checkpoint.py), which owns the on-disk format."""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from compressor.checkpoint import FORMAT_VERSION, RECORD_FILE, WEIGHTS_FILE
from compressor.model import ModelHandle
from compressor.numerics.formats import SCHEMES, is_float_scheme
from compressor.passes.plan import scheme_counts
from compressor.sparse_storage import pack_sparse_state
from compressor.atomic import atomic_directory


def model_card(record: dict) -> str:
    layers = record["layers"]
    floats = [layer for layer in layers if is_float_scheme(layer["format"])]
    smoothed = [layer for layer in layers if layer.get("smoothing_alpha") is not None]
    recipe = record["recipe"]
    lines = [
        f"# Compressed model: {record['recipe']['name']}",
        "",
        f"Source checkpoint: `{record['source']}`",
        "",
    ]
    for scheme, count in scheme_counts(layers).items():
        if not is_float_scheme(scheme):
            lines.append(f"- {count} Linear layers in `{scheme}`: {SCHEMES[scheme].description}.")
    if "bits_per_weight" in record:
        lines.append(f"- {record['bits_per_weight']:.3f} effective bits per Linear weight, scales included.")
    quantize = _quantize_settings(recipe)
    lines += [
        f"- Recipe passes: {', '.join(_pass_names(recipe))}.",
        f"- Static input ranges: {quantize['observer']} calibration"
        + (f", {quantize['percentile']}th percentile" if quantize["observer"] == "percentile" else "") + ".",
        f"- {len(smoothed)} layers with a searched outlier migration (SmoothQuant for W8A8, AWQ otherwise).",
        f"- Calibration: {_calibration_text(record['calibration'])}.",
    ]
    for table in record.get("embeddings", []):
        lines.append(f"- Embedding `{table['name']}` in {table['format']} ({table['bits']:.2f} bits per value).")
    for layer in floats:
        lines.append(f"- `{layer['name']}` kept in float: {layer['note']}")
    reduction = record.get("token_reduction")
    if reduction:
        settings = ", ".join(f"{k} {_compact(v)}" for k, v in reduction.items() if k != "method" and v is not None)
        lines.append(f"- Token reduction `{reduction['method']}` ({settings}), applied again when the checkpoint loads.")
    lines += ["", "Reload with `compressor.load_compressed(path)`; export with `compressor export`."]
    return "\n".join(lines) + "\n"


def _compact(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_compact(v)}" for k, v in value.items()) + "}"
    return str(value)


def _pass_names(recipe: dict) -> list[str]:
    return [next(iter(entry)) for entry in recipe.get("passes", [])] or ["quantize (a flat recipe of format 1-2)"]


def _quantize_settings(recipe: dict) -> dict:
    """The quantize pass's settings of a recorded recipe (flat recipes of formats 1-2 hold them at the top)."""
    for entry in recipe.get("passes", []):
        if "quantize" in entry:
            return entry["quantize"]
    return {"observer": recipe.get("observer", "percentile"), "percentile": recipe.get("percentile", 99.99)}


def _calibration_text(calibration: dict) -> str:
    return calibration.get("description") or f"{calibration['samples']} samples from `{calibration['data']}`"


def save_compressed(handle: ModelHandle, output: str | Path, record: dict, overwrite: bool = False) -> Path:
    """Write the compressed model atomically: a failure leaves no partial directory behind."""
    record["modules"] = module_entries(handle.model)  # the caller's record describes what was saved too
    state = {k: v.detach().contiguous() for k, v in handle.model.state_dict().items()}
    record["sparse_tensors"] = pack_sparse_state(state, handle.model, record.get("sparsity"))
    record = {**record, "format_version": FORMAT_VERSION}
    with atomic_directory(output, overwrite) as scratch:
        handle.adapter.save_metadata(handle, scratch)
        save_file(state, str(scratch / WEIGHTS_FILE), metadata={"format": "pt", "compressor": record.get("recipe", {}).get("name", "")})
        (scratch / RECORD_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
        (scratch / "README.md").write_text(model_card(record), encoding="utf-8")
    return Path(output)


def module_entries(model) -> list[dict]:
    """The record of every compressed module in ``model``: name, registered kind and constructor arguments."""
    return [{"name": name, **module.checkpoint_entry()} for name, module in model.named_modules()
            if hasattr(module, "checkpoint_entry")]
