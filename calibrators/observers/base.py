"""Abstract base class for range observers (symmetric amax calibration)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch


class RangeObserver(ABC):
    """Collects statistics from calibration batches and proposes a symmetric clip value.

    Subclasses implement ``_update`` (fed with the flattened |x| of each batch)
    and ``_compute_amax``; this class handles input validation and bookkeeping.
    """

    name: ClassVar[str] = ""

    def __init__(self, num_bits: int = 8) -> None:
        if isinstance(num_bits, bool) or not isinstance(num_bits, int) or num_bits < 2:
            raise ValueError(f"num_bits must be an integer >= 2, got {num_bits!r}")
        self.num_bits = num_bits
        self.num_observed = 0  # number of elements seen so far

    @property
    def quant_max(self) -> int:
        """Largest positive integer level of the symmetric grid, e.g. 127 for INT8."""
        return 2 ** (self.num_bits - 1) - 1

    def observe(self, x: torch.Tensor) -> None:
        """Accumulate statistics of one batch (any shape)."""
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x)
        x = x.detach()
        if x.numel() == 0:
            return
        # histc and friends want float32/float64; half types are upcast.
        if x.dtype != torch.float64:
            x = x.float()
        if not bool(torch.isfinite(x).all()):
            raise ValueError(
                f"{type(self).__name__}.observe() received non-finite values (NaN or inf); "
                "calibration data must be finite"
            )
        self._update(x.abs().flatten())
        self.num_observed += x.numel()

    def compute_amax(self) -> float:
        """Return the chosen clipping threshold (>= 0)."""
        if self.num_observed == 0:
            raise RuntimeError("observer has seen no data")
        return float(self._compute_amax())

    @abstractmethod
    def _update(self, abs_x: torch.Tensor) -> None:
        """Consume a flat, finite, non-empty tensor of absolute values."""

    @abstractmethod
    def _compute_amax(self) -> float:
        """Compute amax from the accumulated statistics (data is guaranteed)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_bits={self.num_bits})"
