"""DiT step caching with diffusers' own First Block Cache hooks (``diffusers.hooks.apply_first_block_cache``).

Adjacent sampling steps change the blocks' outputs little. At each denoiser call the first transformer block
runs; when its residual (output minus input) differs from the last fully computed step's by at most
``threshold`` (relative mean absolute difference), the other blocks are skipped and the residual they added
at that step is added again. ``threshold`` 0 computes every block of every step, exactly as without cache.

The hooks keep their state per cache context. ``DiTTransformer2DModel`` is not a ``CacheMixin``, so the model's
forward is wrapped here: each call runs in one context, and a call at a timestep no lower than the previous
one starts a new trajectory (sampling runs from the highest timestep down), which resets the cache.

Block forwards actually computed are counted (``block_evaluations``), the first block's included.

How much a cached residual may drift depends on how it is sampled: guidance scales the difference between
the conditional and unconditional outputs, so a skip that is harmless at one guidance scale shows at a
higher one. A calibrated cache therefore carries a table of thresholds per guidance scale, with the steps
and scheduler it was measured under (``calibration``), and ``StepCache.prepare`` picks the threshold for the
sampling about to run, warning when that sampling lies outside what was calibrated.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import nn

_CONTEXT = "denoise"


class StepCache:
    """The cache and the counters attached to one model (``model._step_cache``)."""

    def __init__(self, model: nn.Module, threshold: float, blocks: list[str], calibration: dict | None = None):
        self.model, self.threshold, self.blocks = model, threshold, list(blocks)
        # {"thresholds": {guidance: threshold}, "steps": int, "scheduler": str}; None: a threshold set by hand
        self.calibration = calibration
        self.block_evaluations = 0
        self.trajectories = 0
        self._last_timestep: float | None = None

    def set_threshold(self, threshold: float) -> None:
        from diffusers.hooks import HookRegistry
        from diffusers.hooks.first_block_cache import FBCHeadBlockHook

        registry = HookRegistry.check_if_exists_or_initialize(self.model.get_submodule(self.blocks[0]))
        for hook in registry.hooks.values():
            if isinstance(hook, FBCHeadBlockHook):  # the head block's hook decides the skips
                hook.threshold = threshold
        self.threshold = threshold

    def prepare(self, guidance: float, steps: int, scheduler: str | None = None) -> float:
        """Use the calibrated threshold for sampling at ``guidance`` over ``steps`` steps (returned), and warn
        when that sampling differs from what the calibration measured."""
        if self.calibration is None:
            return self.threshold
        table = {float(g): float(t) for g, t in self.calibration["thresholds"].items()}
        threshold, covered = threshold_for_guidance(table, guidance)
        unchecked = []
        if not covered:
            span = f"{min(table):g}" if len(table) == 1 else f"{min(table):g} to {max(table):g}"
            unchecked.append(f"guidance {guidance:g} (calibrated {span})")
        if steps != self.calibration["steps"]:
            unchecked.append(f"{steps} steps (calibrated {self.calibration['steps']})")
        if scheduler is not None and scheduler != self.calibration.get("scheduler", scheduler):
            unchecked.append(f"scheduler {scheduler} (calibrated {self.calibration['scheduler']})")
        if unchecked:
            warnings.warn(f"step cache: sampling at {', '.join(unchecked)}; threshold {threshold:g} is used "
                          f"but its quality there was never measured", stacklevel=2)
        self.set_threshold(threshold)
        return threshold

    def count(self) -> None:
        self.block_evaluations += 1

    def reset_counts(self) -> None:
        self.block_evaluations = self.trajectories = 0

    def before_call(self, timestep) -> None:
        from diffusers.hooks import HookRegistry

        t = float(torch.as_tensor(timestep).reshape(-1)[0])
        if self._last_timestep is None or t >= self._last_timestep:  # a new trajectory: forget the last one's
            HookRegistry.check_if_exists_or_initialize(self.model).reset_stateful_hooks()
            self.trajectories += 1
        self._last_timestep = t


def threshold_for_guidance(table: Mapping[float, float], guidance: float) -> tuple[float, bool]:
    """(threshold, covered) for sampling at ``guidance`` from thresholds calibrated at the table's guidance
    scales. Between two calibrated scales the smaller of their thresholds holds, since neither scale's
    quality was measured there; outside them, the nearest end's threshold, with ``covered`` False."""
    scales = sorted(table)
    if guidance in table:
        return table[guidance], True
    if guidance < scales[0] or guidance > scales[-1]:
        return table[scales[0] if guidance < scales[0] else scales[-1]], False
    upper = next(i for i, g in enumerate(scales) if g > guidance)
    return min(table[scales[upper - 1]], table[scales[upper]]), True


def _counting(block: nn.Module, cache: StepCache):
    original = block.forward

    def forward(*args, **kwargs):
        cache.count()
        return original(*args, **kwargs)

    return forward


def apply_step_cache(model: nn.Module, blocks: list[str], threshold: float,
                     calibration: dict | None = None) -> StepCache:
    """Attach First Block Cache with ``threshold`` to a diffusers DiT whose transformer blocks are ``blocks``
    (module names; replacing any cache it has). ``calibration``: the thresholds per guidance scale that
    ``StepCache.prepare`` chooses from."""
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache
    from diffusers.models.cache_utils import CacheMixin

    remove_step_cache(model)
    cache = StepCache(model, threshold, blocks, calibration)
    for block in (model.get_submodule(name) for name in blocks):
        block.forward = _counting(block, cache)  # under the hooks: counts only what really runs
    apply_first_block_cache(model, FirstBlockCacheConfig(threshold=threshold))
    original = model.forward

    def forward(hidden_states, timestep=None, *args, **kwargs):
        cache.before_call(timestep)
        # diffusers' public cache context, called on a model that does not mix it in itself
        with CacheMixin.cache_context(model, _CONTEXT):
            return original(hidden_states, timestep, *args, **kwargs)

    model.forward = forward
    model._step_cache = cache
    return cache


def remove_step_cache(model: nn.Module) -> None:
    """Back to the plain model: hooks, counters and wrappers removed."""
    cache = getattr(model, "_step_cache", None)
    if cache is None:
        return
    for block in (model.get_submodule(name) for name in cache.blocks):
        registry = getattr(block, "_diffusers_hook", None)
        if registry is not None:
            for name in list(registry.hooks):
                registry.remove_hook(name, recurse=False)
        block.__dict__.pop("forward", None)
        block.__dict__.pop("_diffusers_hook", None)
    model.__dict__.pop("forward", None)
    model.__dict__.pop("_diffusers_hook", None)  # the root registry caches the blocks' registries
    del model._step_cache


def step_cache_of(model: nn.Module) -> StepCache | None:
    return getattr(model, "_step_cache", None)
