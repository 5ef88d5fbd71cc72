"""Entropy (KL-divergence) observer in the style of TensorRT INT8 calibration."""

from __future__ import annotations

from typing import Optional

import torch

from .histogram import HistogramObserver


class EntropyObserver(HistogramObserver):
    """For each candidate cut i (in bins): the reference P = hist[:i] with the tail
    mass folded into bin i-1; the candidate Q = hist[:i] (tail *not* folded, i.e.
    what survives quantization with amax at that cut) merged into 2**(num_bits-1)
    groups and spread back evenly over the non-empty bins of each group.
    amax is the edge of the i with the smallest KL(P || Q): small cuts lose the
    folded tail, large cuts lose resolution when merging."""

    name = "entropy"

    def __init__(self, num_bits: int = 8, num_bins: int = 2048, stride: Optional[int] = None) -> None:
        super().__init__(num_bits, num_bins)
        self.num_levels = 2 ** (num_bits - 1)
        if num_bins < self.num_levels:
            raise ValueError(f"num_bins ({num_bins}) must be >= 2**(num_bits-1) = {self.num_levels}")
        if stride is not None and stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride!r}")
        self.stride = stride  # step between candidate cuts; None: about 512 candidates
        self.smoothing = 1e-4  # probability given to bins that Q leaves empty

    def _compute_amax(self) -> float:
        hist = self.histogram
        if hist.range == 0.0:
            return 0.0
        # Cuts past the last occupied bin fold nothing and only coarsen the merge,
        # so stop there (the range may be up to 2x the data after doubling).
        occupied = int(torch.nonzero(hist.counts).max()) + 1
        n = max(occupied, self.num_levels)
        stride = self.stride or max(1, (n - self.num_levels) // 512)
        ends = torch.arange(self.num_levels, n + 1, stride)
        if int(ends[-1]) != n:  # always consider keeping all the data
            ends = torch.cat([ends, torch.tensor([n])])
        # Process candidates in chunks to bound memory ([chunk, num_bins] matrices).
        kl = torch.cat([self._kl(hist.counts, chunk) for chunk in ends.split(256)])
        best = int(ends[int(torch.argmin(kl))])
        return min(best * hist.bin_width, hist.max_value)

    def _kl(self, counts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        """KL(P || Q) for each cut in ``ends`` (bins past the largest cut are ignored)."""
        levels, width = self.num_levels, int(ends.max())
        zero = torch.zeros((), dtype=torch.float64)
        j = torch.arange(width)
        inside = j.unsqueeze(0) < ends.unsqueeze(1)  # [C, width]
        sliced = torch.where(inside, counts[:width], zero)
        p = sliced.clone()
        # Fold the outliers (everything at or beyond bin i) into the last kept bin.
        rows = torch.arange(ends.numel())
        p[rows, ends - 1] += counts.sum() - torch.cumsum(counts, 0)[ends - 1]
        # Group index of each kept bin; bins beyond the cut go to a dummy group.
        groups = torch.where(inside, j.unsqueeze(0) * levels // ends.unsqueeze(1), levels)
        nonzero = p > 0
        sums = torch.zeros(ends.numel(), levels + 1, dtype=torch.float64).scatter_add_(1, groups, sliced)
        nnz = torch.zeros_like(sums).scatter_add_(1, groups, nonzero.double())
        q = nonzero * sums.gather(1, groups) / nnz.gather(1, groups).clamp(min=1.0)
        p = p / p.sum(dim=1, keepdim=True)
        q = q / q.sum(dim=1, keepdim=True).clamp(min=1e-300)
        # Q can be empty where P holds folded outliers (cut inside an empty region);
        # like TensorRT, smooth with a small probability instead of an infinite KL,
        # so a handful of far outliers is cheap to clip but a heavy tail is not.
        q = torch.where(nonzero & (q == 0), torch.full((), self.smoothing, dtype=torch.float64), q)
        terms = torch.where(nonzero, p * (torch.log(p.clamp(min=1e-300)) - torch.log(q.clamp(min=1e-300))), zero)
        return terms.sum(dim=1)
