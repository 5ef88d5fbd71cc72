"""Activation-aware weight scaling (the AWQ idea), searched per layer.

Input channels that carry large activations matter most to the output, so their weight columns
are scaled up by s_j = mean|x_j|^alpha before rounding (finer relative grid for them) and the input
is divided by s_j at run time. alpha is searched on sample tokens by the layer's output error with
the weight format's own rounding; alpha = 0 (no scaling) is always a candidate, so the search can
only lower the measured error.
"""
from __future__ import annotations

import torch

from compressor.numerics.formats import WeightFormat
from compressor.passes.base import PASSES, Pass, PassConfig
from compressor.passes.results import LayerInputs, Migrations
from compressor.passes.smoothquant import SmoothingChoice

AWQ_ALPHAS = [i / 10 for i in range(1, 11)]


def _rtn(fmt: WeightFormat, w: torch.Tensor) -> torch.Tensor:
    return fmt.dequantize(fmt.quantize(w))


def weight_only_error(x: torch.Tensor, weight: torch.Tensor, fmt: WeightFormat, smooth: torch.Tensor | None) -> float:
    reference = x @ weight.T
    if smooth is None:
        out = x @ _rtn(fmt, weight).T
    else:
        out = (x * smooth) @ _rtn(fmt, weight / smooth).T
    return float((out - reference).pow(2).sum() / reference.pow(2).sum().clamp_min(1e-12))


def search_awq_scales(
    x: torch.Tensor, weight: torch.Tensor, fmt: WeightFormat, alphas: list[float] = AWQ_ALPHAS
) -> SmoothingChoice:
    """Best per-channel scaling for ``weight`` [out, in] given sample inputs ``x`` [tokens, in].

    Returns the input multiplier 1/s (``smooth``), as SmoothQuant does, so layers share one mechanism.
    """
    weight = weight.detach().float()
    mean_abs = x.abs().mean(dim=0).clamp_min(1e-6)
    base = weight_only_error(x, weight, fmt, None)
    best = SmoothingChoice(None, None, base, base)
    for alpha in alphas:
        s = mean_abs.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()  # centre the scales around 1 so neither side drifts
        smooth = 1.0 / s
        error = weight_only_error(x, weight, fmt, smooth)
        if error < best.error:
            best = SmoothingChoice(alpha, smooth, error, base)
    return best


# --- the pass -----------------------------------------------------------------------------------


class AwqConfig(PassConfig):
    alphas: list[float] = AWQ_ALPHAS


@PASSES.register("awq")
class AwqPass(Pass):
    """Activation-aware weight scaling for every quantized layer that is not W8A8 INT8, searched per
    layer with that layer's weight format; the quantize pass folds the chosen scaling in."""

    Config = AwqConfig
    stage = "migrate"
    statistics = ("samples",)
    produces = (Migrations,)
    before = ("quantize",)

    def search(self, layer: LayerInputs) -> SmoothingChoice:
        return search_awq_scales(layer.sample, layer.weight, layer.weight_format, self.config.alphas)

    def apply(self, context) -> dict:
        context.results.setdefault(Migrations).searches[self.name] = self
        return {"applies_to": "quantized layers other than W8A8 INT8", "alphas": self.config.alphas}
