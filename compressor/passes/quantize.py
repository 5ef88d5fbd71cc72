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
from compressor.numerics.formats import ACTIVATION_BLOCK, SCHEMES, VQ_SHAPES, layer_group_size, make_weight_format, scheme_bits
from compressor.numerics.vq import check_vq_shape, nearest_entries, sub_vectors
from compressor.numerics.hadamard import hadamard_rotate, rotatable, rotate_hessian, rotated_amax_bound
from compressor.passes.awq import search_awq_scales
from compressor.passes.base import PASSES, Pass, PassConfig
from compressor.passes.plan import LayerRecord, QuantizationPlan, matches, pinned_scheme, set_module
from compressor.passes.precision_search import Option, average_bits, check_budget, choose_schemes, measure_sensitivity
from compressor.passes.smoothquant import SmoothingChoice
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
        pinned = "float" if matches(name, recipe.exclude) else pinned_scheme(name, recipe.formats)
        if kept_by_default(name, recipe, keep_float):
            pinned = "float"
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
    """Statistics from calibration and the (layer, scheme) modules built from them."""

    def __init__(self, handle, calibration, recipe: QuantizeConfig, options: dict[str, list[str]], migrations: dict,
                 sparsity: dict | None = None):
        self.handle, self.recipe, self.options, self.migrations = handle, recipe, options, migrations
        self.model, self.calibration = handle.model, calibration
        self.linears = {n: self.model.get_submodule(n) for n in options}
        self.masks = sparsity.get("masks", {}) if sparsity else {}  # left by a sparsify pass
        quantized = [n for n in options if any(SCHEMES[s].weight for s in options[n])]
        gptq_layers = {n for n in quantized if any(self._uses_gptq(s) or _is_vq(s) for s in options[n])}
        calibration.require(quantized)  # one run over the batches for every layer's input sample
        if gptq_layers:
            calibration.require(sorted(gptq_layers, key=quantized.index), samples=False, hessians=True)
        self.smoothing = {(n, s): self._smoothing(n, s) for n in quantized for s in options[n] if SCHEMES[s].weight}
        self.hessians = {n: calibration.hessian(n) for n in gptq_layers}
        self.static_amax = self._static_ranges()

    def _uses_gptq(self, scheme: str) -> bool:
        return self.recipe.rounding == "gptq" and SCHEMES[scheme].weight is not None and scheme != "int8"

    def _smoothing(self, name: str, scheme: str) -> SmoothingChoice | None:
        weight = self.linears[name].weight
        if _is_vq(scheme):  # AWQ's scale search rounds column groups; VQ rounds sub-vectors
            return None
        sample = self.calibration.samples(name)
        if scheme == "int8":
            smoothquant = self.migrations.get("int8")
            if smoothquant is None:
                return None
            return smoothquant.search(sample, weight, self.calibration.channel_amax(name), self.recipe.observe_amax)
        awq = self.migrations.get("weight")
        if awq is None:
            return None
        return awq.search(sample, weight, make_weight_format(SCHEMES[scheme].weight, layer_group_size(self.recipe.group_size, weight.shape[1]),
                                                            self.recipe.symmetric))

    def smooth(self, name: str, scheme: str) -> torch.Tensor | None:
        choice = self.smoothing.get((name, scheme))
        return None if choice is None else choice.smooth

    def _static_ranges(self) -> dict:
        """The recipe observer's range of each (smoothed) input that a static scale quantizes."""
        keys = [(n, s) for n in self.options for s in self.options[n] if SCHEMES[s].activation in ("int8", "fp8")]

        def smoothed(key, x: torch.Tensor) -> torch.Tensor:
            smooth = self.smooth(*key)
            return x if smooth is None else x * smooth

        return self.calibration.observe({key: key[0] for key in keys}, self.recipe.make_observer, smoothed)

    def _rotation(self, in_features: int, scheme: str) -> int:
        """The Hadamard block size of a W4A4 layer when the recipe rotates (its input format's block);
        0 for other schemes and for layers whose in_features the block does not divide."""
        block = ACTIVATION_BLOCK.get(SCHEMES[scheme].activation)
        if self.recipe.rotation != "hadamard" or block is None or not rotatable(in_features, block):
            return 0
        return block

    def build(self, name: str, scheme: str) -> tuple[nn.Module, LayerRecord]:
        linear, recipe = self.linears[name], self.recipe
        spec, group_size = SCHEMES[scheme], layer_group_size(recipe.group_size, linear.in_features)
        record = LayerRecord(name, scheme, _bits(self.model, name, scheme, recipe), linear.weight.numel())
        if spec.weight is None:
            if kept_by_default(name, recipe, self.handle.adapter.keep_float):
                record.note = "kept in float by default (conditioning or output projection; outside the bit budget)"
            else:
                record.note = "excluded by recipe" if matches(name, recipe.exclude) else "kept in float by recipe"
            return linear, record
        choice, smooth = self.smoothing.get((name, scheme)), self.smooth(name, scheme)
        if smooth is not None:
            record.smoothing = "smoothquant" if scheme == "int8" else "awq"
            record.smoothing_alpha, record.error_unsmoothed = choice.alpha, choice.error_unsmoothed
        mask = self.masks.get(name)
        record.rotation = rotation = 0 if mask is not None else self._rotation(linear.in_features, scheme)
        if self.recipe.rotation == "hadamard" and spec.activation in ACTIVATION_BLOCK and not rotation:
            record.note = ("not rotated: a rotation would mix the sparse weights" if mask is not None else
                           f"not rotated: in_features {linear.in_features} is not a multiple of {ACTIVATION_BLOCK[spec.activation]}")
        if spec.activation in ("int8", "fp8"):
            record.input_amax = self.static_amax[(name, scheme)]
        elif spec.activation == "nvfp4":  # block scales are dynamic; the tensor scale only sets their range
            amax = self.calibration.channel_amax(name) * (1.0 if smooth is None else smooth)
            # Rotated: a bound no calibration token's rotated input exceeds, whatever its signs.
            record.input_amax = float(rotated_amax_bound(amax, rotation) if rotation else amax.max())
        rounded = scales = None
        if _is_vq(scheme):
            rounded, scales = self._vector_quantize(name, record, rotation)
        elif self._uses_gptq(scheme):
            from compressor.passes.gptq import gptq_quantize

            fmt = make_weight_format(spec.weight, group_size, recipe.symmetric)
            weight, hessian = linear.weight.detach().float(), self.hessians[name]
            if smooth is not None:  # the layer sees x * smooth and holds W / smooth
                weight, hessian = weight / smooth, hessian * torch.outer(smooth, smooth).to(hessian.dtype)
            if rotation:  # ... and (W / smooth) R, seeing x * smooth R: the Hessian becomes Rᵀ H R
                weight, hessian = hadamard_rotate(weight, rotation), rotate_hessian(hessian, rotation)
            report: dict = {}
            rounded, scales = gptq_quantize(weight, hessian, fmt, damp=recipe.gptq_damp, report=report, mask=mask)
            record.rounding = "gptq"
            if report["damp"] > recipe.gptq_damp:
                record.gptq_damp = report["damp"]
                record.note = (record.note + "; " if record.note else "") + \
                    f"GPTQ damping raised to {report['damp']:g} (the Hessian was near singular)"
        module = QuantLinear.from_linear(
            linear, scheme, record.input_amax or None, smooth, rounded, scales, group_size, recipe.symmetric,
            rotation=rotation, vq_shape=recipe.vq_shape,
        )
        if mask is not None and bool((module.dequantized_weight()[~mask] != 0).any()):
            raise ValueError(f"{name}: {scheme} does not keep the sparse layer's zeros")  # a format without an exact 0
        record.error = _layer_error(module, linear, self.calibration.samples(name))
        return module, record


    def _vector_quantize(self, name: str, record: LayerRecord, rotation: int) -> tuple[torch.Tensor, dict]:
        """Codebook, indices and scales of a VQ layer: Hessian-weighted k-means, then GPTVQ's error
        feedback (``rounding: gptq``) or nearest entries (``rtn``), then optionally the candidate refinement."""
        from compressor.passes.gptvq import gptvq_quantize, hessian_codebook
        from compressor.passes.vq_refine import refine_assignment
        from compressor.numerics.vq import row_scales

        linear, recipe = self.linears[name], self.recipe
        fmt = make_weight_format(SCHEMES[record.format].weight, vq_shape=recipe.vq_shape)
        check_vq_shape(fmt.dim, fmt.entries, linear.in_features, where=name)
        if rotation or name in self.masks:
            raise CompressorError(f"{name}: vector quantization does not combine with rotation or 2:4 sparsity")
        weight, hessian = linear.weight.detach().float(), self.hessians[name]
        if recipe.rounding == "gptq":
            rounded, scales = gptvq_quantize(weight, hessian, fmt, damp=recipe.gptq_damp,
                                            codebook_updates=recipe.vq_codebook_updates)
            record.rounding = "gptvq"
        else:
            scale = row_scales(weight)
            scales = {"codebook": hessian_codebook(weight, hessian, fmt, scale), "scale": scale}
            rounded = None
        normalized = (weight if rounded is None else rounded) / scales["scale"].float()[:, None]
        indices = nearest_entries(sub_vectors(normalized, fmt.dim), scales["codebook"].float()).reshape(len(weight), -1)
        if recipe.vq_refine_steps:
            codebook, indices, report = refine_assignment(weight, hessian.float(), scales["codebook"], scales["scale"],
                                                          indices, fmt.dim, recipe.vq_candidates, recipe.vq_refine_steps)
            scales = {"codebook": codebook, "scale": scales["scale"]}
            record.rounding = (record.rounding or "nearest") + "+refined"
        vectors = scales["codebook"].float()[indices.reshape(-1)].reshape(weight.shape)
        return vectors * scales["scale"].float()[:, None], scales


def _is_vq(scheme: str) -> bool:
    return SCHEMES[scheme].weight in VQ_SHAPES


@PASSES.register("quantize")
class QuantizePass(Pass):
    """Swap the eligible Linear layers for their quantized versions: one scheme, pinned schemes, or
    the schemes a per-layer sensitivity search picks under a bit budget."""

    Config = QuantizeConfig
    stage = "quantize"
    requires = ("samples", "ranges", "hessians")

    def apply(self, context) -> dict:
        handle, recipe = context.handle, self.config
        model, adapter = handle.model, handle.adapter
        options = layer_options(adapter.quantizable_layers(model), recipe, adapter.keep_float)
        # Layers the adapter keeps in float by default are outside the bit budget (reported apart).
        budgeted = [n for n in options if not kept_by_default(n, recipe, adapter.keep_float)]
        if any(len(o) > 1 for o in options.values()):  # fail before the slow part
            check_budget({n: [_bits(model, n, s, recipe) for s in options[n]] for n in budgeted},
                         {n: model.get_submodule(n).weight.numel() for n in budgeted}, recipe.max_bits)
        for name in options:  # a sub-vector size that does not divide a layer: say so before calibrating
            for scheme in options[name]:
                if _is_vq(scheme):
                    fmt = make_weight_format(SCHEMES[scheme].weight, vq_shape=recipe.vq_shape)
                    check_vq_shape(fmt.dim, fmt.entries, model.get_submodule(name).in_features, where=name)
        context.shared["originals"] = {n: model.get_submodule(n) for n in options}
        candidates = _Candidates(handle, context.calibration, recipe, options, context.shared.get("migrations", {}),
                                 context.shared.get("sparsity"))
        built = {
            n: {s: candidates.build(n, s) for s in options[n]}
            for n in tqdm(options, desc="quantizing", unit="layer", leave=False)
        }
        plan = QuantizationPlan()
        chosen = {n: options[n][0] for n in options}
        if any(len(o) > 1 for o in options.values()):
            searched, plan.search = _search(handle, {n: built[n] for n in budgeted}, recipe,
                                            context.sensitivity_batches, context.references)
            chosen.update(searched)
        for name, scheme in chosen.items():
            module, record = built[name][scheme]
            record.in_budget = name in budgeted
            if module is not context.shared["originals"][name]:
                context.replace_module(name, module)
            plan.layers.append(record)
        context.shared["plan"] = plan
        return {"layers": len(plan.layers), "search": plan.search}


def _bits(model, name: str, scheme: str, recipe: QuantizeConfig) -> float:
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
