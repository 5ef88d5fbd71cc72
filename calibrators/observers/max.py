"""Running absolute-max observer: never clips, so it is robust but outlier-sensitive."""

from __future__ import annotations

import torch

from .base import RangeObserver


class MaxObserver(RangeObserver):
    name = "max"

    def __init__(self, num_bits: int = 8) -> None:
        super().__init__(num_bits)
        self.max_value = 0.0

    def _update(self, abs_x: torch.Tensor) -> None:
        self.max_value = max(self.max_value, float(abs_x.max()))

    def _compute_amax(self) -> float:
        return self.max_value
