"""Weight formats behind one small interface, and the per-layer schemes built from them.

A weight format turns a float [out, in] weight into the tensors stored on disk and back. It also
exposes its scales group by group (``group_size`` consecutive input columns share one scale), which
is what error-compensating rounding needs: it fixes a group's scales, then rounds column by column.

Each format is one entry of ``WEIGHT_FORMATS`` (name → a factory taking the recipe's group size,
symmetry and VQ shape) and answers for itself: its bits, its stored tensors, which rounding
strategies apply to it (``roundings``), how a module checks its shape, how an embedding looks rows
up. A new format is a class here (or in its own file) with one ``@WEIGHT_FORMATS.register`` line;
its ONNX lowering registers in ``exporters/onnx_lowbit.py`` under the same name.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from compressor.numerics.fp4 import round_to_e2m1
from compressor.numerics.fp8 import E4M3_MAX, decode_e8m0, dequantize_fp8, encode_e8m0, quantize_fp8, to_e4m3
from compressor.numerics.int4 import dequantize_int3, dequantize_int4, int4_scales, quantize_int3, quantize_int4
from compressor.numerics.int8 import INT8_MAX, INT8_MIN, dequantize_int8, int8_scale, quantize_int8
from compressor.numerics.mxfp4 import MXFP4_BLOCK, dequantize_mxfp4, mxfp4_exponents, quantize_mxfp4
from compressor.numerics.nvfp4 import NVFP4_BLOCK, dequantize_nvfp4, nvfp4_block_scales, nvfp4_tensor_scale, quantize_nvfp4
from compressor.numerics.activations import ACTIVATION_FORMATS, ActivationFormat
from compressor.numerics.vq import check_vq_shape, dequantize_vq, quantize_vq, vq_bits_per_weight
from compressor.registry import Registry

Tensors = dict[str, torch.Tensor]

# weight format name → factory(group_size, symmetric, vq_shape) -> WeightFormat
WEIGHT_FORMATS = Registry("weight format")


class WeightFormat:
    name: str
    group_size: int | None = None  # None: one scale per output row
    # Rounding strategy (compressor/passes/rounding.py) per recipe ``rounding``: scalar grids round
    # column by column, a vector format rounds whole sub-vectors.
    roundings = {"rtn": "nearest", "gptq": "gptq"}
    gathers_rows = False  # an embedding table in this format looks rows up without expanding it

    @classmethod
    def create(cls, group_size: int = 128, symmetric: bool = True, vq_shape: tuple[int, int] | None = None):
        return cls()

    def check_layer(self, in_features: int, where: str = "") -> None:
        """Refuse a layer shape the format cannot hold (one-line error naming ``where``)."""

    def gather_rows(self, t: Tensors, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def bits_per_weight(self, in_features: int, out_features: int | None = None) -> float:
        raise NotImplementedError

    def shared_scales(self, w: torch.Tensor) -> Tensors:
        """Scales that belong to the whole tensor (NVFP4's FP32 tensor scale); most formats have none."""
        return {}

    def group_scales(self, w_group: torch.Tensor, shared: Tensors) -> Tensors:
        """Scales of one column group [out, g] as [out, 1] tensors."""
        raise NotImplementedError

    def fake_quantize(self, w: torch.Tensor, scales: Tensors) -> torch.Tensor:
        """Round columns ``w`` [out, c] onto the grid that ``scales`` ([out, 1] and shared) define."""
        raise NotImplementedError

    def quantize(self, w: torch.Tensor, scales: Tensors | None = None) -> Tensors:
        raise NotImplementedError

    def dequantize(self, t: Tensors) -> torch.Tensor:
        raise NotImplementedError

    def dequantize_as(self, t: Tensors, rows: int, columns: int) -> torch.Tensor:
        """``dequantize`` for a format whose stored tensors do not tell the weight's shape."""
        return self.dequantize(t)

    def describe(self) -> dict:
        return {"weight_format": self.name}


@WEIGHT_FORMATS.register("int8")
class Int8Weight(WeightFormat):
    name = "int8"
    gathers_rows = True

    def gather_rows(self, t, ids):
        return t["values"][ids].float() * t["scale"][ids].unsqueeze(-1)

    def bits_per_weight(self, in_features: int, out_features: int | None = None) -> float:
        return 8 + 32 / in_features

    def group_scales(self, w_group, shared):
        return {"scale": int8_scale(w_group.abs().amax(dim=1, keepdim=True))}

    def fake_quantize(self, w, scales):
        return torch.round(w / scales["scale"]).clamp(INT8_MIN, INT8_MAX) * scales["scale"]

    def quantize(self, w, scales=None):
        scale = (scales or self.group_scales(w, {}))["scale"].reshape(-1)
        return {"values": quantize_int8(w, scale, axis=0), "scale": scale}

    def dequantize(self, t):
        return dequantize_int8(t["values"], t["scale"], axis=0)


@WEIGHT_FORMATS.register("fp8")
class Fp8Weight(WeightFormat):
    name = "fp8"

    def bits_per_weight(self, in_features: int, out_features: int | None = None) -> float:
        return 8 + 32 / in_features

    def group_scales(self, w_group, shared):
        amax = w_group.abs().amax(dim=1, keepdim=True)
        return {"scale": torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))}

    def fake_quantize(self, w, scales):
        return to_e4m3(w / scales["scale"]).float() * scales["scale"]

    def quantize(self, w, scales=None):
        if scales is None:
            q, scale = quantize_fp8(w, axis=0)
            return {"values": q, "scale": scale}
        scale = scales["scale"].reshape(-1)
        return {"values": to_e4m3(w / scale[:, None]), "scale": scale}

    def dequantize(self, t):
        return dequantize_fp8(t["values"], t["scale"], axis=0)


@WEIGHT_FORMATS.register("int4")
@dataclass
class Int4Weight(WeightFormat):
    group_size: int = 128
    symmetric: bool = True
    name = "int4"
    bits = 4

    @classmethod
    def create(cls, group_size=128, symmetric=True, vq_shape=None):
        return cls(group_size, symmetric)

    def bits_per_weight(self, in_features: int, out_features: int | None = None) -> float:
        return self.bits + (32 + (0 if self.symmetric else 8)) / self.group_size

    def group_scales(self, w_group, shared):
        scale, zero = int4_scales(w_group, w_group.shape[1], self.symmetric, self.bits)
        return {"scale": scale, "zero": zero}

    def fake_quantize(self, w, scales):
        scale, zero = scales["scale"], scales["zero"].float()
        return ((torch.round(w / scale) + zero).clamp(0, 2**self.bits - 1) - zero) * scale

    def quantize(self, w, scales=None):
        if scales is None:
            return quantize_int4(w, self.group_size, self.symmetric)
        return quantize_int4(w, self.group_size, self.symmetric, scales["scale"], scales["zero"])

    def dequantize(self, t):
        return dequantize_int4(t["packed"], t["scale"], t["zero"])

    def describe(self) -> dict:
        return {"weight_format": self.name, "group_size": self.group_size, "symmetric": self.symmetric}


@WEIGHT_FORMATS.register("int3")
@dataclass
class Int3Weight(Int4Weight):
    """Group-wise INT3: the INT4 grids with 8 levels, codes bit-packed 8 per 3 bytes."""

    group_size: int = 64
    name = "int3"
    bits = 3

    def quantize(self, w, scales=None):
        if scales is None:
            return quantize_int3(w, self.group_size, self.symmetric)
        return quantize_int3(w, self.group_size, self.symmetric, scales["scale"], scales["zero"])

    def dequantize(self, t):
        return dequantize_int3(t["codes"], t["scale"], t["zero"], self.group_size)


@WEIGHT_FORMATS.register("nvfp4")
class Nvfp4Weight(WeightFormat):
    name = "nvfp4"
    group_size = NVFP4_BLOCK

    def bits_per_weight(self, in_features: int, out_features: int | None = None) -> float:
        return 4 + 8 / NVFP4_BLOCK

    def shared_scales(self, w):
        return {"tensor_scale": nvfp4_tensor_scale(w.abs().amax())}

    def group_scales(self, w_group, shared):
        return {"block_scale": nvfp4_block_scales(w_group, shared["tensor_scale"])}

    def fake_quantize(self, w, scales):
        scale = scales["block_scale"].float() * scales["tensor_scale"]
        return round_to_e2m1(w / scale) * scale

    def quantize(self, w, scales=None):
        if scales is None:
            return quantize_nvfp4(w)
        return quantize_nvfp4(w, scales["block_scale"], scales["tensor_scale"])

    def dequantize(self, t):
        return dequantize_nvfp4(t["packed"], t["block_scale"], t["tensor_scale"])


@WEIGHT_FORMATS.register("mxfp4")
class Mxfp4Weight(WeightFormat):
    name = "mxfp4"
    group_size = MXFP4_BLOCK

    def bits_per_weight(self, in_features: int, out_features: int | None = None) -> float:
        return 4 + 8 / MXFP4_BLOCK

    def group_scales(self, w_group, shared):
        return {"scale": encode_e8m0(mxfp4_exponents(w_group))}

    def fake_quantize(self, w, scales):
        scale = decode_e8m0(scales["scale"])
        return round_to_e2m1(w / scale) * scale

    def quantize(self, w, scales=None):
        return quantize_mxfp4(w, None if scales is None else scales["scale"])

    def dequantize(self, t):
        return dequantize_mxfp4(t["packed"], t["scale"])


@dataclass
class VqWeight(WeightFormat):
    """Vector quantization (compressor/numerics/vq.py): sub-vectors of ``dim`` input columns as indices
    into a per-layer FP16 codebook of ``entries`` vectors, FP16 scale per row. Rounding is whole sub-vectors,
    so the column-group interface of scalar formats (``group_scales``/``fake_quantize``) does not apply:
    error-compensating VQ lives in compressor/passes/gptvq.py."""

    dim: int = 2
    entries: int = 64
    name = "vq"
    roundings = {"rtn": "vq_nearest", "gptq": "gptvq"}

    def __post_init__(self):
        check_vq_shape(self.dim, self.entries)

    def check_layer(self, in_features: int, where: str = "") -> None:
        check_vq_shape(self.dim, self.entries, in_features, where=where or "vq")

    def bits_per_weight(self, in_features: int, out_features: int | None = None) -> float:
        if out_features is None:
            raise ValueError("VQ bits per weight depend on the layer's rows (the codebook is per layer)")
        return vq_bits_per_weight(self.dim, self.entries, out_features, in_features)

    def quantize(self, w, scales=None):
        """``scales``: {'codebook', 'scale'} fixed by error-compensating VQ (``w`` then lies on that grid)."""
        scales = scales or {}
        codebook = scales.get("codebook")
        if codebook is None and not bool(w.any()):  # the zero weight a module registers its buffers with
            codebook = torch.zeros(self.entries, self.dim)
        return quantize_vq(w, self.dim, self.entries, codebook, scales.get("scale"))

    def dequantize(self, t):
        raise ValueError("a VQ weight needs its shape to be dequantized: use dequantize_as")

    def dequantize_as(self, t, rows, columns):
        return dequantize_vq(t, self.dim, self.entries, columns)

    def describe(self) -> dict:
        return {"weight_format": self.name, "vq_dim": self.dim, "vq_entries": self.entries}


# (sub-vector dimension, codebook entries) of the VQ schemes: 6-bit indices per 2 weights, 8-bit per 4.
VQ_SHAPES = {"vq3": (2, 64), "vq2": (4, 256)}


def _vq_factory(shape: tuple[int, int]):
    def create(group_size=128, symmetric=True, vq_shape=None):
        return VqWeight(*(vq_shape or shape))

    return create


for _name, _shape in VQ_SHAPES.items():
    WEIGHT_FORMATS.register(_name)(_vq_factory(_shape))


def layer_group_size(group_size: int, in_features: int) -> int:
    """INT4 group size for a layer: a layer narrower than the group is one group per row (a small ViT's
    64-wide inputs under the default 128), anything else keeps the recipe's size."""
    return in_features if in_features < group_size else group_size


def make_weight_format(name: str, group_size: int = 128, symmetric: bool = True,
                       vq_shape: tuple[int, int] | None = None) -> WeightFormat:
    """``vq_shape`` (dim, entries) replaces a VQ scheme's own (``VQ_SHAPES``)."""
    if name not in WEIGHT_FORMATS:
        raise ValueError(f"unknown weight format {name!r}")
    factory = WEIGHT_FORMATS[name]
    create = factory.create if isinstance(factory, type) else factory
    return create(group_size=group_size, symmetric=symmetric, vq_shape=vq_shape)


@dataclass(frozen=True)
class Scheme:
    """What one Linear layer becomes: a weight format and how its input is quantized.

    activation: 'none' (weight-only), 'int8' / 'fp8' (static per-tensor scale from calibration),
    'nvfp4' (dynamic E4M3 block scales, static FP32 tensor scale), 'mxfp4' (dynamic E8M0 block scales)
    (``compressor/numerics/activations.py``). ``migration``: the outlier-migration pass whose search
    applies to the layer when the recipe has it (SmoothQuant's W8A8 error, AWQ's weight-only error;
    none for VQ, whose rounding is not by column groups). ``error_feedback``: whether a ``gptq`` recipe
    rounds it with error feedback (W8A8 INT8 keeps round-to-nearest with its SmoothQuant search).
    """

    name: str
    weight: str | None  # None: the layer stays in float
    activation: str
    description: str
    migration: str | None = "awq"
    error_feedback: bool = True

    @property
    def is_float(self) -> bool:
        return self.weight is None

    @property
    def input(self) -> ActivationFormat:
        return ACTIVATION_FORMATS[self.activation]


SCHEMES = Registry("scheme")
for _scheme in [
    Scheme("int8", "int8", "int8", "W8A8 INT8: per-channel weights, static per-tensor inputs", "smoothquant", False),
    Scheme("fp8", "fp8", "fp8", "W8A8 FP8 E4M3: per-channel weights, static per-tensor inputs"),
    Scheme("nvfp4", "nvfp4", "nvfp4", "W4A4 NVFP4: weights and dynamic block-scaled inputs"),
    Scheme("mxfp4", "mxfp4", "mxfp4", "W4A4 MXFP4: weights and dynamic block-scaled inputs"),
    Scheme("w4a16-nvfp4", "nvfp4", "none", "NVFP4 weights, float inputs"),
    Scheme("w4a16-mxfp4", "mxfp4", "none", "MXFP4 weights, float inputs"),
    Scheme("w4a16-int4", "int4", "none", "group-wise INT4 weights, float inputs"),
    Scheme("w8a16-int8", "int8", "none", "per-channel INT8 weights, float inputs"),
    Scheme("w3a16-int3", "int3", "none", "group-wise INT3 weights, float inputs"),
    Scheme("w4a8-int4", "int4", "int8", "group-wise INT4 weights, static per-tensor INT8 inputs"),
    Scheme("w4a8-nvfp4", "nvfp4", "int8", "NVFP4 weights, static per-tensor INT8 inputs"),
    Scheme("vq3", "vq3", "none", "vector-quantized weights, about 3 bits (2-weight sub-vectors, 64 entries), float inputs",
           None),
    Scheme("vq2", "vq2", "none", "vector-quantized weights, about 2 bits (4-weight sub-vectors, 256 entries), float inputs",
           None),
    Scheme("vq3-int8", "vq3", "int8", "about 3-bit vector-quantized weights, static per-tensor INT8 inputs", None),
    Scheme("vq2-int8", "vq2", "int8", "about 2-bit vector-quantized weights, static per-tensor INT8 inputs", None),
    Scheme("vq3-fp8", "vq3", "fp8", "about 3-bit vector-quantized weights, static per-tensor FP8 inputs", None),
    Scheme("float", None, "none", "kept in 16/32-bit float", None),
]:
    SCHEMES.register(_scheme.name)(_scheme)

FLOAT = "float"  # the scheme of a layer kept in float, as layer records name it


def is_float_scheme(name: str) -> bool:
    """Whether a layer record's scheme (or an embedding record's format) keeps the weights in float."""
    return SCHEMES[name].is_float if name in SCHEMES else False


def scheme_bits(scheme: Scheme, in_features: int, group_size: int = 128, symmetric: bool = True,
                out_features: int | None = None, vq_shape: tuple[int, int] | None = None) -> float:
    """Effective bits per weight with scale (and codebook) overhead; a float layer counts as 16 (its
    deployed width). VQ schemes need ``out_features``: their codebook is per layer."""
    if scheme.weight is None:
        return 16.0
    return make_weight_format(scheme.weight, group_size, symmetric, vq_shape).bits_per_weight(in_features, out_features)
