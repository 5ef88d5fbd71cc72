"""Compressed checkpoint directories: real INT8 tensors and scales in safetensors, plus the record of
what was done (compression.json) and a short model card."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from safetensors.torch import load_file, save_file

from compressor.errors import CompressorError
from compressor.int8_linear import Int8Linear
from compressor.quant_embedding import QuantEmbedding
from compressor.quant_linear import QuantLinear
from compressor.model import ModelHandle, _check_safetensors, check_checkpoint_dir, load_tokenizer, read_config
from compressor.adapters import adapter_for
from compressor.adapters.diffusion import DiffusionTransformerAdapter, diffusers_class_name
from compressor.passes.plan import set_module
from exporters.atomic import atomic_directory

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: W8A8 only
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
    lines += [
        f"- Static input ranges: {recipe['observer']} calibration"
        + (f", {recipe['percentile']}th percentile" if recipe["observer"] == "percentile" else "") + ".",
        f"- {len(smoothed)} layers with a searched outlier migration (SmoothQuant for W8A8, AWQ otherwise).",
        f"- Calibration: {_calibration_text(record['calibration'])}.",
    ]
    for table in record.get("embeddings", []):
        lines.append(f"- Embedding `{table['name']}` in {table['format']} ({table['bits']:.2f} bits per value).")
    for layer in floats:
        lines.append(f"- `{layer['name']}` kept in float: {layer['note']}")
    lines += ["", "Reload with `compressor.load_compressed(path)`; export with `compressor export`."]
    return "\n".join(lines) + "\n"


def _calibration_text(calibration: dict) -> str:
    return calibration.get("description") or f"{calibration['samples']} samples from `{calibration['data']}`"


def save_compressed(handle: ModelHandle, output: str | Path, record: dict, overwrite: bool = False) -> Path:
    """Write the compressed model atomically: a failure leaves no partial directory behind."""
    record = {"format_version": FORMAT_VERSION, **record}
    with atomic_directory(output, overwrite) as scratch:
        handle.adapter.save_metadata(handle, scratch)
        state = {k: v.detach().contiguous() for k, v in handle.model.state_dict().items()}
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
    """Rebuild the architecture from config.json, put Int8Linear layers where the record says, load weights."""
    from transformers import AutoModel

    path = check_checkpoint_dir(path)
    record = read_record(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CompressorError(f"{path} has no {WEIGHTS_FILE}")
    _check_safetensors(weights)
    class_name = diffusers_class_name(path)
    if class_name is not None:
        adapter, tokenizer = DiffusionTransformerAdapter(class_name, path), None
        model = adapter.empty_model()
    else:
        config = read_config(path)
        adapter = adapter_for(config)
        if adapter is None:
            raise CompressorError(f"model type {config.model_type!r} in {path} has no adapter")
        tokenizer = load_tokenizer(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModel.from_config(config, attn_implementation="sdpa")
    try:
        _restore_modules(model, record)
    except (AttributeError, KeyError, ValueError) as exc:
        raise CompressorError(f"{path / RECORD_FILE} does not match the model in config.json: {exc}") from None
    state = load_file(str(weights))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CompressorError(f"{weights} does not match its record: {str(exc).splitlines()[0]}") from None
    model.eval()
    return ModelHandle(model=model, tokenizer=tokenizer, adapter=adapter, source=path, info=record)


def _restore_modules(model, record: dict) -> None:
    """Put the quantized module classes where the record says, with the shapes of their stored tensors."""
    recipe = record["recipe"]
    group_size, symmetric = recipe.get("group_size", 128), recipe.get("symmetric", True)
    for layer in record["layers"]:
        if layer["format"] == "float":
            continue
        linear = model.get_submodule(layer["name"])
        smooth = layer.get("smoothing_alpha") is not None
        shape = (linear.in_features, linear.out_features, linear.bias is not None)
        if layer["format"] == "int8":
            module = Int8Linear(*shape, smooth)
        else:
            module = QuantLinear(*shape, layer["format"], smooth, group_size, symmetric)
        set_module(model, layer["name"], module)
    for table in record.get("embeddings", []):
        embedding = model.get_submodule(table["name"])
        set_module(model, table["name"], QuantEmbedding(
            embedding.num_embeddings, embedding.embedding_dim, table["format"], embedding.padding_idx, group_size, symmetric
        ))


def load_any(path: str | Path) -> ModelHandle:
    """An original checkpoint or a compressed one."""
    from compressor.model import load_model

    return load_compressed(path) if is_compressed_checkpoint(path) else load_model(path)


def checkpoint_bytes(path: str | Path) -> int:
    """Bytes of the weight files: what a deployment ships, tokenizer and JSON aside."""
    path = Path(path)
    return sum(f.stat().st_size for f in path.iterdir() if f.suffix in (".safetensors", ".bin"))
