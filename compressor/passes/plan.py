"""The per-layer record of what a quantization pass did, and module-tree helpers shared by passes."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from compressor.numerics.formats import is_float_scheme


@dataclass
class LayerRecord:
    name: str
    format: str = "int8"  # the layer's scheme (compressor.numerics.formats.SCHEMES) or "float"
    bits: float = 16.0  # effective bits per weight, scales included
    params: int = 0
    input_amax: float = 0.0
    smoothing: str | None = None  # "smoothquant" (W8A8) or "awq" (other schemes)
    smoothing_alpha: float | None = None
    error_unsmoothed: float = 0.0
    error: float = 0.0
    rounding: str = "rtn"
    gptq_damp: float | None = None  # set when GPTQ had to raise the recipe's damping
    rotation: int = 0  # block size of the input's Hadamard rotation (0: none)
    sensitivity: dict | None = None  # scheme → model output error with only this layer in that scheme
    fallback_gain: float | None = None
    in_budget: bool = True  # False for layers an adapter keeps in float by default (DiT conditioning)
    note: str = ""

    @property
    def is_float(self) -> bool:
        return is_float_scheme(self.format)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class QuantizationPlan:
    """The quantize pass's result: a record per layer, what a search found, and the float modules the
    quantized ones replaced (for passes that compare against them or put them back)."""

    produced_by: ClassVar[str] = "quantize"
    layers: list[LayerRecord] = field(default_factory=list)
    search: dict | None = None  # what a per-layer precision search found, when one ran
    originals: dict[str, nn.Module] = field(default_factory=dict, repr=False)

    def by_name(self) -> dict[str, LayerRecord]:
        return {layer.name: layer for layer in self.layers}


def scheme_counts(layers) -> dict[str, int]:
    """How many layer records (dicts, in record order) hold each scheme."""
    counts: dict[str, int] = {}
    for layer in layers:
        counts[layer["format"]] = counts.get(layer["format"], 0) + 1
    return counts


def matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def pinned_scheme(name: str, formats: dict[str, str]) -> str | None:
    """The scheme the first matching wildcard pattern pins ``name`` to, if any."""
    for pattern, scheme in formats.items():
        if fnmatch.fnmatchcase(name, pattern):
            return scheme
    return None


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)
