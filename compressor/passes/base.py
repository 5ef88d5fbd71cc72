"""The one small interface every pass has, and the context passes share while a recipe runs.

A pass is one module: a typed ``Config`` (validated when the recipe is read; errors name the field),
the calibration statistics it needs (``requires``), and ``apply``, which rewrites the model and
returns its record. ``stage`` orders passes in a recipe: structure first (pruning), then outlier
migration, then quantization, then what refines or follows it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from compressor.registry import Registry

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
    requires: ClassVar[tuple[str, ...]] = ()  # calibration statistics it reads: samples, hessians, ranges
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


@dataclass
class PassContext:
    """What a running recipe hands each pass: the model, the calibration service, the batches the
    model's output error is measured on with the original's outputs, and what earlier passes left
    for later ones (``shared``, e.g. the quantization plan for the fallback)."""

    handle: object
    calibration: object  # calibrators.service.CalibrationService
    sensitivity_batches: list[dict]
    references: list[torch.Tensor]
    settings: object  # the recipe's calibration settings (batch size, seed, ...)
    shared: dict = field(default_factory=dict)

    def replace_module(self, name: str, module: torch.nn.Module) -> None:
        """Swap a module in and drop the statistics gathered for the one it replaces."""
        from compressor.passes.plan import set_module

        set_module(self.handle.model, name, module)
        self.calibration.invalidate(name)


PASSES = Registry("pass")
