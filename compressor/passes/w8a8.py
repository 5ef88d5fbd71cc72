"""Calibration helpers for static input ranges, and the SmoothQuant search of W8A8 INT8 layers."""
from __future__ import annotations

import torch

from calibrators.observers import make_observer
from compressor.passes.smoothquant import SmoothingChoice, search_smoothing
from compressor.recipe import Recipe


def observer_options(recipe: Recipe) -> dict:
    return {"percentile": recipe.percentile} if recipe.observer == "percentile" else {}


def make_range_observer(recipe: Recipe):
    return make_observer(recipe.observer, **observer_options(recipe))


def observe_amax(recipe: Recipe, x: torch.Tensor) -> float:
    observer = make_range_observer(recipe)
    observer.observe(x)
    return float(observer.compute_amax())


class TokenSampler:
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
            self.rows[name] = [rows]  # later calls see the same sample
        return rows


def search_w8a8_smoothing(recipe: Recipe, sample: torch.Tensor, weight: torch.Tensor, channel_amax: torch.Tensor) -> SmoothingChoice:
    return search_smoothing(sample, weight, channel_amax, lambda t: observe_amax(recipe, t), recipe.alphas)
