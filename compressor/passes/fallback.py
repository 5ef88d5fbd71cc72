"""Sensitivity-driven fallback: put back in float the few quantized layers that hurt the output most."""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from compressor.numerics.formats import FLOAT
from compressor.fidelity import output_error
from compressor.passes.base import PASSES, Pass, PassConfig
from compressor.passes.precision_search import measure_sensitivity
from compressor.passes.plan import QuantizationPlan, set_module
from compressor.passes.results import Fallback


def apply_fallback(
    handle,
    originals: dict[str, nn.Linear],
    batches: list[dict],
    references: list[torch.Tensor],
    plan: QuantizationPlan,
    max_layers: int,
    min_gain: float,
    tolerance: float = 0.0,
) -> tuple[list[str], dict]:
    """Score every quantized layer by the share of output error that keeping it in float removes;
    restore the top ``max_layers`` whose share is at least ``min_gain``. Nothing is restored when
    the fully quantized model's relative output error is already within ``tolerance``: a float layer
    costs latency. Returns the restored names and the output errors before and after."""
    records = plan.by_name()
    quantized = [r.name for r in plan.layers if not r.is_float]
    total = output_error(handle, batches, references) if quantized else 0.0
    errors = {"output_error_quantized": total, "output_error_final": total, "tolerance": tolerance}
    if max_layers == 0 or not quantized or total <= tolerance:
        return [], errors
    with_float = measure_sensitivity(handle, {n: {FLOAT: originals[n]} for n in quantized}, batches, references)
    for name in quantized:
        records[name].fallback_gain = 1.0 - with_float[name][FLOAT] / max(total, 1e-12)
    ranked = sorted(quantized, key=lambda n: records[n].fallback_gain, reverse=True)
    chosen = [n for n in ranked[:max_layers] if records[n].fallback_gain >= min_gain]
    for name in chosen:
        set_module(handle.model, name, originals[name])
        records[name].note = (
            f"kept in float: its {records[name].format} version caused {100 * records[name].fallback_gain:.1f}% of the output error"
        )
        records[name].format, records[name].bits = FLOAT, 16.0
    if chosen:
        errors["output_error_final"] = output_error(handle, batches, references)
    return chosen, errors


# --- the pass -----------------------------------------------------------------------------------


class FallbackConfig(PassConfig):
    max_layers: int = Field(2, ge=0)
    min_gain: float = Field(0.05, ge=0, le=1)  # share of the output error a float layer must remove
    tolerance: float = Field(0.01, ge=0)  # no float layers while the relative output error stays below this


@PASSES.register("fallback")
class FallbackPass(Pass):
    """Keeps in float the few quantized layers whose float copy removes the most output error, when the
    quantized model's relative output error exceeds the tolerance."""

    Config = FallbackConfig
    stage = "refine"
    requires = (QuantizationPlan,)
    produces = (Fallback,)

    def apply(self, context) -> dict:
        cfg, plan = self.config, context.result(QuantizationPlan)
        restored, errors = apply_fallback(context.handle, plan.originals, context.sensitivity_batches,
                                          context.references, plan, cfg.max_layers, cfg.min_gain, cfg.tolerance)
        for name in restored:
            context.calibration.invalidate(name)
        context.results.put(Fallback(restored, errors))
        return {"restored": restored, **errors}
