"""The calibration service: runs the model over the calibration batches and serves the per-layer
statistics passes ask for (input samples, per-channel ranges, Hessians, observed ranges).

Statistics are gathered for every layer a pass asks about in one run over the batches, cached per
layer, and dropped for a layer when a pass replaces that layer (``invalidate``), so a later pass
never reads statistics of a module that is gone.
"""
from __future__ import annotations

from typing import Callable

import torch

from calibrators.collect import run_with_input_hooks
from calibrators.statistics import HessianAccumulator, TokenSampler

SAMPLES, HESSIANS = "samples", "hessians"


class CalibrationService:
    def __init__(self, handle, batches: list[dict], sample_tokens: int = 4096, seed: int = 0):
        self.handle, self.batches = handle, batches
        self.sampler = TokenSampler(sample_tokens, seed)
        self.hessian_sums = HessianAccumulator()
        self.runs = 0  # forward runs over the batches, for tests and progress reports

    def _run(self, layers: list[str], callback: Callable[[str, torch.Tensor], None], desc: str) -> None:
        adapter = self.handle.adapter
        run_with_input_hooks(self.handle.model, self.batches, layers, callback, forward=adapter.forward,
                             token_mask=adapter.token_mask, desc=desc)
        self.runs += 1

    def require(self, layers: list[str], samples: bool = True, hessians: bool = False) -> None:
        """Gather what is missing for ``layers`` in one run over the batches."""
        want = {name: (samples and name not in self.sampler.rows, hessians and name not in self.hessian_sums.hessians)
                for name in layers}
        want = {name: kinds for name, kinds in want.items() if any(kinds)}
        if not want:
            return

        def collect(name: str, x: torch.Tensor) -> None:
            take_samples, take_hessian = want[name]
            if take_samples:
                self.sampler(name, x)
            if take_hessian:
                self.hessian_sums(name, x)

        self._run(list(want), collect, desc="calibration: " + ("inputs" if samples else "hessians"))

    def samples(self, layer: str) -> torch.Tensor:
        """A uniform sample of the layer's input rows at real tokens, [tokens, in_features]."""
        self.require([layer])
        return self.sampler.sample(layer)

    def channel_amax(self, layer: str) -> torch.Tensor:
        """max |x| per input channel over every calibration token."""
        self.require([layer])
        return self.sampler.amax[layer]

    def hessian(self, layer: str) -> torch.Tensor:
        self.require([layer], samples=False, hessians=True)
        return self.hessian_sums.hessians[layer]

    def observe(self, watched: dict, make_observer: Callable, transform: Callable | None = None) -> dict:
        """Ranges of transformed inputs: ``watched`` maps a key to a layer name; each key gets an observer
        fed ``transform(key, x)`` (e.g. the input times a smoothing factor). Not cached: the transform
        belongs to the caller."""
        observers = {key: make_observer() for key in watched}
        by_layer: dict[str, list] = {}
        for key, layer in watched.items():
            by_layer.setdefault(layer, []).append(key)

        def observe(name: str, x: torch.Tensor) -> None:
            for key in by_layer[name]:
                observers[key].observe(x if transform is None else transform(key, x))

        if by_layer:
            self._run(list(by_layer), observe, desc="calibration: ranges")
        return {key: float(obs.compute_amax()) for key, obs in observers.items()}

    def invalidate(self, layer: str) -> None:
        """A pass replaced ``layer``: its statistics describe a module that is gone."""
        self.sampler.forget(layer)
        self.hessian_sums.forget(layer)
