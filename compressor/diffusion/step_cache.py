"""DiT step caching with diffusers' own First Block Cache hooks (``diffusers.hooks.apply_first_block_cache``).

Adjacent sampling steps change the blocks' outputs little. At each denoiser call the first transformer block
runs; when its residual (output minus input) differs from the last fully computed step's by at most
``threshold`` (relative mean absolute difference), the other blocks are skipped and the residual they added
at that step is added again. ``threshold`` 0 computes every block of every step, exactly as without cache.

The hooks keep their state per cache context. ``DiTTransformer2DModel`` is not a ``CacheMixin``, so the model's
forward is wrapped here: each call runs in one context, and a call at a timestep no lower than the previous
one starts a new trajectory (sampling runs from the highest timestep down), which resets the cache.

Block forwards actually computed are counted (``block_evaluations``), the first block's included.
"""
from __future__ import annotations

import torch
from torch import nn

_CONTEXT = "denoise"


class StepCache:
    """The cache and the counters attached to one model (``model._step_cache``)."""

    def __init__(self, model: nn.Module, threshold: float, blocks: list[str]):
        self.model, self.threshold, self.blocks = model, threshold, list(blocks)
        self.block_evaluations = 0
        self.trajectories = 0
        self._last_timestep: float | None = None

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


def _counting(block: nn.Module, cache: StepCache):
    original = block.forward

    def forward(*args, **kwargs):
        cache.count()
        return original(*args, **kwargs)

    return forward


def apply_step_cache(model: nn.Module, blocks: list[str], threshold: float) -> StepCache:
    """Attach First Block Cache with ``threshold`` to a diffusers DiT whose transformer blocks are ``blocks``
    (module names; replacing any cache it has)."""
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache
    from diffusers.models.cache_utils import CacheMixin

    remove_step_cache(model)
    cache = StepCache(model, threshold, blocks)
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
