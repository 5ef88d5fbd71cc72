"""compress(): load → calibrate → the recipe's passes in order → compressed checkpoint."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from calibrators.service import CalibrationService
from compressor.errors import CompressorError
from compressor.model import ModelHandle, load_model
from compressor.passes.base import PassContext, missing_results
from compressor.fidelity import output_error
from compressor.passes.precision_search import average_bits
from compressor.passes.results import (Fallback, PrunedStructure, QuantizationPlan, QuantizedEmbeddings, Sparsity,
                                       TokenReduction)
from compressor.recipe import Recipe
from compressor.atomic import check_can_write
from exporters.checkpoint import save_compressed


def compress_model(handle: ModelHandle, sentences: list[str], recipe: Recipe) -> dict:
    """Compress a text encoder in place, calibrated on ``sentences``; returns the record of what was done."""
    settings = recipe.calibration
    calib = handle.adapter.batches(handle, sentences, settings)
    return run_recipe(handle, calib, handle.adapter.batches(handle, sentences[: settings.sensitivity_samples], settings),
                      recipe)


def run_recipe(handle: ModelHandle, calib: list[dict], sensitivity_batches: list[dict], recipe: Recipe) -> dict:
    """Run the recipe's passes on ``handle.model`` in place, calibrated on batches of the adapter's
    inputs; output errors are measured on ``sensitivity_batches``. Returns the record of what was done."""
    started = time.perf_counter()
    with torch.no_grad():
        references = [handle.adapter.forward(handle.model, b) for b in sensitivity_batches]
    settings = recipe.calibration
    service = CalibrationService(handle, calib, settings.search_tokens, settings.seed)
    context = PassContext(handle, service, sensitivity_batches, references, settings)
    passes = []
    for step in recipe.passes:
        missing = missing_results(step, context.results)
        if missing:
            raise CompressorError(f"pass '{step.name}' needs {', '.join(missing)} from an earlier pass")
        passes.append({"pass": step.name, **step.apply(context)})
    results = context.results
    plan, fallback = results.get(QuantizationPlan), results.get(Fallback)
    embeddings, sparsity = results.get(QuantizedEmbeddings), results.get(Sparsity)
    structure, reduction = results.get(PrunedStructure), results.get(TokenReduction)
    layers = [layer.to_dict() for layer in plan.layers] if plan is not None else []
    errors = dict(fallback.errors) if fallback is not None else {}
    if not errors or (embeddings is not None and embeddings.tables):
        errors["output_error_final"] = output_error(handle, sensitivity_batches, references)
    return {
        "recipe": recipe.to_dict(),
        "passes": passes,
        "layers": layers,
        # over the layers the recipe quantizes (or keeps in float itself); the adapter's default float layers are apart
        "bits_per_weight": plan_bits(layers, only_budget=True),
        "bits_per_weight_all_layers": plan_bits(layers, only_budget=False),
        "search": plan.search if plan is not None else None,
        "structure": structure.record if structure is not None else None,  # None when unpruned
        "sparsity": sparsity.to_record() if sparsity is not None else None,
        # settings a tokens-stage pass patched the model with; loading applies them again (compressor/reduction.py)
        "token_reduction": reduction.settings if reduction is not None else None,
        "embeddings": embeddings.tables if embeddings is not None else [],
        "fallback": fallback.restored if fallback is not None else [],
        "output_error": errors,
        "calibration_runs": service.runs,
        "seconds": round(time.perf_counter() - started, 2),
    }


def plan_bits(layers: list[dict], only_budget: bool) -> float:
    """Average effective bits per weight of the recorded layers (those in the bit budget, or all)."""
    chosen = [r for r in layers if r["in_budget"] or not only_budget]
    if not chosen:  # nothing quantized (a pruning-only recipe): the weights stay FP32
        return 32.0
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
    calib, sensitivity, calibration = handle.adapter.calibration(handle, calib_data, recipe.calibration)
    if calibration["default"] and announce is not None:
        announce(f"no calibration data given: calibrating on {calibration['description']}")
    record = run_recipe(handle, calib, sensitivity, recipe)
    record["source"] = str(handle.source)
    record["calibration"] = calibration
    save_compressed(handle, output, record, overwrite)
    handle.info = record
    return handle
