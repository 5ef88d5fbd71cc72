"""The compressed checkpoint format, and loading it: ``compression.json`` (the recipe, per-pass records,
the per-layer plan and one entry per rewritten module) beside ``model.safetensors`` with the modules'
packed tensors. Versions 1 and 2 still load. Writing is exporters/checkpoint.py."""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from compressor.adapters import adapter_for_directory
from compressor.errors import CompressorError
from compressor.files import check_checkpoint_dir, check_safetensors
from compressor.model import ModelHandle, load_model
from compressor.numerics.formats import is_float_scheme
from compressor.passes.plan import set_module
from compressor.quant_embedding import QuantEmbedding  # noqa: F401 (registers its module kind)
from compressor.quant_linear import MODULE_KINDS
from compressor.reduction import apply_reduction
from compressor.sparse_storage import unpack_sparse_state
from compressor.structure import apply_structure

# 3: ``modules`` lists every rewritten module with its kind and shape, and W8A8 layers store their
# weight as ``weight_values`` like every other scheme. 2: low-bit layers. 1: W8A8 only.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
RECORD_FILE, WEIGHTS_FILE = "compression.json", "model.safetensors"


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
        if is_float_scheme(layer["format"]):
            continue
        linear = model.get_submodule(layer["name"])
        entries.append({"name": layer["name"], "module": "quant_linear", "in_features": linear.in_features,
                        "out_features": linear.out_features, "bias": linear.bias is not None,
                        "scheme": layer["format"], "smooth": layer.get("smoothing_alpha") is not None,
                        "group_size": group_size, "symmetric": symmetric})
        if f"{layer['name']}.weight" in state:  # only W8A8 layers kept the name of the float weight
            state[f"{layer['name']}.weight_values"] = state.pop(f"{layer['name']}.weight")
    for table in record.get("embeddings", []):
        embedding = model.get_submodule(table["name"])
        entries.append({"name": table["name"], "module": "quant_embedding", "num_embeddings": embedding.num_embeddings,
                        "embedding_dim": embedding.embedding_dim, "format": table["format"],
                        "padding_idx": embedding.padding_idx, "group_size": group_size, "symmetric": symmetric})
    return entries


def load_any(path: str | Path) -> ModelHandle:
    """An original checkpoint or a compressed one."""
    return load_compressed(path) if is_compressed_checkpoint(path) else load_model(path)


def checkpoint_bytes(path: str | Path) -> int:
    """Bytes of the weight files: what a deployment ships, tokenizer and JSON aside."""
    path = Path(path)
    return sum(f.stat().st_size for f in path.iterdir() if f.suffix in (".safetensors", ".bin"))
