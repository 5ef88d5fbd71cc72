"""Rounding strategies behind one small interface: given a layer's (transformed) weight, its input
Hessian and the weight format, return the weight on the format's grid and the scales to store it with.
A format names the strategy it takes for each recipe ``rounding`` (``WeightFormat.roundings``); the
quantize pass looks the strategy up here and calls it, so adding one is a class and a registry line."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from compressor.errors import CompressorError
from compressor.registry import Registry

ROUNDINGS = Registry("rounding strategy")


@dataclass
class LayerProblem:
    """One layer to round: its float weight [out, in], the Hessian of its inputs (None when the strategy
    needs none), its weight format, its sparsity mask (True = kept), the transforms the weight and the
    Hessian go through first (compressor/passes/transforms.py), and the quantize config."""

    name: str
    weight: torch.Tensor
    hessian: torch.Tensor | None
    fmt: object
    mask: torch.Tensor | None
    transforms: list = field(default_factory=list)
    config: object = None

    def transformed(self) -> tuple[torch.Tensor, torch.Tensor]:
        weight, hessian = self.weight.detach().float(), self.hessian
        for transform in self.transforms:
            weight, hessian = transform.weight(weight), transform.hessian(hessian)
        return weight, hessian


@dataclass
class Rounded:
    """``weight``/``scales``: on the format's grid, stored as they are (None: the module rounds the
    transformed float weight to nearest itself). ``rounding``: what the layer record says was done."""

    weight: torch.Tensor | None
    scales: dict | None
    rounding: str
    damp: float | None = None  # the damping it took, when more than the recipe's


class RoundingStrategy:
    needs_hessian = True

    def round(self, problem: LayerProblem) -> Rounded:
        raise NotImplementedError


@ROUNDINGS.register("nearest")
class NearestRounding(RoundingStrategy):
    needs_hessian = False

    def round(self, problem):
        return Rounded(None, None, "rtn")


@ROUNDINGS.register("gptq")
class GptqRounding(RoundingStrategy):
    def round(self, problem):
        from compressor.passes.gptq import gptq_quantize

        weight, hessian = problem.transformed()
        report: dict = {}
        rounded, scales = gptq_quantize(weight, hessian, problem.fmt, damp=problem.config.gptq_damp, report=report,
                                        mask=problem.mask)
        damp = report["damp"] if report["damp"] > problem.config.gptq_damp else None
        return Rounded(rounded, scales, "gptq", damp)


class _VectorRounding(RoundingStrategy):
    """VQ: a codebook per layer, then indices by nearest entry (optionally refined on the layer's output
    error, compressor/passes/vq_refine.py)."""

    label = "rtn"

    def codebook(self, weight, hessian, fmt, config) -> tuple[torch.Tensor | None, dict]:
        raise NotImplementedError

    def round(self, problem):
        from compressor.numerics.vq import nearest_entries, sub_vectors
        from compressor.passes.vq_refine import refine_assignment

        fmt, config = problem.fmt, problem.config
        fmt.check_layer(problem.weight.shape[1], where=problem.name)
        if problem.transforms or problem.mask is not None:
            raise CompressorError(f"{problem.name}: vector quantization does not combine with rotation or 2:4 sparsity")
        weight, hessian = problem.weight.detach().float(), problem.hessian
        rounded, scales = self.codebook(weight, hessian, fmt, config)
        rounding = self.label
        normalized = (weight if rounded is None else rounded) / scales["scale"].float()[:, None]
        indices = nearest_entries(sub_vectors(normalized, fmt.dim), scales["codebook"].float()).reshape(len(weight), -1)
        if config.vq_refine_steps:
            codebook, indices, _ = refine_assignment(weight, hessian.float(), scales["codebook"], scales["scale"],
                                                     indices, fmt.dim, config.vq_candidates, config.vq_refine_steps)
            scales = {"codebook": codebook, "scale": scales["scale"]}
            rounding += "+refined"
        vectors = scales["codebook"].float()[indices.reshape(-1)].reshape(weight.shape)
        return Rounded(vectors * scales["scale"].float()[:, None], scales, rounding)


@ROUNDINGS.register("vq_nearest")
class VqNearestRounding(_VectorRounding):
    """Hessian-weighted k-means codebook, nearest entries."""

    def codebook(self, weight, hessian, fmt, config):
        from compressor.numerics.vq import row_scales
        from compressor.passes.gptvq import hessian_codebook

        scale = row_scales(weight)
        return None, {"codebook": hessian_codebook(weight, hessian, fmt, scale), "scale": scale}


@ROUNDINGS.register("gptvq")
class GptvqRounding(_VectorRounding):
    """GPTVQ's error feedback through the inverse Hessian while assigning entries."""

    label = "gptvq"

    def codebook(self, weight, hessian, fmt, config):
        from compressor.passes.gptvq import gptvq_quantize

        return gptvq_quantize(weight, hessian, fmt, damp=config.gptq_damp, codebook_updates=config.vq_codebook_updates)


def rounding_for(scheme, fmt, recipe_rounding: str) -> RoundingStrategy:
    """The strategy a layer in ``scheme`` takes under the recipe's ``rounding``: the format's own choice,
    round-to-nearest for a scheme that keeps it under error feedback (W8A8 INT8)."""
    wanted = recipe_rounding if scheme.error_feedback else "rtn"
    return ROUNDINGS.lookup(fmt.roundings[wanted])()
