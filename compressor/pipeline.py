"""compress(): load → calibrate → the recipe's passes in order → compressed checkpoint."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from calibrators.service import CalibrationService
from compressor.model import ModelHandle, load_model
from compressor.passes.base import PassContext
from compressor.passes.fallback import output_error
from compressor.passes.precision_search import average_bits
from compressor.recipe import Recipe
from exporters.atomic import check_can_write
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
        passes.append({"pass": step.name, **step.apply(context)})
    plan = context.shared.get("plan")
    layers = [layer.to_dict() for layer in plan.layers] if plan is not None else []
    errors = dict(context.shared.get("output_error", {}))
    if not errors or context.shared.get("embeddings"):
        errors["output_error_final"] = output_error(handle, sensitivity_batches, references)
    return {
        "recipe": recipe.to_dict(),
        "passes": passes,
        "layers": layers,
        # over the layers the recipe quantizes (or keeps in float itself); the adapter's default float layers are apart
        "bits_per_weight": _bits(layers, only_budget=True),
        "bits_per_weight_all_layers": _bits(layers, only_budget=False),
        "search": plan.search if plan is not None else None,
        "structure": context.shared.get("structure"),  # shapes after structured pruning, None when unpruned
        "sparsity": _sparsity(context.shared.get("sparsity")),
        # settings a tokens-stage pass patched the model with; loading applies them again (compressor/reduction.py)
        "token_reduction": context.shared.get("token_reduction"),
        "embeddings": context.shared.get("embeddings", []),
        "fallback": context.shared.get("fallback", []),
        "output_error": errors,
        "calibration_runs": service.runs,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _sparsity(found: dict | None) -> dict | None:
    """The sparse layers and their pattern, which the checkpoint stores compressed and export checks."""
    if not found:
        return None
    return {"pattern": found["pattern"],
            "layers": {n: round(1 - float(m.float().mean()), 4) for n, m in found["masks"].items()}}


def _bits(layers: list[dict], only_budget: bool) -> float:
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
