"""compress(): load → calibrate → quantize layers (fixed, pinned or searched schemes) → fallback →
embeddings → compressed checkpoint."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from calibrators.data import batches, read_sentences, sample_sentences
from compressor.model import ModelHandle, load_model
from compressor.passes.fallback import apply_fallback, output_error
from compressor.passes.embeddings import quantize_embeddings
from compressor.passes.precision_search import average_bits
from compressor.passes.quantize import quantize_layers
from compressor.recipe import Recipe
from exporters.atomic import check_can_write
from exporters.checkpoint import save_compressed


def tokenize_batches(handle: ModelHandle, sentences: list[str], recipe: Recipe) -> list[dict]:
    # Sorting by length keeps padding (wasted compute) low; order does not matter for statistics.
    ordered = sorted(sentences, key=len)
    return [handle.tokenize(chunk, recipe.max_length) for chunk in batches(ordered, recipe.batch_size)]


def compress_model(handle: ModelHandle, sentences: list[str], recipe: Recipe) -> dict:
    """Quantize ``handle.model`` in place; returns the record of what was done."""
    started = time.perf_counter()
    calib = tokenize_batches(handle, sentences, recipe)
    sensitivity_batches = tokenize_batches(handle, sentences[: recipe.sensitivity_samples], recipe)
    with torch.no_grad():
        references = [handle.adapter.forward(handle.model, b) for b in sensitivity_batches]
    originals = {name: handle.model.get_submodule(name) for name in handle.adapter.quantizable_layers(handle.model)}
    plan = quantize_layers(handle, calib, recipe, sensitivity_batches, references)
    fallback, errors = apply_fallback(
        handle, originals, sensitivity_batches, references, plan,
        recipe.fallback_max_layers, recipe.fallback_min_gain, recipe.fallback_tolerance,
    )
    embeddings = []
    if recipe.embeddings != "float":
        embeddings = quantize_embeddings(
            handle.model, handle.adapter.embedding_layers(handle.model), recipe.embeddings, recipe.group_size,
            recipe.symmetric,
        )
        errors["output_error_final"] = output_error(handle, sensitivity_batches, references)
    layers = [layer.to_dict() for layer in plan.layers]
    return {
        "recipe": recipe.to_dict(),
        "layers": layers,
        "bits_per_weight": average_bits({r["name"]: r["bits"] for r in layers}, {r["name"]: r["params"] for r in layers}),
        "search": plan.search,
        "embeddings": embeddings,
        "fallback": fallback,
        "output_error": errors,
        "seconds": round(time.perf_counter() - started, 2),
    }


def compress(
    model_dir: str | Path,
    recipe: Recipe,
    calib_data: str | Path,
    output: str | Path,
    overwrite: bool = False,
) -> ModelHandle:
    """The whole ``compressor compress`` step; the output directory appears only when everything worked."""
    check_can_write(Path(output), overwrite)  # fail before the slow part
    handle = load_model(model_dir)
    sentences = sample_sentences(read_sentences(calib_data), recipe.calib_samples, recipe.seed)
    record = compress_model(handle, sentences, recipe)
    record["source"] = str(handle.source)
    record["calibration"] = {"data": str(calib_data), "samples": len(sentences), "max_length": recipe.max_length}
    save_compressed(handle, output, record, overwrite)
    handle.info = record
    return handle
