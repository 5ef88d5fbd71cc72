"""Input (activation) formats behind one small interface: how a Linear's input is quantized at run time
and how its static scale follows from a calibrated range. Each format is one registry entry, so the
modules, the quantize pass and the exporters ask it instead of comparing names."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from compressor.numerics.fp8 import E4M3_MAX, fake_quantize_fp8
from compressor.numerics.int8 import INT8_MAX, fake_quantize_int8
from compressor.numerics.mxfp4 import MXFP4_BLOCK, fake_quantize_mxfp4
from compressor.numerics.nvfp4 import NVFP4_BLOCK, fake_quantize_nvfp4
from compressor.registry import Registry

ACTIVATION_FORMATS = Registry("activation format")


@dataclass(frozen=True)
class ActivationFormat:
    """``calibration``: how the static scale's range is found — "observer" (the recipe's range observer on
    the layer's input), "channel_max" (the largest input seen: NVFP4's tensor scale only bounds its dynamic
    block scales) or None (no static scale). ``block``: the dynamic scale block along the input dimension,
    which a Hadamard rotation follows (None: per-tensor or no quantization)."""

    name: str
    calibration: str | None
    block: int | None
    quantize: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    range_per_scale: float = 1.0  # static scale = amax / this (the format's largest value)
    registered_name: ClassVar[str]

    @property
    def has_static_scale(self) -> bool:
        return self.calibration is not None

    def static_scale(self, amax: float | None) -> float:
        """The static scale for a calibrated range."""
        if amax is None:
            raise ValueError(f"{self.name} inputs need a calibrated range")
        return max(float(amax), 1e-12) / self.range_per_scale

    def fake_quantize(self, x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        return self.quantize(x, scale)


def register(fmt: ActivationFormat) -> ActivationFormat:
    ACTIVATION_FORMATS.register(fmt.name)(fmt)
    return fmt


register(ActivationFormat("none", None, None, lambda x, scale: x))
register(ActivationFormat("int8", "observer", None, fake_quantize_int8, float(INT8_MAX)))
register(ActivationFormat("fp8", "observer", None, fake_quantize_fp8, E4M3_MAX))
# The tensor scale puts the largest block scale (amax / 6, the E2M1 maximum) at E4M3's maximum.
register(ActivationFormat("nvfp4", "channel_max", NVFP4_BLOCK, fake_quantize_nvfp4, 6.0 * E4M3_MAX))
register(ActivationFormat("mxfp4", None, MXFP4_BLOCK, lambda x, scale: fake_quantize_mxfp4(x)))
