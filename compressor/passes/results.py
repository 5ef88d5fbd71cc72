"""The typed results passes exchange: each pass puts its result in ``context.results`` by type, and a
later pass that needs it names the type in ``requires``. ``produced_by`` names the pass that makes it,
for the error a recipe without that pass gets."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Protocol

import torch

from compressor.passes.plan import QuantizationPlan  # noqa: F401 (a result type: the quantize pass's)


@dataclass(frozen=True)
class LayerInputs:
    """What an outlier-migration search sees of one layer: sampled input rows, the float weight, the
    per-channel input range, the range observer the quantizer will use, and the weight format."""

    sample: torch.Tensor
    weight: torch.Tensor
    channel_amax: torch.Tensor
    observe_amax: Callable[[torch.Tensor], float]
    weight_format: object


class MigrationSearch(Protocol):
    def search(self, layer: LayerInputs): ...  # -> compressor.passes.smoothquant.SmoothingChoice


@dataclass
class Migrations:
    """Outlier-migration searches a migrate pass leaves for quantize, by the name a scheme asks for
    (``Scheme.migration``). The best factor depends on the scheme a layer ends up in, which a per-layer
    search only knows later, so quantize runs the search per (layer, scheme)."""

    produced_by: ClassVar[str] = "smoothquant or awq"
    searches: dict[str, MigrationSearch] = field(default_factory=dict)


@dataclass
class Sparsity:
    """The sparse layers' masks (True = kept) and their pattern ("2:4", "unstructured"): quantization keeps
    the pruned weights exactly zero, the checkpoint stores them compressed, export checks them."""

    produced_by: ClassVar[str] = "sparsify"
    pattern: str = ""
    masks: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_record(self) -> dict | None:
        if not self.masks:
            return None
        return {"pattern": self.pattern,
                "layers": {n: round(1 - float(m.float().mean()), 4) for n, m in self.masks.items()}}


@dataclass
class PrunedStructure:
    """Shapes and head counts after structured pruning, which a reloaded model rebuilds first."""

    produced_by: ClassVar[str] = "prune_structured"
    record: dict = field(default_factory=dict)


@dataclass
class Fallback:
    """Layers put back in float, and the model output errors before and after."""

    produced_by: ClassVar[str] = "fallback"
    restored: list[str] = field(default_factory=list)
    errors: dict = field(default_factory=dict)


@dataclass
class QuantizedEmbeddings:
    produced_by: ClassVar[str] = "embeddings"
    tables: list[dict] = field(default_factory=list)  # the tables stored in a weight format


@dataclass
class TokenReduction:
    """``{"method": NAME, ...settings}`` a tokens-stage pass patched the model with; loading applies them
    again (compressor/reduction.py)."""

    produced_by: ClassVar[str] = "tome or step_cache"
    settings: dict = field(default_factory=dict)
