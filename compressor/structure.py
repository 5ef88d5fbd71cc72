"""Physical removal of attention heads and FFN channels.

A block's prunable units come in groups: the rows of the producer Linears (query/key/value, or the FFN
up projection) that make one unit, and the matching input columns of the consumer Linear (the
attention output projection, or the FFN down projection). Removing a unit deletes those rows and
columns, so every GEMM around it shrinks and every runtime gets faster. ``structure_record`` writes
down the new shapes (and head counts) so that a reloaded model rebuilds them before its weights load.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from compressor.passes.plan import set_module


@dataclass(frozen=True)
class UnitGroup:
    """One block's heads or FFN channels. ``head_attributes`` names attributes of ``owner`` that count
    heads, each with the factor it is counted in (e.g. ``all_head_size`` is heads × head size)."""

    name: str
    kind: str  # "heads" or "channels"
    producers: tuple[str, ...]
    consumer: str
    unit_size: int
    owner: str | None = None
    head_attributes: tuple[tuple[str, int], ...] = field(default=())

    def units(self, model: nn.Module) -> int:
        return model.get_submodule(self.consumer).in_features // self.unit_size

    def macs_per_unit(self, model: nn.Module) -> int:
        """Multiply-accumulates per token that one unit costs in the group's Linears."""
        inputs = sum(model.get_submodule(p).in_features for p in self.producers)
        return self.unit_size * (inputs + model.get_submodule(self.consumer).out_features)

    def linears(self) -> tuple[str, ...]:
        return (*self.producers, self.consumer)


def linear_macs(model: nn.Module, names) -> int:
    """Multiply-accumulates per token of the named Linears."""
    return sum(model.get_submodule(n).in_features * model.get_submodule(n).out_features for n in names)


def unit_indices(units: list[int], unit_size: int) -> torch.Tensor:
    """Rows (or columns) of the kept units, in order."""
    return torch.tensor([u * unit_size + i for u in units for i in range(unit_size)], dtype=torch.long)


def shrink_linear(linear: nn.Linear, rows: torch.Tensor | None = None, columns: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear holding only the given output rows and input columns of ``linear``."""
    weight = linear.weight.detach()
    if rows is not None:
        weight = weight[rows]
    if columns is not None:
        weight = weight[:, columns]
    shrunk = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None,
                       device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        shrunk.weight.copy_(weight)
        if linear.bias is not None:
            shrunk.bias.copy_(linear.bias.detach() if rows is None else linear.bias.detach()[rows])
    return shrunk


def keep_units(model: nn.Module, group: UnitGroup, kept: list[int], replace=None) -> None:
    """Remove every unit of ``group`` not in ``kept``. ``replace(name, module)`` swaps modules in (a pass
    passes its context's, which also drops stale calibration statistics)."""
    replace = replace or (lambda name, module: set_module(model, name, module))
    index = unit_indices(sorted(kept), group.unit_size)
    for name in group.producers:
        replace(name, shrink_linear(model.get_submodule(name), rows=index))
    replace(group.consumer, shrink_linear(model.get_submodule(group.consumer), columns=index))
    if group.owner is not None:
        owner = model.get_submodule(group.owner)
        for attribute, factor in group.head_attributes:
            setattr(owner, attribute, len(kept) * factor)


def structure_record(model: nn.Module, groups: list[UnitGroup]) -> dict:
    """The shapes and head counts a reloaded model needs: {"linears": {name: [out, in, bias]},
    "attributes": {module: {attribute: value}}}."""
    linears = {}
    attributes = {}
    for group in groups:
        for name in group.linears():
            linear = model.get_submodule(name)
            linears[name] = [linear.out_features, linear.in_features, linear.bias is not None]
        if group.owner is not None:
            owner = model.get_submodule(group.owner)
            attributes[group.owner] = {a: int(getattr(owner, a)) for a, _ in group.head_attributes}
    return {"linears": linears, "attributes": attributes}


def apply_structure(model: nn.Module, structure: dict) -> None:
    """Give an unpruned model the recorded shapes (weights are loaded afterwards)."""
    for name, (out_features, in_features, bias) in structure.get("linears", {}).items():
        old = model.get_submodule(name)
        set_module(model, name, nn.Linear(in_features, out_features, bias=bias, dtype=old.weight.dtype))
    for owner, values in structure.get("attributes", {}).items():
        module = model.get_submodule(owner)
        for attribute, value in values.items():
            setattr(module, attribute, value)
