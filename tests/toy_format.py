"""A weight format written the way any new one is: this file, with its registry lines (the decorators and
the scheme), and nothing else in the product changes. INT6: per-row symmetric 6-bit codes (-31..31), one
per int8 byte, and an FP32 scale per row."""
import torch

from compressor.numerics.formats import SCHEMES, Scheme, WEIGHT_FORMATS, WeightFormat
from exporters.onnx_lowbit import WEIGHT_DEQUANTIZERS

INT6_MAX = 31


@WEIGHT_FORMATS.register("int6")
class Int6Weight(WeightFormat):
    name = "int6"

    def bits_per_weight(self, in_features, out_features=None):
        return 8 + 32 / in_features  # what it stores: one byte a code, one scale a row

    def group_scales(self, w_group, shared):
        amax = w_group.abs().amax(dim=1, keepdim=True)
        return {"scale": torch.where(amax > 0, amax / INT6_MAX, torch.ones_like(amax))}

    def fake_quantize(self, w, scales):
        return torch.round(w / scales["scale"]).clamp(-INT6_MAX, INT6_MAX) * scales["scale"]

    def quantize(self, w, scales=None):
        scale = (scales or self.group_scales(w, {}))["scale"].reshape(-1, 1)
        return {"codes": torch.round(w / scale).clamp(-INT6_MAX, INT6_MAX).to(torch.int8), "scale": scale.reshape(-1)}

    def dequantize(self, t):
        return t["codes"].float() * t["scale"][:, None]


SCHEMES.register("w6a16-int6")(Scheme("w6a16-int6", "int6", "none", "per-row INT6 weights, float inputs"))


@WEIGHT_DEQUANTIZERS.register("int6")
def int6_onnx_weight(low, key, layer, t, shape):
    """INT6 codes are valid INT8 values: DequantizeLinear per output row."""
    codes = low.array(f"{key}.weight", t["codes"])
    return low.node("DequantizeLinear", [codes, low.array(f"{key}.weight_scale", t["scale"])], f"{key}.weight_dq",
                    axis=0)
