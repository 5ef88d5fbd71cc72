"""Run calibration batches through a model and hand each watched layer's real-token inputs to a callback."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm


def real_tokens(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[tokens, features]: the rows of ``x`` at real tokens (``mask`` over its leading dimensions, e.g.
    [batch, sequence] for text; one flag per sample means every row of that sample)."""
    tokens = x[mask] if x.shape[: mask.dim()] == mask.shape else x.reshape(-1, x.shape[-1])
    return tokens.reshape(-1, x.shape[-1])


@torch.no_grad()
def run_with_input_hooks(
    model: nn.Module,
    batches: list[dict[str, torch.Tensor]],
    layer_names: list[str],
    callback: Callable[[str, torch.Tensor], None],
    forward: Callable[[nn.Module, dict], torch.Tensor],
    token_mask: Callable[[dict], torch.Tensor],
    desc: str = "calibrating",
) -> None:
    """``callback(name, x)`` gets a [tokens, features] tensor of the layer's input at real tokens only."""
    modules = dict(model.named_modules())
    current_mask: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(_module, args):
            callback(name, real_tokens(args[0], current_mask["mask"]).float())

        return hook

    handles = [modules[name].register_forward_pre_hook(hook_for(name)) for name in layer_names]
    try:
        for batch in tqdm(batches, desc=desc, unit="batch", leave=False):
            current_mask["mask"] = token_mask(batch)
            forward(model, batch)
    finally:
        for handle in handles:
            handle.remove()
