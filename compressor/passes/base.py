"""The one small interface every pass has, and the context passes share while a recipe runs.

A pass is one module: a typed ``Config`` (validated when the recipe is read; errors name the field),
the calibration statistics it reads (``statistics``), the typed results of earlier passes it needs
(``requires``) and leaves for later ones (``produces``; compressor/passes/results.py), and ``apply``,
which rewrites the model and returns its record. ``stage`` orders passes in a recipe: structure first
(pruning), then outlier migration, then quantization, then what refines or follows it. The recipe
checks ``requires`` against the passes before it when it is read, and the pipeline again before each
pass runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

import torch
from pydantic import BaseModel, ConfigDict

from compressor.errors import CompressorError
from compressor.registry import Registry

T = TypeVar("T")

# Stages in recipe order; a recipe lists its passes with non-decreasing stages.
STAGES = ("prune", "migrate", "quantize", "refine", "tokens")


class PassConfig(BaseModel):
    """Base of every pass config: unknown fields are errors, types are strict (no 'yes' for true, no
    true for 1), and values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class Pass:
    registered_name: ClassVar[str]  # set by PASSES.register
    Config: ClassVar[type[PassConfig]] = PassConfig
    stage: ClassVar[str] = "quantize"
    statistics: ClassVar[tuple[str, ...]] = ()  # calibration statistics it reads: samples, hessians, ranges
    requires: ClassVar[tuple[type, ...]] = ()  # result types earlier passes must have left
    produces: ClassVar[tuple[type, ...]] = ()  # result types it leaves for later passes
    after: ClassVar[tuple[str, ...]] = ()  # passes that must come earlier in the recipe
    before: ClassVar[tuple[str, ...]] = ()  # passes that must come later in the recipe

    def __init__(self, config: PassConfig | None = None):
        self.config = config if config is not None else self.Config()

    @property
    def name(self) -> str:
        return self.registered_name

    def apply(self, context: "PassContext") -> dict:
        """Rewrite ``context.handle.model``; return the record of what was done (JSON-serializable)."""
        raise NotImplementedError


class PassResults:
    """The typed results passes leave for later ones, one object per type (see results.py)."""

    def __init__(self):
        self._by_type: dict[type, object] = {}

    def put(self, result: object) -> None:
        self._by_type[type(result)] = result

    def get(self, kind: type[T]) -> T | None:
        return self._by_type.get(kind)

    def setdefault(self, kind: type[T]) -> T:
        """The result of ``kind``, created empty when no pass has left one yet."""
        return self._by_type.setdefault(kind, kind())

    def __contains__(self, kind: type) -> bool:
        return kind in self._by_type


def missing_results(step: "Pass", available) -> list[str]:
    """Names of the result types ``step`` requires that are not in ``available``."""
    return [kind.__name__ for kind in step.requires if kind not in available]


@dataclass
class PassContext:
    """What a running recipe hands each pass: the model, the calibration service, the batches the
    model's output error is measured on with the original's outputs, and the typed results earlier
    passes left (``results``, e.g. the quantization plan for the fallback)."""

    handle: object
    calibration: object  # calibrators.service.CalibrationService
    sensitivity_batches: list[dict]
    references: list[torch.Tensor]
    settings: object  # the recipe's calibration settings (batch size, seed, ...)
    results: PassResults = field(default_factory=PassResults)

    def result(self, kind: type[T]) -> T:
        """An earlier pass's result of ``kind``; a one-line error when none left one."""
        found = self.results.get(kind)
        if found is None:
            raise CompressorError(f"no earlier pass left a {kind.__name__} (it comes from {kind.produced_by})")
        return found

    def replace_module(self, name: str, module: torch.nn.Module) -> None:
        """Swap a module in and drop the statistics gathered for the one it replaces."""
        from compressor.passes.plan import set_module

        set_module(self.handle.model, name, module)
        self.calibration.invalidate(name)


PASSES = Registry("pass")
