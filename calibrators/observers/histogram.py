"""Histogram of |x| with a growable range, shared by histogram-based observers."""

from __future__ import annotations

import torch

from .base import RangeObserver


class AbsHistogram:
    """Fixed number of equal-width bins over [0, range].

    When a batch exceeds the current range, the range is doubled (merging
    adjacent bin pairs, which is exact) until it covers the new max, so no
    sample is ever dropped or smeared across bins.  The price is that the range
    can end up to 2x the true max; ``max_value`` keeps the exact max.
    """

    def __init__(self, num_bins: int = 2048) -> None:
        if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 2 or num_bins % 2:
            raise ValueError(f"num_bins must be an even integer >= 2, got {num_bins!r}")
        self.num_bins = num_bins
        self.counts = torch.zeros(num_bins, dtype=torch.float64)  # float64: exact up to 2**53
        self.range = 0.0  # upper edge of the last bin
        self.max_value = 0.0  # exact running max of |x|

    @property
    def total(self) -> float:
        return float(self.counts.sum())

    @property
    def bin_width(self) -> float:
        return self.range / self.num_bins

    @property
    def edges(self) -> torch.Tensor:
        return torch.linspace(0.0, self.range, self.num_bins + 1, dtype=torch.float64)

    @property
    def centers(self) -> torch.Tensor:
        e = self.edges
        return (e[:-1] + e[1:]) / 2

    def add(self, abs_x: torch.Tensor) -> None:
        """Add a flat tensor of non-negative, finite values."""
        if abs_x.numel() == 0:
            return
        batch_max = float(abs_x.max())
        self.max_value = max(self.max_value, batch_max)
        if batch_max > self.range:
            self._grow(batch_max)
        if self.range == 0.0:  # only zeros so far: they all belong in bin 0
            self.counts[0] += abs_x.numel()
            return
        # histc puts values equal to `max` into the last bin, so nothing is lost.
        hist = torch.histc(abs_x, bins=self.num_bins, min=0.0, max=self.range)
        self.counts += hist.to(device="cpu", dtype=torch.float64)

    def _grow(self, new_max: float) -> None:
        if self.range == 0.0:
            # Any counts so far are zeros in bin 0, which stays valid for any range.
            self.range = new_max
            return
        half = self.num_bins // 2
        while self.range < new_max:
            merged = self.counts.view(half, 2).sum(dim=1)
            self.counts = torch.cat([merged, torch.zeros(half, dtype=torch.float64)])
            self.range *= 2.0


class HistogramObserver(RangeObserver):
    """Base for observers that derive amax from an ``AbsHistogram``."""

    def __init__(self, num_bits: int = 8, num_bins: int = 2048) -> None:
        super().__init__(num_bits)
        self.histogram = AbsHistogram(num_bins)

    def _update(self, abs_x: torch.Tensor) -> None:
        self.histogram.add(abs_x)
