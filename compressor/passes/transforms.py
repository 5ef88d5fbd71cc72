"""Equivalence transforms a layer goes through before rounding. Each maps the float weight and the
input Hessian the way the quantized layer will see them, so error-compensating rounding (GPTQ) works
in the transformed space. The module applies the input side at run time (QuantLinear)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from compressor.numerics.hadamard import hadamard_rotate, rotate_hessian


@dataclass(frozen=True)
class Smoothing:
    """Outlier migration (SmoothQuant, AWQ): the layer sees x · smooth and holds W / smooth."""

    smooth: torch.Tensor

    def weight(self, w: torch.Tensor) -> torch.Tensor:
        return w / self.smooth

    def hessian(self, h: torch.Tensor) -> torch.Tensor:
        return h * torch.outer(self.smooth, self.smooth).to(h.dtype)


@dataclass(frozen=True)
class HadamardRotation:
    """Block-wise Hadamard rotation R of the input: the layer sees x R and holds W R, so H becomes Rᵀ H R."""

    block: int

    def weight(self, w: torch.Tensor) -> torch.Tensor:
        return hadamard_rotate(w, self.block)

    def hessian(self, h: torch.Tensor) -> torch.Tensor:
        return rotate_hessian(h, self.block)
