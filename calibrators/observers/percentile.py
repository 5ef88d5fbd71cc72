"""Percentile observer: clip at a high percentile of |x| to ignore rare outliers."""

from __future__ import annotations

import torch

from .histogram import HistogramObserver


class PercentileObserver(HistogramObserver):
    name = "percentile"

    def __init__(self, percentile: float = 99.99, num_bits: int = 8, num_bins: int = 2048) -> None:
        super().__init__(num_bits, num_bins)
        if not 0.0 < float(percentile) <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
        self.percentile = float(percentile)

    def _compute_amax(self) -> float:
        hist = self.histogram
        if hist.range == 0.0:
            return 0.0
        counts = hist.counts
        cdf = torch.cumsum(counts, dim=0)
        target = self.percentile / 100.0 * float(cdf[-1])
        # First bin whose cumulative count reaches the target ...
        idx = int(torch.searchsorted(cdf, torch.tensor([target], dtype=cdf.dtype)).clamp(max=hist.num_bins - 1))
        before = float(cdf[idx - 1]) if idx > 0 else 0.0
        in_bin = float(counts[idx])
        # ... then assume counts are spread uniformly inside that bin.
        frac = (target - before) / in_bin if in_bin > 0 else 1.0
        amax = (idx + min(max(frac, 0.0), 1.0)) * hist.bin_width
        return min(amax, hist.max_value)  # never exceed the real data range
