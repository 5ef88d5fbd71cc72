"""MSE observer: pick amax minimising the quantize-dequantize squared error."""

from __future__ import annotations

import torch

from .histogram import HistogramObserver


class MSEObserver(HistogramObserver):
    """Search ``num_candidates`` thresholds in (0, max]; the error of each is
    estimated by quantizing the histogram bin centres (rounding + clipping
    error), weighted by the bin counts."""

    name = "mse"

    def __init__(self, num_bits: int = 8, num_bins: int = 2048, num_candidates: int = 512) -> None:
        super().__init__(num_bits, num_bins)
        if num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {num_candidates!r}")
        self.num_candidates = num_candidates

    def _compute_amax(self) -> float:
        hist = self.histogram
        top = hist.max_value
        if top == 0.0:
            return 0.0
        mask = hist.counts > 0
        # A centre can lie above the true max inside the last occupied bin; clamp it.
        x = hist.centers[mask].clamp(max=top)
        w = hist.counts[mask]
        cands = torch.linspace(top / self.num_candidates, top, self.num_candidates, dtype=torch.float64)
        errors = self.expected_error(x, w, cands)
        return float(cands[int(torch.argmin(errors))])

    def expected_error(self, x: torch.Tensor, w: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
        """Weighted squared error of symmetric fake-quantization of values ``x`` (>= 0)
        for each threshold in ``amax``; returns one error per threshold."""
        qmax = self.quant_max
        scale = (amax / qmax).unsqueeze(1)  # [C, 1]
        q = torch.clamp(torch.round(x.unsqueeze(0) / scale), max=qmax) * scale  # [C, B]
        return ((q - x) ** 2 * w).sum(dim=1)
