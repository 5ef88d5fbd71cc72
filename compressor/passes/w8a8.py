"""W8A8 post-training quantization of Linear layers with static per-tensor input scales."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from calibrators.collect import run_with_input_hooks
from calibrators.observers import make_observer
from compressor.int8_linear import Int8Linear
from compressor.passes.smoothquant import search_smoothing
from compressor.recipe import Recipe


@dataclass
class LayerRecord:
    name: str
    format: str = "int8"
    input_amax: float = 0.0
    smoothing_alpha: float | None = None
    error_unsmoothed: float = 0.0
    error: float = 0.0
    fallback_gain: float | None = None
    note: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class QuantizationPlan:
    layers: list[LayerRecord] = field(default_factory=list)

    def by_name(self) -> dict[str, LayerRecord]:
        return {layer.name: layer for layer in self.layers}


def _observer_options(recipe: Recipe) -> dict:
    return {"percentile": recipe.percentile} if recipe.observer == "percentile" else {}


def observe_amax(recipe: Recipe, x: torch.Tensor) -> float:
    observer = make_observer(recipe.observer, **_observer_options(recipe))
    observer.observe(x)
    return float(observer.compute_amax())


def select_layers(names: list[str], exclude: list[str]) -> tuple[list[str], list[str]]:
    kept = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in exclude)]
    return [n for n in names if n not in kept], kept


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


class _TokenSampler:
    """Keeps per-channel |x| maxima over all tokens and a uniform random sample of token rows."""

    def __init__(self, limit: int, seed: int):
        self.limit, self.generator = limit, torch.Generator().manual_seed(seed)
        self.amax: dict[str, torch.Tensor] = {}
        self.rows: dict[str, list[torch.Tensor]] = {}
        self.seen: dict[str, int] = {}

    def __call__(self, name: str, x: torch.Tensor) -> None:
        amax = x.abs().amax(dim=0)
        self.amax[name] = torch.maximum(self.amax[name], amax) if name in self.amax else amax
        self.rows.setdefault(name, []).append(x[torch.rand(len(x), generator=self.generator) < 0.5])
        self.seen[name] = self.seen.get(name, 0) + len(x)

    def sample(self, name: str) -> torch.Tensor:
        rows = torch.cat(self.rows[name])
        if len(rows) > self.limit:
            rows = rows[torch.randperm(len(rows), generator=self.generator)[: self.limit]]
        return rows


def quantize_w8a8(handle, calib_batches: list[dict], recipe: Recipe) -> QuantizationPlan:
    """Calibrate, search smoothing, and swap the eligible Linear layers for Int8Linear in place."""
    model, adapter = handle.model, handle.adapter
    names, excluded = select_layers(adapter.quantizable_layers(model), recipe.exclude)
    plan = QuantizationPlan([LayerRecord(n, "float", note="excluded by recipe") for n in excluded])
    hooks = dict(forward=adapter.forward, token_mask=adapter.token_mask)

    smooth: dict[str, torch.Tensor | None] = {n: None for n in names}
    records = {n: LayerRecord(n) for n in names}
    if recipe.smoothquant:
        sampler = _TokenSampler(recipe.search_tokens, recipe.seed)
        run_with_input_hooks(model, calib_batches, names, sampler, desc="calibration: outliers", **hooks)
        for name in tqdm(names, desc="smoothing search", unit="layer", leave=False):
            weight = model.get_submodule(name).weight
            choice = search_smoothing(
                sampler.sample(name), weight, sampler.amax[name], lambda t: observe_amax(recipe, t), recipe.alphas
            )
            smooth[name] = choice.smooth
            records[name].smoothing_alpha = choice.alpha
            records[name].error_unsmoothed, records[name].error = choice.error_unsmoothed, choice.error
        del sampler

    observers = {n: make_observer(recipe.observer, **_observer_options(recipe)) for n in names}

    def observe(name: str, x: torch.Tensor) -> None:
        observers[name].observe(x if smooth[name] is None else x * smooth[name])

    run_with_input_hooks(model, calib_batches, names, observe, desc="calibration: ranges", **hooks)
    for name in tqdm(names, desc="quantizing", unit="layer", leave=False):
        amax = float(observers[name].compute_amax())
        records[name].input_amax = amax
        set_module(model, name, Int8Linear.from_linear(model.get_submodule(name), amax, smooth[name]))
    plan.layers = [records[n] for n in names] + plan.layers
    return plan
