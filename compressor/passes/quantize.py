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

from calibrators.collect import run_with_input_hooks
from compressor.numerics.formats import SCHEMES, make_weight_format, scheme_bits
from compressor.passes.awq import search_awq_scales
from compressor.int8_linear import Int8Linear
from compressor.passes.plan import LayerRecord, QuantizationPlan, matches, pinned_scheme, set_module
from compressor.passes.precision_search import Option, average_bits, check_budget, choose_schemes, measure_sensitivity
from compressor.passes.smoothquant import SmoothingChoice
from compressor.passes.w8a8 import TokenSampler, make_range_observer, search_w8a8_smoothing
from compressor.quant_linear import QuantLinear
from compressor.recipe import Recipe


def layer_options(names: list[str], recipe: Recipe, keep_float: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Schemes each layer may take: float when excluded, a pinned one, float when the adapter keeps it
    so by default (and no pattern pins it), the search candidates, or the recipe's scheme."""
    options = {}
    for name in names:
        pinned = "float" if matches(name, recipe.exclude) else pinned_scheme(name, recipe.formats)
        if kept_by_default(name, recipe, keep_float):
            pinned = "float"
        options[name] = [pinned] if pinned else list(recipe.candidates) if recipe.candidates else [recipe.scheme]
    return options


def kept_by_default(name: str, recipe: Recipe, keep_float: tuple[str, ...]) -> bool:
    """Matched by the adapter's float patterns and by no recipe pattern."""
    return not matches(name, recipe.exclude) and not pinned_scheme(name, recipe.formats) and matches(name, keep_float)


def _layer_error(module: nn.Module, linear: nn.Linear, x: torch.Tensor) -> float:
    with torch.no_grad():
        reference = linear(x)
        return float((module(x) - reference).pow(2).sum() / reference.pow(2).sum().clamp_min(1e-12))


class _Candidates:
    """Statistics from calibration and the (layer, scheme) modules built from them."""

    def __init__(self, handle, batches: list[dict], recipe: Recipe, options: dict[str, list[str]]):
        self.handle, self.recipe, self.options = handle, recipe, options
        self.model = handle.model
        self.linears = {n: self.model.get_submodule(n) for n in options}
        hooks = dict(forward=handle.adapter.forward, token_mask=handle.adapter.token_mask)
        quantized = [n for n in options if any(SCHEMES[s].weight for s in options[n])]
        self.sampler = TokenSampler(recipe.search_tokens, recipe.seed)
        run_with_input_hooks(self.model, batches, quantized, self.sampler, desc="calibration: inputs", **hooks)
        self.smoothing = {(n, s): self._smoothing(n, s) for n in quantized for s in options[n] if SCHEMES[s].weight}
        self.hessians = {}
        gptq_layers = [n for n in quantized if any(self._uses_gptq(s) for s in options[n])]
        if gptq_layers:
            from compressor.passes.gptq import collect_hessians

            self.hessians = {n: h for n, (h, _) in collect_hessians(self.model, batches, gptq_layers, **hooks).items()}
        self.static_amax = self._static_ranges(batches, hooks)

    def _uses_gptq(self, scheme: str) -> bool:
        return self.recipe.rounding == "gptq" and SCHEMES[scheme].weight is not None and scheme != "int8"

    def _smoothing(self, name: str, scheme: str) -> SmoothingChoice | None:
        weight = self.linears[name].weight
        if scheme == "int8":
            if not self.recipe.smoothquant:
                return None
            return search_w8a8_smoothing(self.recipe, self.sampler.sample(name), weight, self.sampler.amax[name])
        if self.recipe.awq:
            fmt = make_weight_format(SCHEMES[scheme].weight, self.recipe.group_size, self.recipe.symmetric)
            return search_awq_scales(self.sampler.sample(name), weight, fmt)
        return None

    def smooth(self, name: str, scheme: str) -> torch.Tensor | None:
        choice = self.smoothing.get((name, scheme))
        return None if choice is None else choice.smooth

    def _static_ranges(self, batches, hooks) -> dict:
        """The recipe observer's range of each (smoothed) input that a static scale quantizes."""
        keys = [(n, s) for n in self.options for s in self.options[n] if SCHEMES[s].activation in ("int8", "fp8")]
        if not keys:
            return {}
        observers = {key: make_range_observer(self.recipe) for key in keys}
        by_layer: dict[str, list] = {}
        for key in keys:
            by_layer.setdefault(key[0], []).append(key)

        def observe(name: str, x: torch.Tensor) -> None:
            for key in by_layer[name]:
                smooth = self.smooth(*key)
                observers[key].observe(x if smooth is None else x * smooth)

        run_with_input_hooks(self.model, batches, list(by_layer), observe, desc="calibration: ranges", **hooks)
        return {key: float(obs.compute_amax()) for key, obs in observers.items()}

    def build(self, name: str, scheme: str) -> tuple[nn.Module, LayerRecord]:
        linear, recipe = self.linears[name], self.recipe
        spec = SCHEMES[scheme]
        record = LayerRecord(
            name, scheme, scheme_bits(spec, linear.in_features, recipe.group_size, recipe.symmetric), linear.weight.numel()
        )
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
        if spec.activation in ("int8", "fp8"):
            record.input_amax = self.static_amax[(name, scheme)]
        elif spec.activation == "nvfp4":  # block scales are dynamic; the tensor scale only sets their range
            amax = self.sampler.amax[name] * (1.0 if smooth is None else smooth)
            record.input_amax = float(amax.max())
        if scheme == "int8":
            module = Int8Linear.from_linear(linear, record.input_amax, smooth)
        else:
            rounded = scales = None
            if self._uses_gptq(scheme):
                from compressor.passes.gptq import gptq_quantize

                fmt = make_weight_format(spec.weight, recipe.group_size, recipe.symmetric)
                weight, hessian = linear.weight.detach().float(), self.hessians[name]
                if smooth is not None:  # the layer sees x * smooth and holds W / smooth
                    weight, hessian = weight / smooth, hessian * torch.outer(smooth, smooth).to(hessian.dtype)
                rounded, scales = gptq_quantize(weight, hessian, fmt, damp=recipe.gptq_damp)
                record.rounding = "gptq"
            module = QuantLinear.from_linear(
                linear, scheme, record.input_amax or None, smooth, rounded, scales, recipe.group_size, recipe.symmetric
            )
        record.error = _layer_error(module, linear, self.sampler.sample(name))
        return module, record


def quantize_layers(
    handle, calib_batches: list[dict], recipe: Recipe, sensitivity_batches=None, references=None
) -> QuantizationPlan:
    """Swap the eligible Linear layers for their quantized versions in place; returns the plan."""
    model = handle.model
    options = layer_options(handle.adapter.quantizable_layers(model), recipe, handle.adapter.keep_float)
    # Layers the adapter keeps in float by default are outside the bit budget (reported apart).
    budgeted = [n for n in options if not kept_by_default(n, recipe, handle.adapter.keep_float)]
    if any(len(o) > 1 for o in options.values()):  # fail before the slow part
        check_budget({n: [_bits(model, n, s, recipe) for s in options[n]] for n in budgeted},
                     {n: model.get_submodule(n).weight.numel() for n in budgeted}, recipe.max_bits)
    candidates = _Candidates(handle, calib_batches, recipe, options)
    built = {
        n: {s: candidates.build(n, s) for s in options[n]}
        for n in tqdm(options, desc="quantizing", unit="layer", leave=False)
    }
    plan = QuantizationPlan()
    chosen = {n: options[n][0] for n in options}
    if any(len(o) > 1 for o in options.values()):
        searched, plan.search = _search(handle, {n: built[n] for n in budgeted}, recipe, sensitivity_batches, references)
        chosen.update(searched)
    for name, scheme in chosen.items():
        module, record = built[name][scheme]
        record.in_budget = name in budgeted
        set_module(model, name, module)
        plan.layers.append(record)
    return plan


def _bits(model, name: str, scheme: str, recipe: Recipe) -> float:
    in_features = model.get_submodule(name).in_features
    return scheme_bits(SCHEMES[scheme], in_features, recipe.group_size, recipe.symmetric)


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
