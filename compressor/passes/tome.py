"""Token merging (ToMe) as a recipe pass: merge r tokens per block in ViTs and BERT-family text encoders,
or around the attention and MLP of each Diffusion Transformer block (ToMeSD-style).

With ``r`` given, that schedule is applied. Without it, the pass finds the largest r whose measured output
error on the calibration inputs (against the original model, so a quantized model's own error counts too)
stays within ``max_error`` (the error grows with r, so a bisection finds it in a few measurements), and
keeps ``margin`` below it: r × (1 + margin) is the largest that holds. The
schedule is recorded with the checkpoint (``token_reduction``), and loading applies it again.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from compressor.errors import CompressorError
from compressor.passes.base import PASSES, Pass, PassConfig
from compressor.fidelity import pooled_error
from compressor.passes.results import TokenReduction
from compressor.reduction import REDUCTIONS
from compressor.search import largest_passing
from compressor.tokens.tome import patch_token_merging, tome_schedule


class TomeConfig(PassConfig):
    """``r``: tokens merged per block (``decreasing``: 2r in the first block down to 0 in the last); none:
    the largest r within ``max_error``, the relative squared error of the model output (pooled, for a
    sentence encoder). ``protected``: leading tokens never merged (CLS)."""

    r: int | None = Field(None, ge=0)
    # decreasing: merging early, where tokens are most redundant, did better than constant r on both speed
    # and accuracy (benchmarks/vit_tome.py --sweep-schedule; see docs/results.md)
    schedule: Literal["constant", "decreasing"] = "decreasing"
    max_error: float = Field(0.015, gt=0)
    # The searched r leaves room: r × (1 + margin) must stay within max_error too. Where the error starts to
    # climb steeply moves from model to model and input to input, and an r picked at the edge of one
    # model's budget falls over it on another.
    margin: float = Field(0.25, ge=0)
    protected: int = Field(1, ge=0)
    # ViTs: also merge on the patch embeddings before the first block, twice the first block's count (text
    # encoders and DiTs merge inside their blocks only). The first block's attention is the most expensive,
    # so merging before it makes the `tome` preset faster within the same error budget (benchmarks/vit_tome.py;
    # see docs/results.md).
    merge_embeddings: bool = True


@REDUCTIONS.register("tome")
def apply_tome(handle, settings: dict) -> None:
    patch_token_merging(handle.model, handle.adapter, list(settings["schedule"]), int(settings.get("protected", 1)),
                        int(settings.get("embeddings", 0)))


@PASSES.register("tome")
class TomePass(Pass):
    Config = TomeConfig
    stage = "tokens"
    produces = (TokenReduction,)

    def apply(self, context) -> dict:
        handle, cfg = context.handle, self.config
        layout = handle.adapter.require("token_merging", by="token merging (tome)")
        blocks = len(handle.adapter.blocks(handle.model))
        measured: dict[int, float] = {}
        on_embeddings = self._on_embeddings(layout, type(handle.model).__name__)

        def embeddings(r: float) -> int:
            return 2 * tome_schedule(r, blocks, cfg.schedule)[0] if on_embeddings else 0

        def error(r: float) -> float:
            if r not in measured:
                patch_token_merging(handle.model, handle.adapter, tome_schedule(r, blocks, cfg.schedule), cfg.protected,
                                    embeddings(r))
                with torch.no_grad():
                    measured[r] = pooled_error(handle, context.sensitivity_batches, context.references)
            return measured[r]

        if cfg.r is not None:
            r = cfg.r
        else:
            # A decreasing schedule is searched in half steps of r, one token at a time in the first block:
            # near its edge the error rises steeply (see the ViT sweep in docs/results.md).
            per_r = 2 if cfg.schedule == "decreasing" else 1
            edge = largest_passing(0, self._largest_r(context, on_embeddings) * per_r,
                                   lambda step: error(step / per_r) <= cfg.max_error)
            steps = int(edge / (1 + cfg.margin))
            r = steps // per_r if steps % per_r == 0 else steps / per_r
        schedule = tome_schedule(r, blocks, cfg.schedule)
        patch_token_merging(handle.model, handle.adapter, schedule, cfg.protected, embeddings(r))
        settings = {"method": "tome", "schedule": schedule, "protected": cfg.protected}
        if on_embeddings:
            settings["embeddings"] = embeddings(r)
        context.results.put(TokenReduction(settings))
        return {"r": r, "edge_r": None if cfg.r is not None else edge / per_r, "schedule": schedule, "embeddings": embeddings(r), "output_error": error(r),
                "searched": {str(k): round(v, 6) for k, v in sorted(measured.items())}}

    def _on_embeddings(self, layout, model_name: str) -> bool:
        if not self.config.merge_embeddings or layout.patch_embeddings:
            return self.config.merge_embeddings
        if "merge_embeddings" in self.config.model_fields_set:  # asked for, not the default
            raise CompressorError(f"tome: merge_embeddings is for Vision Transformers; {model_name} "
                                  "merges inside its blocks only")
        return False

    def _largest_r(self, context, on_embeddings: bool) -> int:
        """The most tokens a block can merge: half the longest calibration input, less the protected ones."""
        tokens = max(context.handle.adapter.forward_tokens(context.handle.model, batch)
                     for batch in context.sensitivity_batches)
        largest = max(0, (tokens + 1) // 2 - (self.config.protected + 1) // 2)
        first = 2 if self.config.schedule == "decreasing" else 1  # the first block merges 2r (or r)
        return largest // (2 * first if on_embeddings else first)  # the embeddings twice that
