"""DiT step caching as a recipe pass (compressor/diffusion/step_cache.py: diffusers' First Block Cache).

With ``threshold`` given, that threshold is used. Without it, the pass samples the calibration images (the
recipe's ``calib_images``, classes in turn, its seed, steps and guidance) without cache, then picks the
largest threshold on ``thresholds`` whose cached samples stay at ``min_psnr`` dB or more from them. Cached
samples drift further from the uncached ones as the threshold grows, so a bisection finds it. The model the
cache is measured against is the one the recipe has made so far (quantized, for ``step-cache-int8``).
The threshold is recorded with the checkpoint (``token_reduction``), and loading applies it again.
"""
from __future__ import annotations

import torch
from pydantic import Field

from calibrators.sampling import sample
from compressor.diffusion.step_cache import apply_step_cache, remove_step_cache
from compressor.passes.base import PASSES, Pass, PassConfig
from compressor.passes.results import TokenReduction
from compressor.reduction import REDUCTIONS
from compressor.search import largest_passing

DEFAULT_THRESHOLDS = [round(0.025 * i, 3) for i in range(1, 21)]  # 0.025 … 0.5


class StepCacheConfig(PassConfig):
    """``threshold``: skip the blocks after the first when its residual changed by at most this fraction
    since the last computed step; none: the largest of ``thresholds`` keeping ``min_psnr``."""

    threshold: float | None = Field(None, ge=0)
    min_psnr: float = Field(27.0, gt=0)
    thresholds: list[float] = Field(default_factory=lambda: list(DEFAULT_THRESHOLDS), min_length=1)


@REDUCTIONS.register("step_cache")
def apply_cache(handle, settings: dict) -> None:
    apply_step_cache(handle.model, handle.adapter.blocks(handle.model), float(settings["threshold"]))


def calibration_samples(handle, settings, threshold: float | None) -> tuple[torch.Tensor, float]:
    """(samples of the calibration images, block evaluations per image) with the cache at ``threshold``."""
    adapter, model = handle.adapter, handle.model
    labels = torch.arange(settings.calib_images) % adapter.num_classes(model)
    cache = apply_step_cache(model, adapter.blocks(model), threshold) if threshold is not None else None
    try:
        images = sample(adapter.denoiser(model), adapter.scheduler(), labels, shape=adapter.latent_shape(model),
                        steps=settings.sampling_steps, guidance=settings.guidance_scale, seed=settings.seed,
                        null_conditioning=adapter.null_conditioning(model, labels))
        evaluations = cache.block_evaluations / cache.trajectories if cache else settings.sampling_steps * len(
            adapter.blocks(model))
    finally:
        if cache is not None:
            remove_step_cache(model)
    return images, evaluations


@PASSES.register("step_cache")
class StepCachePass(Pass):
    Config = StepCacheConfig
    stage = "tokens"
    produces = (TokenReduction,)

    def apply(self, context) -> dict:
        handle, cfg, settings = context.handle, self.config, context.settings
        handle.adapter.require("timesteps", by="step caching (step_cache)")
        handle.adapter.require("class_conditional", by="step caching (step_cache)")
        from compressor.diffusion.quality import psnr  # it imports exporters, which import the passes

        measured: dict[float, dict] = {}
        if cfg.threshold is not None:
            threshold = cfg.threshold
        else:
            reference, full = calibration_samples(handle, settings, None)

            def quality(t: float) -> dict:
                if t not in measured:
                    images, evaluations = calibration_samples(handle, settings, t)
                    measured[t] = {"psnr": psnr(reference, images) if not torch.equal(images, reference) else float("inf"),
                                   "block_evaluations_ratio": evaluations / full}
                return measured[t]

            candidates = sorted(cfg.thresholds)
            # the last index whose PSNR holds (-1: none)
            last = largest_passing(-1, len(candidates) - 1, lambda i: quality(candidates[i])["psnr"] >= cfg.min_psnr)
            threshold = candidates[last] if last >= 0 else 0.0
        apply_step_cache(handle.model, handle.adapter.blocks(handle.model), threshold)
        context.results.put(TokenReduction({"method": "step_cache", "threshold": threshold}))
        return {"threshold": threshold, "min_psnr": cfg.min_psnr,
                "searched": {str(t): {k: round(v, 4) for k, v in m.items()} for t, m in sorted(measured.items())}}
