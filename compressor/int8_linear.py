"""The W8A8 Linear layer: INT8 weights per output channel, a static INT8 input scale per tensor."""
from __future__ import annotations

import torch
from torch import nn

from compressor.numerics.int8 import dequantize_int8, fake_quantize_int8, quantize_weight_int8_per_channel


class Int8Linear(nn.Module):
    """y = dequant(quant(x * input_smooth)) @ dequant(W_int8)^T + b.

    ``input_smooth`` (optional, per input channel) is the SmoothQuant migration factor 1/s: the
    weight already holds W * s, so the float product is unchanged while the input's outlier channels
    shrink before per-tensor quantization.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, smooth: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("input_scale", torch.tensor(1.0))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.register_buffer("input_smooth", torch.ones(in_features) if smooth else None)
        # Set by an exporter while it traces the module; eager math otherwise.
        self.export_fn = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, input_amax: float, input_smooth: torch.Tensor | None = None):
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, input_smooth is not None)
        weight = linear.weight.detach().float()
        if input_smooth is not None:
            weight = weight / input_smooth  # W * s
            layer.input_smooth.copy_(input_smooth)
        q, scale = quantize_weight_int8_per_channel(weight)
        layer.weight.copy_(q)
        layer.weight_scale.copy_(scale)
        layer.input_scale.fill_(max(float(input_amax), 1e-12) / 127.0)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach().float())
        return layer

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize_int8(self.weight, self.weight_scale, axis=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.export_fn is not None:
            return self.export_fn(self, x)
        if self.input_smooth is not None:
            x = x * self.input_smooth
        x = fake_quantize_int8(x, self.input_scale)
        return nn.functional.linear(x, self.dequantized_weight(), self.bias)

    def extra_repr(self) -> str:
        smooth = ", smoothed" if self.input_smooth is not None else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, W8A8{smooth}"
