"""SmoothQuant-style outlier migration with a searched strength alpha, one Linear at a time.

Dividing the input by s (per input channel) and multiplying the weight by s leaves the product
unchanged but moves activation outliers into the weight, which is quantized per output channel and
absorbs them. s_j = amax(x_j)^alpha / amax(W_:,j)^(1-alpha). The alpha grid always includes "no
smoothing", so the search can only lower the measured output error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from pydantic import Field

from compressor.numerics.int8 import fake_quantize_int8, int8_scale, quantize_weight_int8_per_channel
from compressor.passes.base import PASSES, Pass, PassConfig
from compressor.passes.results import LayerInputs, Migrations


@dataclass(frozen=True)
class SmoothingChoice:
    alpha: float | None  # None: no smoothing was best
    smooth: torch.Tensor | None  # 1/s, the multiplier applied to the input
    error: float  # relative output error of the W8A8 layer with this choice
    error_unsmoothed: float


def smoothing_factors(act_amax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """s per input channel; clamped so dead channels neither explode nor vanish."""
    w_amax = weight.abs().amax(dim=0).clamp_min(1e-5)
    s = act_amax.clamp_min(1e-5).pow(alpha) / w_amax.pow(1.0 - alpha)
    return s.clamp(1e-4, 1e4)


def w8a8_relative_error(x: torch.Tensor, weight: torch.Tensor, amax_fn, smooth: torch.Tensor | None) -> float:
    """||x W^T - Q(x * smooth) Q(W / smooth)^T||^2 / ||x W^T||^2 on sample tokens ``x`` [n, in]."""
    reference = x @ weight.T
    xs = x if smooth is None else x * smooth
    ws = weight if smooth is None else weight / smooth
    q, scale = quantize_weight_int8_per_channel(ws)
    out = fake_quantize_int8(xs, int8_scale(amax_fn(xs))) @ (q.float() * scale[:, None]).T
    return float((out - reference).pow(2).sum() / reference.pow(2).sum().clamp_min(1e-12))


def search_smoothing(
    x: torch.Tensor, weight: torch.Tensor, act_amax: torch.Tensor, amax_fn, alphas: list[float]
) -> SmoothingChoice:
    """Pick the alpha (or none) with the least W8A8 output error on the sample tokens ``x``.

    ``amax_fn(tensor) -> float`` is the range observer the quantizer will use, so the search scores
    exactly the clipping the final model gets.
    """
    weight = weight.detach().float()
    base = w8a8_relative_error(x, weight, amax_fn, None)
    best = SmoothingChoice(None, None, base, base)
    for alpha in alphas:
        smooth = 1.0 / smoothing_factors(act_amax, weight, alpha)
        error = w8a8_relative_error(x, weight, amax_fn, smooth)
        if error < best.error:
            best = SmoothingChoice(alpha, smooth, error, base)
    return best


# --- the pass -----------------------------------------------------------------------------------



class SmoothQuantConfig(PassConfig):
    alphas: list[Annotated[float, Field(ge=0, le=1)]] = Field(default_factory=lambda: [0.3, 0.4, 0.5, 0.6, 0.7, 0.8])


@PASSES.register("smoothquant")
class SmoothQuantPass(Pass):
    """Searches, per W8A8 INT8 layer, the migration strength that minimises the layer's W8A8 output
    error. The best factor depends on the scheme a layer ends up in, which a per-layer search only
    knows later, so this pass hands its search to the quantize pass, which folds the chosen factor
    into the weight (W·s) and one input multiplier (1/s)."""

    Config = SmoothQuantConfig
    stage = "migrate"
    statistics = ("samples",)
    produces = (Migrations,)
    before = ("quantize",)

    def search(self, layer: LayerInputs) -> SmoothingChoice:
        return search_smoothing(layer.sample, layer.weight, layer.channel_amax, layer.observe_amax, self.config.alphas)

    def apply(self, context) -> dict:
        context.results.setdefault(Migrations).searches[self.name] = self
        return {"applies_to": "W8A8 INT8 layers", "alphas": self.config.alphas}
