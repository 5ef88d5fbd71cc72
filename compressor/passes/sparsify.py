"""Weight sparsity: 2:4 (what NVIDIA's sparse tensor cores take) or an unstructured fraction.

Layers are pruned block by block, each block calibrated on the inputs the already-pruned blocks
produce. ``sparsegpt`` chooses the mask by OBS saliency and updates the kept weights to make up for
the removed ones (sparsegpt.py); ``wanda`` keeps the largest |W|·‖x‖ and updates nothing. The masks
are left for later passes (a ``Sparsity`` result): quantization keeps pruned weights exactly
zero and does not rotate sparse layers. With ``dense_budget``, the layers whose sparsity costs the
model output most stay dense, up to that fraction of the layers' weights.
"""
from __future__ import annotations

from typing import Literal, Union

import torch
from pydantic import Field, field_validator
from torch import nn

from compressor.numerics.sparsity import nm_mask, parse_sparsity, unstructured_mask, wanda_scores
from compressor.passes.base import PASSES, Pass, PassConfig
from compressor.passes.plan import matches
from compressor.passes.results import Sparsity
from compressor.passes.precision_search import measure_sensitivity
from compressor.passes.sparsegpt import sparsegpt_prune
from compressor.fidelity import output_error


class SparsifyConfig(PassConfig):
    """``target``: "2:4" (at most 2 nonzeros in every 4 consecutive input weights) or the fraction of
    weights set to zero, e.g. 0.5. ``exclude``: module-name patterns left dense."""

    target: Union[str, float] = "2:4"
    method: Literal["sparsegpt", "wanda"] = "sparsegpt"
    dense_budget: float = Field(0.0, ge=0, lt=1)
    exclude: list[str] = Field(default_factory=list)
    block_size: int = Field(128, ge=4)
    damp: float = Field(0.01, gt=0, lt=1)

    @field_validator("target")
    @classmethod
    def _target(cls, value):
        parse_sparsity(value)  # ValueError with the reason
        return value


def sparse_copy(linear: nn.Linear, weight: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias)
    return layer


def pattern_name(target) -> str:
    parsed = parse_sparsity(target)
    return f"{parsed[0]}:{parsed[1]}" if isinstance(parsed, tuple) else "unstructured"


@PASSES.register("sparsify")
class SparsifyPass(Pass):
    Config = SparsifyConfig
    stage = "prune"
    statistics = ("hessians",)
    produces = (Sparsity,)

    def prune_layer(self, linear: nn.Linear, hessian: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        config, target = self.config, parse_sparsity(self.config.target)
        weight = linear.weight.detach().float()
        if config.method == "sparsegpt":
            return sparsegpt_prune(weight, hessian, target, config.block_size, config.damp)
        scores = wanda_scores(weight, hessian.diagonal().clamp_min(0).sqrt().float())  # ‖x_j‖ ∝ √H_jj
        mask = nm_mask(scores, *target) if isinstance(target, tuple) else unstructured_mask(scores, target)
        return weight * mask, mask

    def apply(self, context) -> dict:
        handle, config = context.handle, self.config
        model, adapter = handle.model, handle.adapter
        target = parse_sparsity(config.target)
        layers = [n for n in adapter.quantizable_layers(model)
                  if not matches(n, (*adapter.keep_float, *config.exclude))]
        if isinstance(target, tuple):
            skipped = {n: f"in_features not a multiple of {target[1]}" for n in layers
                       if model.get_submodule(n).in_features % target[1]}
            layers = [n for n in layers if n not in skipped]
        else:
            skipped = {}
        blocks = adapter.blocks(model)
        order = [[n for n in layers if n.startswith(b + ".")] for b in blocks]
        order.append([n for n in layers if not any(n.startswith(b + ".") for b in blocks)])
        dense, masks = {}, {}
        for block_layers in [b for b in order if b]:
            # calibrated on what the already-pruned blocks feed this one
            context.calibration.require(block_layers, samples=False, hessians=True)
            for name in block_layers:
                linear = model.get_submodule(name)
                weight, mask = self.prune_layer(linear, context.calibration.hessian(name))
                dense[name], masks[name] = linear, mask
                context.replace_module(name, sparse_copy(linear, weight))
        kept_dense = self._keep_dense(context, dense, masks) if config.dense_budget > 0 else []
        for name in kept_dense:
            context.replace_module(name, dense.pop(name))
            masks.pop(name)
        context.results.put(Sparsity(pattern_name(config.target), masks))
        per_layer = {n: round(1 - float(m.float().mean()), 4) for n, m in masks.items()}
        weights = {n: m.numel() for n, m in masks.items()}
        total = sum(model.get_submodule(n).weight.numel() for n in layers) or 1
        return {
            "pattern": pattern_name(config.target), "method": config.method,
            "sparsity": per_layer,
            "overall": round(sum(per_layer[n] * weights[n] for n in per_layer) / total, 4),
            "dense": kept_dense, "skipped": skipped,
        }

    def _keep_dense(self, context, dense: dict, masks: dict) -> list[str]:
        """The layers whose dense weights lower the output error most per weight, within the budget."""
        handle = context.handle
        baseline = output_error(handle, context.sensitivity_batches, context.references)
        errors = measure_sensitivity(handle, {n: {"dense": dense[n]} for n in dense},
                                     context.sensitivity_batches, context.references)
        gain = {n: (baseline - errors[n]["dense"]) / masks[n].numel() for n in dense}
        budget = self.config.dense_budget * sum(m.numel() for m in masks.values())
        chosen, spent = [], 0
        for name in sorted(gain, key=gain.get, reverse=True):
            if gain[name] > 0 and spent + masks[name].numel() <= budget:
                chosen.append(name)
                spent += masks[name].numel()
        return chosen
