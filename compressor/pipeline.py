"""compress(): load → calibrate → quantize layers (fixed, pinned or searched schemes) → fallback →
embeddings → compressed checkpoint."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from compressor.model import ModelHandle, load_model
from compressor.passes.embeddings import quantize_embeddings
from compressor.passes.fallback import apply_fallback, output_error
from compressor.passes.precision_search import average_bits
from compressor.passes.quantize import quantize_layers
from compressor.recipe import Recipe
from exporters.atomic import check_can_write
from exporters.checkpoint import save_compressed


def compress_model(handle: ModelHandle, sentences: list[str], recipe: Recipe) -> dict:
    """Quantize a text encoder in place, calibrated on ``sentences``; returns the record of what was done."""
    calib = handle.adapter.batches(handle, sentences, recipe)
    return quantize_model(handle, calib, handle.adapter.batches(handle, sentences[: recipe.sensitivity_samples], recipe),
                          recipe)


def quantize_model(handle: ModelHandle, calib: list[dict], sensitivity_batches: list[dict], recipe: Recipe) -> dict:
    """Quantize ``handle.model`` in place from calibration batches of the adapter's inputs; the output
    error is measured on ``sensitivity_batches``. Returns the record of what was done."""
    started = time.perf_counter()
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
        # over the layers the recipe quantizes (or keeps in float itself); the adapter's default float layers are apart
        "bits_per_weight": _bits(layers, only_budget=True),
        "bits_per_weight_all_layers": _bits(layers, only_budget=False),
        "search": plan.search,
        "embeddings": embeddings,
        "fallback": fallback,
        "output_error": errors,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _bits(layers: list[dict], only_budget: bool) -> float:
    chosen = [r for r in layers if r["in_budget"] or not only_budget]
    return average_bits({r["name"]: r["bits"] for r in chosen}, {r["name"]: r["params"] for r in chosen})


def compress(
    model_dir: str | Path,
    recipe: Recipe,
    calib_data: str | Path | None,
    output: str | Path,
    overwrite: bool = False,
    announce=None,
) -> ModelHandle:
    """The whole ``compressor compress`` step; the output directory appears only when everything worked.
    Without ``calib_data`` the adapter's default calibration is used (``record["calibration"]["default"]``)."""
    check_can_write(Path(output), overwrite)  # fail before the slow part
    handle = load_model(model_dir)
    calib, sensitivity, calibration = handle.adapter.calibration(handle, calib_data, recipe)
    if calibration["default"] and announce is not None:
        announce(f"no calibration data given: calibrating on {calibration['description']}")
    record = quantize_model(handle, calib, sensitivity, recipe)
    record["source"] = str(handle.source)
    record["calibration"] = calibration
    save_compressed(handle, output, record, overwrite)
    handle.info = record
    return handle
