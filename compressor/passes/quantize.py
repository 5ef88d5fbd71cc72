"""Quantize the eligible Linear layers: each to the recipe's scheme, to a scheme pinned by a
wildcard pattern, or to the scheme a per-layer sensitivity search picks under a bit budget.

Calibration runs the float model once to sample each layer's input tokens and per-channel ranges
(and once more for the Hessians of error-compensating rounding, and for static ranges of smoothed
inputs). Every (layer, scheme) candidate is then built from those statistics alone, so a search
can try candidates one at a time against the float model.
"""
from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from typing import Literal

from pydantic import Field, model_validator

from calibrators.observers import make_observer
from compressor.errors import CompressorError
from compressor.numerics.formats import FLOAT, SCHEMES, layer_group_size, make_weight_format, scheme_bits
from compressor.numerics.vq import check_vq_shape
from compressor.numerics.hadamard import rotatable, rotated_amax_bound
from compressor.passes.base import PASSES, Pass, PassConfig
from compressor.passes.plan import LayerRecord, QuantizationPlan, matches, pinned_scheme
from compressor.passes.precision_search import Option, average_bits, check_budget, choose_schemes, measure_sensitivity
from compressor.passes.results import LayerInputs, Migrations, Sparsity
from compressor.passes.rounding import LayerProblem, rounding_for
from compressor.passes.transforms import HadamardRotation, Smoothing
from compressor.quant_linear import QuantLinear

OBSERVER_NAMES = ("entropy", "max", "mse", "percentile")


class QuantizeConfig(PassConfig):
    """``scheme`` is what every layer becomes (see ``compressor.numerics.formats.SCHEMES``: ``int8`` is
    W8A8, ``nvfp4`` W4A4, ``w4a16-nvfp4`` weight-only, ...). ``formats`` pins schemes per module with
    wildcard name patterns (first match wins); ``exclude`` keeps modules in float. With ``candidates``
    and ``max_bits``, each layer's scheme is searched instead: every candidate's effect on the model
    output is measured layer by layer, and the plan with the least total error whose effective bits
    per weight stay within ``max_bits`` is chosen. Static input scales come from calibration with
    ``observer``. ``rounding`` is round-to-nearest (``rtn``) or the error-compensating ``gptq``.
    ``rotation: hadamard`` rotates the input dimension of every W4A4 layer (NVFP4/MXFP4 inputs) in
    blocks of the format's block size: the weight offline, the input at run time before its
    quantization."""

    scheme: str = "int8"
    formats: dict[str, str] = Field(default_factory=dict)
    candidates: list[str] = Field(default_factory=list)
    max_bits: float = Field(0.0, ge=0)  # 0: no budget (needed only with candidates)
    rounding: Literal["rtn", "gptq"] = "rtn"
    gptq_damp: float = Field(0.01, gt=0, lt=1)
    rotation: Literal["none", "hadamard"] = "none"
    group_size: int = Field(128, ge=2, multiple_of=2)  # INT4 groups
    symmetric: bool = True
    # Vector quantization (vq schemes): (sub-vector dim, codebook entries) replacing the schemes' own;
    # rounds of least-squares codebook updates after GPTVQ's assignment (0: off); candidate-assignment
    # refinement steps on the layer output error (0: off) and candidates per sub-vector.
    vq_dim: int | None = Field(None, ge=1)
    vq_entries: int | None = Field(None, ge=2)
    vq_codebook_updates: int = Field(0, ge=0)
    vq_refine_steps: int = Field(0, ge=0)
    vq_candidates: int = Field(4, ge=1)
    observer: Literal[OBSERVER_NAMES] = "percentile"
    percentile: float = Field(99.99, gt=0, le=100)
    exclude: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _schemes_known(self):
        known = ", ".join(SCHEMES)
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme: unknown value {self.scheme!r}; choose one of: {known}")
        for pattern, scheme in self.formats.items():
            if scheme not in SCHEMES:
                raise ValueError(f"formats: pattern {pattern!r} names unknown scheme {scheme!r}")
        if not all(c in SCHEMES for c in self.candidates):
            raise ValueError(f"candidates: expected schemes ({known}), got {self.candidates!r}")
        if self.candidates and self.max_bits <= 0:
            raise ValueError("max_bits: a per-layer search over candidates needs a budget > 0")
        if (self.vq_dim is None) != (self.vq_entries is None):
            raise ValueError("vq_dim: give vq_dim and vq_entries together")
        if self.vq_dim is not None:
            try:
                check_vq_shape(self.vq_dim, self.vq_entries, where="quantize")
            except CompressorError as exc:
                raise ValueError(str(exc).removeprefix("quantize: ")) from None
        return self

    @property
    def vq_shape(self) -> tuple[int, int] | None:
        return None if self.vq_dim is None else (self.vq_dim, self.vq_entries)

    def make_observer(self):
        return make_observer(self.observer, **({"percentile": self.percentile} if self.observer == "percentile" else {}))

    def observe_amax(self, x: torch.Tensor) -> float:
        observer = self.make_observer()
        observer.observe(x)
        return float(observer.compute_amax())


def layer_options(names: list[str], recipe: QuantizeConfig, keep_float: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Schemes each layer may take: float when excluded, a pinned one, float when the adapter keeps it
    so by default (and no pattern pins it), the search candidates, or the recipe's scheme."""
    options = {}
    for name in names:
        pinned = FLOAT if matches(name, recipe.exclude) else pinned_scheme(name, recipe.formats)
        if kept_by_default(name, recipe, keep_float):
            pinned = FLOAT
        options[name] = [pinned] if pinned else list(recipe.candidates) if recipe.candidates else [recipe.scheme]
    return options


def kept_by_default(name: str, recipe: QuantizeConfig, keep_float: tuple[str, ...]) -> bool:
    """Matched by the adapter's float patterns and by no recipe pattern."""
    return not matches(name, recipe.exclude) and not pinned_scheme(name, recipe.formats) and matches(name, keep_float)


def _layer_error(module: nn.Module, linear: nn.Linear, x: torch.Tensor) -> float:
    with torch.no_grad():
        reference = linear(x)
        return float((module(x) - reference).pow(2).sum() / reference.pow(2).sum().clamp_min(1e-12))


class _Candidates:
    """Statistics from calibration and the (layer, scheme) modules built from them: each candidate is its
    outlier migration (a searched smoothing), its rotation, its input range and its rounding strategy."""

    def __init__(self, handle, calibration, recipe: QuantizeConfig, options: dict[str, list[str]],
                 migrations: Migrations, sparsity: Sparsity):
        self.handle, self.recipe, self.options, self.migrations = handle, recipe, options, migrations.searches
        self.model, self.calibration = handle.model, calibration
        self.linears = {n: self.model.get_submodule(n) for n in options}
        self.masks = sparsity.masks
        quantized = [n for n in options if any(not SCHEMES[s].is_float for s in options[n])]
        hessian_layers = [n for n in quantized if any(self._rounding(n, s).needs_hessian for s in options[n]
                                                      if not SCHEMES[s].is_float)]
        calibration.require(quantized)  # one run over the batches for every layer's input sample
        if hessian_layers:
            calibration.require(hessian_layers, samples=False, hessians=True)
        self.smoothing = {(n, s): self._smoothing(n, s) for n in quantized for s in options[n] if not SCHEMES[s].is_float}
        self.hessians = {n: calibration.hessian(n) for n in hessian_layers}
        self.static_amax = self._static_ranges()

    def _format(self, name: str, scheme: str):
        linear, recipe = self.linears[name], self.recipe
        return make_weight_format(SCHEMES[scheme].weight, layer_group_size(recipe.group_size, linear.in_features),
                                  recipe.symmetric, recipe.vq_shape)

    def _rounding(self, name: str, scheme: str):
        return rounding_for(SCHEMES[scheme], self._format(name, scheme), self.recipe.rounding)

    def _smoothing(self, name: str, scheme: str):
        """The migration search the scheme asks for, when a migrate pass left it (SmoothingChoice or None)."""
        search = self.migrations.get(SCHEMES[scheme].migration)
        if search is None:
            return None
        layer = LayerInputs(self.calibration.samples(name), self.linears[name].weight,
                            self.calibration.channel_amax(name), self.recipe.observe_amax, self._format(name, scheme))
        return search.search(layer)

    def smooth(self, name: str, scheme: str) -> torch.Tensor | None:
        choice = self.smoothing.get((name, scheme))
        return None if choice is None else choice.smooth

    def _static_ranges(self) -> dict:
        """The recipe observer's range of each (smoothed) input that a static scale quantizes."""
        keys = [(n, s) for n in self.options for s in self.options[n] if SCHEMES[s].input.calibration == "observer"]

        def smoothed(key, x: torch.Tensor) -> torch.Tensor:
            smooth = self.smooth(*key)
            return x if smooth is None else x * smooth

        return self.calibration.observe({key: key[0] for key in keys}, self.recipe.make_observer, smoothed)

    def _rotation(self, in_features: int, scheme: str) -> int:
        """The Hadamard block size of a W4A4 layer when the recipe rotates (its input format's block);
        0 for other schemes and for layers whose in_features the block does not divide."""
        block = SCHEMES[scheme].input.block
        if self.recipe.rotation != "hadamard" or block is None or not rotatable(in_features, block):
            return 0
        return block

    def _input_amax(self, name: str, scheme: str, smooth: torch.Tensor | None, rotation: int) -> float:
        """The range the input format's static scale is set from (0: the format has none)."""
        how = SCHEMES[scheme].input.calibration
        if how is None:
            return 0.0
        if how == "observer":
            return self.static_amax[(name, scheme)]
        # channel_max: block scales are dynamic; the tensor scale only sets their range
        amax = self.calibration.channel_amax(name) * (1.0 if smooth is None else smooth)
        # Rotated: a bound no calibration token's rotated input exceeds, whatever its signs.
        return float(rotated_amax_bound(amax, rotation) if rotation else amax.max())

    def build(self, name: str, scheme: str) -> tuple[nn.Module, LayerRecord]:
        linear, recipe = self.linears[name], self.recipe
        spec, group_size = SCHEMES[scheme], layer_group_size(recipe.group_size, linear.in_features)
        record = LayerRecord(name, scheme, layer_bits(self.model, name, scheme, recipe), linear.weight.numel())
        if spec.is_float:
            record.note = self._float_note(name)
            return linear, record
        choice, smooth = self.smoothing.get((name, scheme)), self.smooth(name, scheme)
        if smooth is not None:
            record.smoothing = spec.migration
            record.smoothing_alpha, record.error_unsmoothed = choice.alpha, choice.error_unsmoothed
        mask = self.masks.get(name)
        record.rotation = rotation = 0 if mask is not None else self._rotation(linear.in_features, scheme)
        if self.recipe.rotation == "hadamard" and spec.input.block and not rotation:
            record.note = ("not rotated: a rotation would mix the sparse weights" if mask is not None else
                           f"not rotated: in_features {linear.in_features} is not a multiple of {spec.input.block}")
        record.input_amax = self._input_amax(name, scheme, smooth, rotation)
        transforms = [*([Smoothing(smooth)] if smooth is not None else []),
                      *([HadamardRotation(rotation)] if rotation else [])]
        problem = LayerProblem(name, linear.weight, self.hessians.get(name), self._format(name, scheme), mask,
                               transforms, recipe)
        rounded = self._rounding(name, scheme).round(problem)
        record.rounding = rounded.rounding
        if rounded.damp is not None:
            record.gptq_damp = rounded.damp
            record.note = (record.note + "; " if record.note else "") + \
                f"GPTQ damping raised to {rounded.damp:g} (the Hessian was near singular)"
        module = QuantLinear.from_linear(
            linear, scheme, record.input_amax or None, smooth, rounded.weight, rounded.scales, group_size,
            recipe.symmetric, rotation=rotation, vq_shape=recipe.vq_shape,
        )
        if mask is not None and bool((module.dequantized_weight()[~mask] != 0).any()):
            raise ValueError(f"{name}: {scheme} does not keep the sparse layer's zeros")  # a format without an exact 0
        record.error = _layer_error(module, linear, self.calibration.samples(name))
        return module, record

    def _float_note(self, name: str) -> str:
        if kept_by_default(name, self.recipe, self.handle.adapter.keep_float):
            return "kept in float by default (conditioning or output projection; outside the bit budget)"
        return "excluded by recipe" if matches(name, self.recipe.exclude) else "kept in float by recipe"


@PASSES.register("quantize")
class QuantizePass(Pass):
    """Swap the eligible Linear layers for their quantized versions: one scheme, pinned schemes, or
    the schemes a per-layer sensitivity search picks under a bit budget."""

    Config = QuantizeConfig
    stage = "quantize"
    statistics = ("samples", "ranges", "hessians")
    produces = (QuantizationPlan,)

    def apply(self, context) -> dict:
        handle, recipe = context.handle, self.config
        model, adapter = handle.model, handle.adapter
        options = layer_options(adapter.quantizable_layers(model), recipe, adapter.keep_float)
        # Layers the adapter keeps in float by default are outside the bit budget (reported apart).
        budgeted = [n for n in options if not kept_by_default(n, recipe, adapter.keep_float)]
        if any(len(o) > 1 for o in options.values()):  # fail before the slow part
            check_budget({n: [layer_bits(model, n, s, recipe) for s in options[n]] for n in budgeted},
                         {n: model.get_submodule(n).weight.numel() for n in budgeted}, recipe.max_bits)
        for name in options:  # a layer shape a format cannot hold (a VQ sub-vector size): say so before calibrating
            for scheme in options[name]:
                if not SCHEMES[scheme].is_float:
                    make_weight_format(SCHEMES[scheme].weight, vq_shape=recipe.vq_shape).check_layer(
                        model.get_submodule(name).in_features, where=name)
        plan = QuantizationPlan(originals={n: model.get_submodule(n) for n in options})
        candidates = _Candidates(handle, context.calibration, recipe, options, context.results.setdefault(Migrations),
                                 context.results.get(Sparsity) or Sparsity())
        built = {
            n: {s: candidates.build(n, s) for s in options[n]}
            for n in tqdm(options, desc="quantizing", unit="layer", leave=False)
        }
        chosen = {n: options[n][0] for n in options}
        if any(len(o) > 1 for o in options.values()):
            searched, plan.search = _search(handle, {n: built[n] for n in budgeted}, recipe,
                                            context.sensitivity_batches, context.references)
            chosen.update(searched)
        for name, scheme in chosen.items():
            module, record = built[name][scheme]
            record.in_budget = name in budgeted
            if module is not plan.originals[name]:
                context.replace_module(name, module)
            plan.layers.append(record)
        context.results.put(plan)
        return {"layers": len(plan.layers), "search": plan.search}


def layer_bits(model, name: str, scheme: str, recipe: QuantizeConfig) -> float:
    """Effective bits per weight of layer ``name`` in ``scheme`` under the recipe's group size."""
    linear = model.get_submodule(name)
    in_features = linear.in_features
    return scheme_bits(SCHEMES[scheme], in_features, layer_group_size(recipe.group_size, in_features), recipe.symmetric,
                       linear.out_features, recipe.vq_shape)


def _search(handle, built, recipe, batches, references) -> tuple[dict[str, str], dict]:
    """Measure each searched layer's sensitivity, choose the plan, and describe what was found."""
    if batches is None or references is None:
        raise ValueError("a per-layer precision search needs sensitivity batches and reference outputs")
    searched = [n for n in built if len(built[n]) > 1]
    modules = {n: {s: module for s, (module, _) in built[n].items()} for n in searched}
    sensitivity = measure_sensitivity(handle, modules, batches, references)
    # Layers with a single option (pinned, excluded) take part with zero error: they spend budget too.
    options = {
        n: [Option(s, record.bits, sensitivity.get(n, {}).get(s, 0.0)) for s, (_, record) in built[n].items()]
        for n in built
    }
    params = {n: next(iter(built[n].values()))[1].params for n in built}
    chosen = choose_schemes(options, params, recipe.max_bits)
    for n in searched:
        for _, record in built[n].values():
            record.sensitivity = {k: round(v, 8) for k, v in sensitivity[n].items()}
    lowest = {n: min(options[n], key=lambda o: o.bits) for n in searched}
    ranking = sorted(searched, key=lambda n: lowest[n].error, reverse=True)
    search = {
        "candidates": list(recipe.candidates),
        "max_bits": recipe.max_bits,
        "bits_per_weight": average_bits({n: built[n][chosen[n]][1].bits for n in built}, params),
        "predicted_error": sum(sensitivity[n][chosen[n]] for n in searched),
        "most_sensitive": [
            {"name": n, "scheme": lowest[n].scheme, "sensitivity": lowest[n].error, "chosen": chosen[n]}
            for n in ranking[:3]
        ],
    }
    return chosen, search
