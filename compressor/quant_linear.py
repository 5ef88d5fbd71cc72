"""A Linear layer with low-precision weights stored as the format's real tensors (packed FP4/INT4
codes, FP8 values, scales), and its input quantized the way the scheme says.

The float weight is rebuilt once from the stored tensors and cached (the cache is not part of the
state dict, so checkpoints hold only the packed form). Input quantization uses exportable ops, so
an ONNX graph that keeps it in float computes the same numbers as PyTorch.
"""
from __future__ import annotations

import torch
from torch import nn

from compressor.numerics.activations import ACTIVATION_FORMATS
from compressor.numerics.formats import SCHEMES, Scheme, make_weight_format
from compressor.numerics.hadamard import check_rotatable, hadamard_matrix, rotate_blocks
from compressor.registry import Registry

WEIGHT_PREFIX = "weight_"
# Module kinds a compressed checkpoint can hold: kind → class with ``from_entry`` (see checkpoint_entry).
MODULE_KINDS = Registry("module kind")


class PackedWeight(nn.Module):
    """A module whose weight lives as a format's stored tensors (buffers ``weight_<key>``) and is
    expanded to float once, on first use; loading a state dict drops the expanded copy."""

    def register_packed_weight(self, fmt, rows: int, columns: int) -> None:
        self.format = fmt
        self._packed_shape = (rows, columns)
        # Shapes and dtypes of the stored tensors: quantize a zero weight.
        for key, value in fmt.quantize(torch.zeros(rows, columns)).items():
            self.register_buffer(WEIGHT_PREFIX + key, value)
        self._weight_cache: torch.Tensor | None = None

    def store_weight(self, weight: torch.Tensor, scales: dict | None = None) -> None:
        for key, value in self.format.quantize(weight, scales).items():
            getattr(self, WEIGHT_PREFIX + key).copy_(value)
        self._weight_cache = None

    def stored_weight(self) -> dict[str, torch.Tensor]:
        n = len(WEIGHT_PREFIX)
        return {name[n:]: buf for name, buf in self.named_buffers(recurse=False) if name.startswith(WEIGHT_PREFIX)}

    def dequantized_weight(self) -> torch.Tensor:
        if self._weight_cache is None:
            self._weight_cache = self.format.dequantize_as(self.stored_weight(), *self._packed_shape)
        return self._weight_cache

    def storage_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.stored_weight().values())

    def _load_from_state_dict(self, *args, **kwargs):
        self._weight_cache = None
        super()._load_from_state_dict(*args, **kwargs)


@MODULE_KINDS.register("quant_linear")
class QuantLinear(PackedWeight):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        scheme: str,
        smooth: bool = False,
        group_size: int = 128,
        symmetric: bool = True,
        rotation: int = 0,
        vq_shape: tuple[int, int] | None = None,
    ):
        super().__init__()
        self.scheme: Scheme = SCHEMES[scheme]
        if self.scheme.weight is None:
            raise ValueError("QuantLinear needs a scheme with a quantized weight")
        self.in_features, self.out_features = in_features, out_features
        fmt = make_weight_format(self.scheme.weight, group_size, symmetric, vq_shape)
        fmt.check_layer(in_features)
        self.register_packed_weight(fmt, out_features, in_features)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.register_buffer("input_smooth", torch.ones(in_features) if smooth else None)
        self.register_buffer("input_scale", torch.tensor(1.0) if self.scheme.input.has_static_scale else None)
        # Block size of the input's Hadamard rotation (0: none). The stored weight is the rotated one,
        # W R; the (smoothed) input is rotated, x R, before its quantization. Not a buffer: the
        # checkpoint's layer record carries it.
        if rotation:
            check_rotatable(in_features, rotation)
        self.rotation = rotation
        self.export_fn = None  # set by an exporter while it traces the module

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        scheme: str,
        input_amax: float | None = None,
        input_smooth: torch.Tensor | None = None,
        rounded_weight: torch.Tensor | None = None,
        scales: dict | None = None,
        group_size: int = 128,
        symmetric: bool = True,
        rotation: int = 0,
        vq_shape: tuple[int, int] | None = None,
    ) -> "QuantLinear":
        """``rounded_weight``/``scales``: a weight already on the format's grid (error-compensating
        rounding), stored as is (with ``rotation``, the rounded rotated weight). Otherwise the
        (smoothed, rotated) float weight is rounded to nearest."""
        layer = cls(
            linear.in_features, linear.out_features, linear.bias is not None, scheme,
            input_smooth is not None, group_size, symmetric, rotation, vq_shape,
        )
        weight = linear.weight.detach().float()
        if input_smooth is not None:
            weight = weight / input_smooth
            layer.input_smooth.copy_(input_smooth)
        if rotation:
            weight = rotate_blocks(weight, hadamard_matrix(rotation))
        if rounded_weight is not None:
            weight = rounded_weight
        layer.store_weight(weight, scales)
        if layer.input_scale is not None:
            layer.input_scale.fill_(layer.scheme.input.static_scale(input_amax))
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach().float())
        return layer

    def checkpoint_entry(self) -> dict:
        """What rebuilds this module's shape before its stored tensors are loaded."""
        fmt = self.format.describe()
        return {"module": self.registered_name, "in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "scheme": self.scheme.name, "smooth": self.input_smooth is not None,
                "group_size": fmt.get("group_size", 128), "symmetric": fmt.get("symmetric", True),
                "rotation": self.rotation, **({"vq_shape": [fmt["vq_dim"], fmt["vq_entries"]]} if "vq_dim" in fmt else {})}

    @classmethod
    def from_entry(cls, entry: dict) -> "QuantLinear":
        return cls(entry["in_features"], entry["out_features"], entry["bias"], entry["scheme"], entry["smooth"],
                   entry["group_size"], entry["symmetric"], entry.get("rotation", 0),
                   tuple(entry["vq_shape"]) if "vq_shape" in entry else None)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_smooth is not None:
            x = x * self.input_smooth
        if self.rotation:
            x = rotate_blocks(x, hadamard_matrix(self.rotation, x.dtype, x.device))
        return self.scheme.input.fake_quantize(x, self.input_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.export_fn is not None:
            return self.export_fn(self, x)
        return nn.functional.linear(self.quantize_input(x), self.dequantized_weight(), self.bias)

    def extra_repr(self) -> str:
        smooth = ", smoothed" if self.input_smooth is not None else ""
        rotation = f", hadamard {self.rotation}" if self.rotation else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.scheme.name}{smooth}{rotation}"


def fake_quantize_input(activation: str, x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """``x`` through the named input format's run-time quantization (float ops)."""
    return ACTIVATION_FORMATS.lookup(activation).fake_quantize(x, scale)
