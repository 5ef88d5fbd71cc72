"""Token merging (ToMe) as a recipe pass: merge r tokens per block in ViTs and BERT-family text encoders,
or around the attention and MLP of each Diffusion Transformer block (ToMeSD-style).

With ``r`` given, that schedule is applied. Without it, the pass picks the largest r whose measured output
error on the calibration inputs (against the original model, so a quantized model's own error counts too)
stays within ``max_error``; the error grows with r, so a bisection finds it in a few measurements. The
schedule is recorded with the checkpoint (``token_reduction``), and loading applies it again.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from compressor.errors import CompressorError
from compressor.passes.base import PASSES, Pass, PassConfig
from compressor.passes.fallback import pooled_error
from compressor.reduction import REDUCTIONS
from compressor.tokens.tome import block_count, patch_token_merging, tome_schedule


class TomeConfig(PassConfig):
    """``r``: tokens merged per block (the first block's count for ``decreasing``); none: the largest r
    within ``max_error``, the relative squared error of the model output (pooled, for a sentence encoder).
    ``protected``: leading tokens never merged (CLS)."""

    r: int | None = Field(None, ge=0)
    # decreasing: measured on the MNIST ViT, 1.79× at -0.2 top-1 against 1.66× at -0.3 for constant r
    schedule: Literal["constant", "decreasing"] = "decreasing"
    max_error: float = Field(0.015, gt=0)
    protected: int = Field(1, ge=0)


@REDUCTIONS.register("tome")
def apply_tome(handle, settings: dict) -> None:
    patch_token_merging(handle.model, list(settings["schedule"]), int(settings.get("protected", 1)))


@PASSES.register("tome")
class TomePass(Pass):
    Config = TomeConfig
    stage = "tokens"

    def apply(self, context) -> dict:
        handle, cfg = context.handle, self.config
        blocks = block_count(handle.model)
        measured: dict[int, float] = {}

        def error(r: int) -> float:
            if r not in measured:
                patch_token_merging(handle.model, tome_schedule(r, blocks, cfg.schedule), cfg.protected)
                with torch.no_grad():
                    measured[r] = pooled_error(handle, context.sensitivity_batches, context.references)
            return measured[r]

        if cfg.r is not None:
            r = cfg.r
        else:
            low, high = 0, self._largest_r(context)
            while low < high:  # the largest r with error(r) <= max_error
                middle = (low + high + 1) // 2
                low, high = (middle, high) if error(middle) <= cfg.max_error else (low, middle - 1)
            r = low
        schedule = tome_schedule(r, blocks, cfg.schedule)
        patch_token_merging(handle.model, schedule, cfg.protected)
        context.shared["token_reduction"] = {"method": "tome", "schedule": schedule, "protected": cfg.protected}
        return {"r": r, "schedule": schedule, "output_error": error(r),
                "searched": {str(k): round(v, 6) for k, v in sorted(measured.items())}}

    def _largest_r(self, context) -> int:
        """The most tokens a block can merge: half the longest calibration input, less the protected ones."""
        tokens = max(context.handle.adapter.forward_tokens(context.handle.model, batch)
                     for batch in context.sensitivity_batches)
        largest = max(0, (tokens + 1) // 2 - (self.config.protected + 1) // 2)
        return largest // 2 if self.config.schedule == "decreasing" else largest  # its first block merges 2r
