"""Compressed checkpoint directories: real INT8 tensors and scales in safetensors, plus the record of
what was done (compression.json) and a short model card."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from safetensors.torch import load_file, save_file

from compressor.errors import CompressorError
from compressor.quant_embedding import QuantEmbedding  # noqa: F401 (registers its module kind)
from compressor.quant_linear import MODULE_KINDS
from compressor.adapters import adapter_for_directory
from compressor.files import check_checkpoint_dir, check_safetensors
from compressor.model import ModelHandle
from compressor.passes.plan import set_module
from compressor.reduction import apply_reduction
from compressor.structure import apply_structure
from exporters.atomic import atomic_directory
from exporters.sparse_storage import pack_sparse_state, unpack_sparse_state

# 3: ``modules`` lists every rewritten module with its kind and shape, and W8A8 layers store their
# weight as ``weight_values`` like every other scheme. 2: low-bit layers. 1: W8A8 only.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
RECORD_FILE, WEIGHTS_FILE = "compression.json", "model.safetensors"


def model_card(record: dict) -> str:
    from compressor.numerics.formats import SCHEMES

    layers = record["layers"]
    floats = [layer for layer in layers if layer["format"] == "float"]
    smoothed = [layer for layer in layers if layer.get("smoothing_alpha") is not None]
    recipe = record["recipe"]
    lines = [
        f"# Compressed model: {record['recipe']['name']}",
        "",
        f"Source checkpoint: `{record['source']}`",
        "",
    ]
    counts: dict[str, int] = {}
    for layer in layers:
        counts[layer["format"]] = counts.get(layer["format"], 0) + 1
    for scheme, count in counts.items():
        if scheme != "float":
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
        settings = ", ".join(f"{k} {v}" for k, v in reduction.items() if k != "method")
        lines.append(f"- Token reduction `{reduction['method']}` ({settings}), applied again when the checkpoint loads.")
    lines += ["", "Reload with `compressor.load_compressed(path)`; export with `compressor export`."]
    return "\n".join(lines) + "\n"


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


def read_record(path: Path) -> dict:
    try:
        record = json.loads((path / RECORD_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CompressorError(f"{path} is not a compressed checkpoint (no {RECORD_FILE})") from None
    except json.JSONDecodeError as exc:
        raise CompressorError(f"{path / RECORD_FILE} is not valid JSON: {exc}") from None
    if record.get("format_version") not in READABLE_VERSIONS:
        raise CompressorError(f"{path / RECORD_FILE}: unsupported format_version {record.get('format_version')!r}")
    return record


def is_compressed_checkpoint(path: str | Path) -> bool:
    return (Path(path) / RECORD_FILE).is_file()


def load_compressed(path: str | Path) -> ModelHandle:
    """Rebuild the architecture from config.json, put the compressed modules where the record says, load weights."""
    path = check_checkpoint_dir(path)
    record = read_record(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CompressorError(f"{path} has no {WEIGHTS_FILE}")
    check_safetensors(weights)
    adapter = adapter_for_directory(path)
    model, tokenizer = adapter.empty_model(), adapter.load_tokenizer()
    state = load_file(str(weights))
    try:
        apply_structure(model, record.get("structure") or {})  # pruned shapes first, then compressed modules
        entries = record["modules"] if record["format_version"] >= 3 else _entries_before_v3(model, record, state)
        restore_modules(model, entries)
    except (AttributeError, KeyError, ValueError) as exc:
        raise CompressorError(f"{path / RECORD_FILE} does not match the model in config.json: {exc}") from None
    try:
        unpack_sparse_state(state, record.get("sparse_tensors") or {})
    except (KeyError, ValueError) as exc:
        raise CompressorError(f"{weights}: a sparse tensor does not match its record: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CompressorError(f"{weights} does not match its record: {str(exc).splitlines()[0]}") from None
    model.eval()
    handle = ModelHandle(model=model, tokenizer=tokenizer, adapter=adapter, source=path, info=record)
    apply_reduction(handle, record.get("token_reduction"))
    return handle


def module_entries(model) -> list[dict]:
    """The record of every compressed module in ``model``: name, registered kind and constructor arguments."""
    return [{"name": name, **module.checkpoint_entry()} for name, module in model.named_modules()
            if hasattr(module, "checkpoint_entry")]


def restore_modules(model, entries: list[dict]) -> None:
    """Put each entry's module kind, with the shapes of its stored tensors, in place of the original module."""
    for entry in entries:
        set_module(model, entry["name"], MODULE_KINDS.lookup(entry["module"]).from_entry(entry))


def _entries_before_v3(model, record: dict, state: dict) -> list[dict]:
    """Module entries of a version 1 or 2 checkpoint, read from its layer records. Its W8A8 layers
    stored their int8 weight as ``<layer>.weight``: renamed in ``state`` to today's ``weight_values``."""
    recipe = record["recipe"]
    group_size, symmetric = recipe.get("group_size", 128), recipe.get("symmetric", True)
    entries = []
    for layer in record["layers"]:
        if layer["format"] == "float":
            continue
        linear = model.get_submodule(layer["name"])
        entries.append({"name": layer["name"], "module": "quant_linear", "in_features": linear.in_features,
                        "out_features": linear.out_features, "bias": linear.bias is not None,
                        "scheme": layer["format"], "smooth": layer.get("smoothing_alpha") is not None,
                        "group_size": group_size, "symmetric": symmetric})
        if layer["format"] == "int8" and f"{layer['name']}.weight" in state:
            state[f"{layer['name']}.weight_values"] = state.pop(f"{layer['name']}.weight")
    for table in record.get("embeddings", []):
        embedding = model.get_submodule(table["name"])
        entries.append({"name": table["name"], "module": "quant_embedding", "num_embeddings": embedding.num_embeddings,
                        "embedding_dim": embedding.embedding_dim, "format": table["format"],
                        "padding_idx": embedding.padding_idx, "group_size": group_size, "symmetric": symmetric})
    return entries


def load_any(path: str | Path) -> ModelHandle:
    """An original checkpoint or a compressed one."""
    from compressor.model import load_model

    return load_compressed(path) if is_compressed_checkpoint(path) else load_model(path)


def checkpoint_bytes(path: str | Path) -> int:
    """Bytes of the weight files: what a deployment ships, tokenizer and JSON aside."""
    path = Path(path)
    return sum(f.stat().st_size for f in path.iterdir() if f.suffix in (".safetensors", ".bin"))
