"""Structured pruning: remove whole attention heads and FFN channels under a budget of Linear MACs.

Within a block, units are ranked by the output variance they add to the Linear they feed (their mean
contribution is folded into its bias, so only the variance is lost). Across blocks, first-order
scores mislead: removing a block's outlier-writing FFN channels shifts every later LayerNorm, which a
linearized (Fisher) score underrates by far, and a cut ranked that way lost more accuracy than a
uniform one. So each group's model output error is measured at several
kept fractions, with the rest of the model intact, on what the user consumes (the pooled sentence
embedding where the adapter pools, which is what similarity is scored on), and the levels with the
least total error within the budget are chosen by the multiple-choice knapsack the precision search uses (heads and channels
compete for the same MACs). Then the units are removed physically and each consumer Linear is refit
by regularized least squares, checked on calibration batches the fit did not see (reconstruct.py).
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Literal

import torch
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from calibrators.collect import real_tokens
from compressor.passes.base import PASSES, Pass, PassConfig
from compressor.fidelity import pooled_error
from compressor.passes.precision_search import Option, choose_schemes
from compressor.passes.reconstruct import GramStats, reconstruct
from compressor.passes.results import PrunedStructure
from compressor.structure import keep_units, linear_macs, structure_record


class StructuredPruneConfig(PassConfig):
    """``keep_macs``: the fraction of the prunable Linears' multiply-accumulates to keep (heads and
    channels compete for it). ``ratios`` instead removes a fixed fraction of each kind, e.g.
    ``{channels: 0.25}``; ``rounds``: steps to the budget, each measured on the model pruned so far.
    ``reconstruct`` refits each consumer Linear with
    the ridge strength (``alphas``, × the mean input energy) chosen on the ``check_fraction`` of
    calibration batches the fit does not see."""

    keep_macs: float = Field(0.6, gt=0, le=1)
    rounds: int = Field(3, ge=1)
    ratios: dict[Literal["heads", "channels"], float] = Field(default_factory=dict)
    reconstruct: bool = True
    alphas: list[float] = Field(default_factory=lambda: [0.001, 0.01, 0.1, 1.0])
    check_fraction: float = Field(0.25, gt=0, lt=1)
    min_heads: int = Field(1, ge=1)
    min_channels: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _fractions(self):
        for kind, ratio in self.ratios.items():
            if not 0 <= ratio < 1:
                raise ValueError(f"ratios: the fraction of {kind} removed must be in [0, 1), got {ratio}")
        if any(a <= 0 for a in self.alphas):
            raise ValueError(f"alphas: ridge strengths must be > 0, got {self.alphas}")
        return self


LEVELS = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125)  # kept fractions tried per group


@contextmanager
def masked(model, groups, masks: dict[str, torch.Tensor], means: dict[str, torch.Tensor]):
    """Feed each group's consumer its kept units' inputs and the removed units' mean input, which is
    what removing them and folding their mean contribution into the bias computes."""
    def hook_for(group):
        def hook(_module, args):
            keep = masks[group.name].repeat_interleave(group.unit_size)
            return (args[0] * keep + means[group.consumer] * (1 - keep),)
        return hook

    handles = [model.get_submodule(g.consumer).register_forward_pre_hook(hook_for(g)) for g in groups]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def unit_energy(weight: torch.Tensor, inputs: torch.Tensor, unit_size: int) -> torch.Tensor:
    """E‖W_u (x_u − μ_u)‖² per unit u: the output variance a unit adds to its consumer, i.e. the error of
    removing it once its mean is folded into the bias."""
    centred = (inputs - inputs.mean(0)).double()
    covariance = centred.T @ centred / len(inputs)
    w = weight.double()
    products = (w.T @ w) * covariance  # Σ_o W_oa W_ob · Cov_ab, summed over each unit's (a, b) block
    units = len(covariance) // unit_size
    blocks = products.reshape(units, unit_size, units, unit_size).diagonal(dim1=0, dim2=2)
    return blocks.sum(dim=(0, 1))


def ranked_masks(group, order: torch.Tensor, kept: int) -> torch.Tensor:
    mask = torch.zeros(len(order))
    mask[order[:kept]] = 1.0
    return mask


def level_units(group, total: int, current: int, config) -> list[int]:
    """Kept-unit counts tried for a group: the fixed fractions of its size, at most what it keeps now."""
    floor = {"heads": config.min_heads, "channels": config.min_channels}[group.kind]
    return sorted({max(floor, min(current, round(level * total))) for level in LEVELS} | {current}, reverse=True)


def choose_levels(handle, groups, orders, means, context, config, error=None) -> tuple[dict[str, int], dict]:
    """Units kept per group. In each of ``config.rounds`` rounds the budget tightens by an equal step;
    every group's extra output error at each smaller level is measured with the rest of the model as
    pruned so far, and the levels with the least total extra error within the round's budget are chosen
    (the multiple-choice knapsack of the per-layer precision search; heads and channels compete)."""
    model = handle.model
    error = error or (lambda: pooled_error(handle, context.sensitivity_batches, context.references))
    full = {g.name: len(orders[g.name]) for g in groups}
    cost = {g.name: g.macs_per_unit(model) for g in groups}
    kept = dict(full)
    masks = {g.name: torch.ones(full[g.name]) for g in groups}
    options: dict = {}
    for step in range(1, config.rounds + 1):
        with torch.no_grad(), masked(model, groups, masks, means):
            base = error()
            # with per-kind ratios, kinds without a ratio stay whole and need no trials
            pruned = [g for g in groups if not config.ratios or g.kind in config.ratios]
            trials = [(g, k) for g in pruned for k in level_units(g, full[g.name], kept[g.name], config)]
            options = {}
            for group, units in tqdm(trials, desc=f"pruning: sensitivity {step}/{config.rounds}", unit="trial", leave=False):
                extra = 0.0
                if units < kept[group.name]:
                    masks[group.name] = ranked_masks(group, orders[group.name], units)
                    extra = error() - base
                    masks[group.name] = ranked_masks(group, orders[group.name], kept[group.name])
                options.setdefault(group.name, []).append(Option(str(units), units / full[group.name], extra))
        fraction = step / config.rounds
        if config.ratios:
            chosen = {}
            by_kind: dict[str, list[str]] = {}
            for g in groups:
                by_kind.setdefault(g.kind, []).append(g.name)
            for kind, ratio in config.ratios.items():
                names = by_kind.get(kind, [])
                chosen.update(choose_schemes({n: options[n] for n in names}, {n: full[n] for n in names},
                                             1 - ratio * fraction))
        else:
            chosen = choose_schemes(options, {g.name: full[g.name] * cost[g.name] for g in groups},
                                    1 - (1 - config.keep_macs) * fraction)
        kept.update({name: int(units) for name, units in chosen.items()})
        masks = {g.name: ranked_masks(g, orders[g.name], kept[g.name]) for g in groups}
    return kept, options


def consumer_statistics(handle, original, batches, consumer: str, check_every: int) -> tuple[GramStats, GramStats]:
    """Gram statistics of (the pruned model's input to ``consumer``, the original layer's output), on
    fit batches and on check batches (every ``check_every``-th)."""
    adapter = handle.adapter
    fit, check = GramStats(), GramStats()
    captured: dict = {}
    pruned_hook = handle.model.get_submodule(consumer).register_forward_pre_hook(
        lambda _m, args: captured.__setitem__("x", args[0]))
    original_hook = original.get_submodule(consumer).register_forward_hook(
        lambda _m, _args, out: captured.__setitem__("y", out))
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                adapter.forward(handle.model, batch)
                adapter.forward(original, batch)
                mask = adapter.token_mask(batch)
                # every check_every-th batch, and the last one when there are fewer
                is_check = (i + 1) % check_every == 0 or (len(batches) < check_every and i == len(batches) - 1)
                stats = check if is_check else fit
                stats.add(real_tokens(captured["x"], mask), real_tokens(captured["y"], mask))
    finally:
        pruned_hook.remove()
        original_hook.remove()
    return fit, check


@PASSES.register("prune_structured")
class StructuredPrunePass(Pass):
    """Remove attention heads and FFN channels under a MACs budget; refit what they fed."""

    Config = StructuredPruneConfig
    stage = "prune"
    statistics = ("batches",)
    produces = (PrunedStructure,)

    def apply(self, context) -> dict:
        handle, config = context.handle, self.config
        model, adapter = handle.model, handle.adapter
        adapter.require("prunable", by="structured pruning (prune_structured)")
        groups = adapter.prunable_groups(model)
        batches = context.calibration.batches
        linears = [n for g in groups for n in g.linears()]
        macs_before = linear_macs(model, linears)
        original = copy.deepcopy(model) if config.reconstruct else None
        consumers = [g.consumer for g in groups]
        context.calibration.require(consumers)
        samples = {c: context.calibration.samples(c) for c in consumers}
        means = {c: samples[c].mean(0) for c in consumers}
        orders = {g.name: unit_energy(model.get_submodule(g.consumer).weight.detach(), samples[g.consumer],
                                      g.unit_size).argsort(descending=True) for g in groups}
        kept, options = choose_levels(handle, groups, orders, means, context, config)
        units = {g.name: (kept[g.name], len(orders[g.name])) for g in groups}
        for group in groups:
            consumer = model.get_submodule(group.consumer)
            removed = ranked_masks(group, orders[group.name], kept[group.name]).repeat_interleave(group.unit_size) == 0
            with torch.no_grad():  # the removed units' mean contribution moves into the bias
                consumer.bias += consumer.weight[:, removed] @ means[group.consumer][removed]
            keep_units(model, group, orders[group.name][: kept[group.name]].tolist(), context.replace_module)
        reconstruction = {}
        if config.reconstruct and len(batches) < 2:
            reconstruction = {"skipped": "one calibration batch: nothing left to check a refit on"}
        elif config.reconstruct:
            check_every = max(2, round(1 / config.check_fraction))
            for group in tqdm(groups, desc="pruning: reconstruction", unit="layer", leave=False):
                consumer = model.get_submodule(group.consumer)
                fit, check = consumer_statistics(handle, original, batches, group.consumer, check_every)
                start = torch.cat([consumer.weight.detach(), consumer.bias.detach()[:, None]], dim=1)
                refit, report = reconstruct(fit, check, start, config.alphas)
                if refit is not None:
                    with torch.no_grad():
                        consumer.weight.copy_(refit[:, :-1])
                        consumer.bias.copy_(refit[:, -1])
                    context.calibration.invalidate(group.consumer)
                reconstruction[group.consumer] = report
        context.results.put(PrunedStructure(structure_record(model, groups)))
        macs_after = linear_macs(model, linears)
        return {
            "budget": {"ratios": dict(config.ratios)} if config.ratios else {"keep_macs": config.keep_macs},
            "macs_per_token_before": macs_before, "macs_per_token_after": macs_after,
            "kept_macs": round(macs_after / macs_before, 4),
            "units": {name: {"kept": k, "of": total, "error_by_kept": {o.scheme: round(o.error, 6) for o in options.get(name, [])}}
                      for name, (k, total) in units.items()},
            "removed": {kind: sum(t - k for g, (k, t) in units.items() if _kind(groups, g) == kind)
                        for kind in ("heads", "channels")},
            "reconstruction": reconstruction,
        }


def _kind(groups, name: str) -> str:
    return next(g.kind for g in groups if g.name == name)
