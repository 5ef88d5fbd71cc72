"""Per-layer precision under a bit budget: measure each layer's sensitivity to each candidate
scheme, then pick one scheme per layer to minimise the summed sensitivity within the budget.

Sensitivity is the model's relative output error with only that layer quantized, which captures
how a layer's error grows through the rest of the network (a layer-local error does not). The
choice is a multiple-choice knapsack, solved exactly by dynamic programming over the bit cost
(costs rounded up to the grid, so the plan never exceeds the budget).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from compressor.errors import CompressorError
from compressor.fidelity import output_error
from compressor.passes.plan import set_module


@dataclass(frozen=True)
class Option:
    scheme: str
    bits: float  # effective bits per weight
    error: float  # sensitivity


@torch.no_grad()
def measure_sensitivity(handle, candidates: dict[str, dict[str, torch.nn.Module]], batches, references) -> dict:
    """{layer: {scheme: output error with only that layer in that scheme}}; a float candidate scores 0."""
    model = handle.model
    result: dict[str, dict[str, float]] = {}
    work = [(name, scheme) for name, by_scheme in candidates.items() for scheme in by_scheme]
    for name, scheme in tqdm(work, desc="sensitivity search", unit="trial", leave=False):
        original = model.get_submodule(name)
        module = candidates[name][scheme]
        if module is original:
            result.setdefault(name, {})[scheme] = 0.0
            continue
        set_module(model, name, module)
        try:
            result.setdefault(name, {})[scheme] = output_error(handle, batches, references)
        finally:
            set_module(model, name, original)
    return result


def check_budget(bits: dict[str, list[float]], params: dict[str, int], max_bits: float) -> None:
    """Refuse a budget below the plan that takes every layer's cheapest option."""
    smallest = average_bits({n: min(b) for n, b in bits.items()}, params)
    if smallest > max_bits + 1e-9:
        raise CompressorError(
            f"--max-bits {max_bits:g} is below the smallest plan these candidates allow ({smallest:.3f} bits per weight)"
        )


def choose_schemes(
    options: dict[str, list[Option]], params: dict[str, int], max_bits: float, resolution: int = 20000
) -> dict[str, str]:
    """The scheme per layer with the least total error whose average bits per weight (weighted by
    ``params``) is at most ``max_bits``. Layers with one option simply spend their share."""
    check_budget({n: [o.bits for o in opts] for n, opts in options.items()}, params, max_bits)
    names = list(options)
    budget = max_bits * sum(params[n] for n in names)
    unit = budget / resolution
    cost = {n: [min(resolution, math.ceil(o.bits * params[n] / unit - 1e-9)) for o in options[n]] for n in names}
    best = np.full(resolution + 1, np.inf)
    best[0] = 0.0
    picks = []
    for n in names:
        new = np.full_like(best, np.inf)
        pick = np.full(resolution + 1, -1, dtype=np.int64)
        for k, option in enumerate(options[n]):
            c = cost[n][k]
            shifted = np.full_like(best, np.inf)
            shifted[c:] = best[: resolution + 1 - c] + option.error
            better = shifted < new
            new[better], pick[better] = shifted[better], k
        best = new
        picks.append(pick)
    if not np.isfinite(best).any():  # cost rounding left no room: the cheapest plan is within budget
        return {n: min(options[n], key=lambda o: o.bits).scheme for n in names}
    spent = int(np.argmin(best))
    chosen = {}
    for n, pick in zip(reversed(names), reversed(picks)):
        k = int(pick[spent])
        chosen[n] = options[n][k].scheme
        spent -= cost[n][k]
    return dict(reversed(chosen.items()))


def average_bits(schemes_bits: dict[str, float], params: dict[str, int]) -> float:
    total = sum(params[n] for n in schemes_bits)
    return sum(schemes_bits[n] * params[n] for n in schemes_bits) / max(total, 1)
