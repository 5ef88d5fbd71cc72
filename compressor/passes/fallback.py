"""Sensitivity-driven fallback: put back in float the few quantized layers that hurt the output most."""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn
from tqdm.auto import tqdm

from compressor.numerics.formats import FLOAT
from compressor.passes.base import PASSES, Pass, PassConfig
from compressor.passes.plan import QuantizationPlan, set_module
from compressor.passes.results import Fallback


@torch.no_grad()
def output_error(handle, batches: list[dict], references: list[torch.Tensor]) -> float:
    """Relative squared error of the model output against the original's, over real tokens."""
    num = den = 0.0
    for batch, ref in zip(batches, references):
        mask = handle.adapter.token_mask(batch)
        out = handle.adapter.forward(handle.model, batch)
        num += float((out - ref)[mask].pow(2).sum())
        den += float(ref[mask].pow(2).sum())
    return num / max(den, 1e-12)


def pooled_error(handle, batches: list[dict], references: list[torch.Tensor]) -> float:
    """Relative squared error of what the user consumes, where the adapter pools the output into one
    vector per input (a sentence embedding); the token-level ``output_error`` otherwise."""
    pool = getattr(handle.adapter, "pool", None)
    if pool is None:
        return output_error(handle, batches, references)
    num = den = 0.0
    for batch, ref in zip(batches, references):
        out, ref = pool(handle.adapter.forward(handle.model, batch), batch), pool(ref, batch)
        num += float((out - ref).pow(2).sum())
        den += float(ref.pow(2).sum())
    return num / max(den, 1e-12)


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
    for name in tqdm(quantized, desc="sensitivity", unit="layer", leave=False):
        quantized_module = handle.model.get_submodule(name)
        set_module(handle.model, name, originals[name])
        records[name].fallback_gain = 1.0 - output_error(handle, batches, references) / max(total, 1e-12)
        set_module(handle.model, name, quantized_module)
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
