"""DiT step caching as a recipe pass (compressor/diffusion/step_cache.py: diffusers' First Block Cache).

With ``threshold`` given, that threshold is used at any sampling. Without it, the pass calibrates a threshold
for each of ``guidance_scales`` (and the recipe's own): it samples the calibration images (the recipe's
``calib_images``, classes in turn, its seed and steps) without cache at that guidance, then picks the largest
threshold on ``thresholds`` whose cached samples stay at ``min_psnr`` dB or more from them. Cached samples
drift further from the uncached ones as the threshold grows, so a bisection finds it. Guidance amplifies
what a skipped step gets wrong, so one guidance scale's threshold does not hold at a higher one. The model
the cache is measured against is the one the recipe has made so far (quantized, for ``step-cache-int8``).
The table, the steps and the scheduler are recorded with the checkpoint (``token_reduction``); loading
applies the recipe guidance's threshold, and sampling elsewhere picks from the table
(``StepCache.prepare``).
"""
from __future__ import annotations

import torch
from pydantic import Field, field_validator

from calibrators.sampling import sample
from compressor.diffusion.step_cache import apply_step_cache, remove_step_cache
from compressor.passes.base import PASSES, Pass, PassConfig
from compressor.passes.results import TokenReduction
from compressor.reduction import REDUCTIONS
from compressor.search import largest_passing

DEFAULT_THRESHOLDS = [round(0.025 * i, 3) for i in range(1, 21)]  # 0.025 … 0.5


DEFAULT_GUIDANCE_SCALES = [1.0, 1.5, 2.0, 3.0, 4.0]


class StepCacheConfig(PassConfig):
    """``threshold``: skip the blocks after the first when its residual changed by at most this fraction
    since the last computed step; none: per guidance scale of ``guidance_scales``, the largest of
    ``thresholds`` keeping ``min_psnr``."""

    threshold: float | None = Field(None, ge=0)
    min_psnr: float = Field(27.0, gt=0)
    thresholds: list[float] = Field(default_factory=lambda: list(DEFAULT_THRESHOLDS), min_length=1)
    guidance_scales: list[float] = Field(default_factory=lambda: list(DEFAULT_GUIDANCE_SCALES), min_length=1)

    @field_validator("guidance_scales")
    @classmethod
    def _at_least_one(cls, scales: list[float]) -> list[float]:
        if min(scales) < 1:
            raise ValueError(f"guidance scales must be >= 1, got {min(scales):g}")
        return scales


@REDUCTIONS.register("step_cache")
def apply_cache(handle, settings: dict) -> None:
    calibration = settings["calibration"] if "calibration" in settings else legacy_calibration(handle, settings)
    apply_step_cache(handle.model, handle.adapter.blocks(handle.model), float(settings["threshold"]), calibration)


def legacy_calibration(handle, settings: dict) -> dict | None:
    """Checkpoints written before the table was recorded: a searched threshold was calibrated at the recipe's
    guidance and steps only, which its record still says."""
    info = handle.info or {}
    searched = any(p.get("pass") == "step_cache" and p.get("searched") for p in info.get("passes", []))
    if not searched:
        return None
    sampling = info["recipe"]["calibration"]
    return {"thresholds": {str(float(sampling["guidance_scale"])): float(settings["threshold"])},
            "steps": sampling["sampling_steps"], "scheduler": type(handle.adapter.scheduler()).__name__}


def calibration_samples(handle, settings, threshold: float | None, guidance: float) -> tuple[torch.Tensor, float]:
    """(samples of the calibration images at ``guidance``, block evaluations per image) with the cache at
    ``threshold``."""
    adapter, model = handle.adapter, handle.model
    labels = torch.arange(settings.calib_images) % adapter.num_classes(model)
    cache = apply_step_cache(model, adapter.blocks(model), threshold) if threshold is not None else None
    try:
        images = sample(adapter.denoiser(model), adapter.scheduler(), labels, shape=adapter.latent_shape(model),
                        steps=settings.sampling_steps, guidance=guidance, seed=settings.seed,
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

        if cfg.threshold is not None:
            apply_step_cache(handle.model, handle.adapter.blocks(handle.model), cfg.threshold)
            context.results.put(TokenReduction({"method": "step_cache", "threshold": cfg.threshold, "calibration": None}))
            return {"threshold": cfg.threshold}
        scales = sorted({*cfg.guidance_scales, settings.guidance_scale})
        measured = {g: self.calibrate(handle, settings, g, psnr) for g in scales}
        table = {g: m["threshold"] for g, m in measured.items()}
        calibration = {"thresholds": {str(g): t for g, t in table.items()}, "steps": settings.sampling_steps,
                       "scheduler": type(handle.adapter.scheduler()).__name__}
        threshold = table[settings.guidance_scale]
        apply_step_cache(handle.model, handle.adapter.blocks(handle.model), threshold, calibration)
        context.results.put(TokenReduction({"method": "step_cache", "threshold": threshold, "calibration": calibration}))
        return {"threshold": threshold, "min_psnr": cfg.min_psnr, "calibration": calibration,
                "searched": {str(g): m["searched"] for g, m in measured.items()}}

    def calibrate(self, handle, settings, guidance: float, psnr) -> dict:
        """The largest candidate threshold keeping ``min_psnr`` at ``guidance`` (0 when none does)."""
        cfg = self.config
        reference, full = calibration_samples(handle, settings, None, guidance)
        measured: dict[float, dict] = {}

        def quality(t: float) -> dict:
            if t not in measured:
                images, evaluations = calibration_samples(handle, settings, t, guidance)
                measured[t] = {"psnr": psnr(reference, images) if not torch.equal(images, reference) else float("inf"),
                               "block_evaluations_ratio": evaluations / full}
            return measured[t]

        candidates = sorted(cfg.thresholds)
        # the last index whose PSNR holds (-1: none)
        last = largest_passing(-1, len(candidates) - 1, lambda i: quality(candidates[i])["psnr"] >= cfg.min_psnr)
        return {"threshold": candidates[last] if last >= 0 else 0.0,
                "searched": {str(t): {k: round(v, 4) for k, v in m.items()} for t, m in sorted(measured.items())}}
