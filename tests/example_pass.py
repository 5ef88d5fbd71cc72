"""A pass written the way any new pass is: its own file and one registry line (the decorator), nothing
else in the product changes. Bias correction: after quantization a Linear's output is off by a
systematic mean, E[x]·(W - Ŵ)ᵀ; adding it back to the bias removes it."""
import torch
from pydantic import Field

from compressor.passes.base import PASSES, Pass, PassConfig
from compressor.passes.plan import QuantizationPlan
from compressor.quant_linear import QuantLinear


class BiasCorrectionConfig(PassConfig):
    strength: float = Field(1.0, ge=0, le=1)  # share of the measured mean error added back


@PASSES.register("bias_correction")
class BiasCorrectionPass(Pass):
    Config = BiasCorrectionConfig
    stage = "refine"
    statistics = ("samples",)
    requires = (QuantizationPlan,)  # the float layers quantize replaced

    def apply(self, context) -> dict:
        originals = context.result(QuantizationPlan).originals
        corrected = {}
        for name, module in context.handle.model.named_modules():
            if not isinstance(module, QuantLinear) or module.bias is None:
                continue
            # Inputs as the quantized model feeds them: quantize replaced the layer, so the service
            # gathers this layer's statistics again.
            x = context.calibration.samples(name)
            with torch.no_grad():
                shift = (originals[name](x) - module(x)).mean(dim=0) * self.config.strength
                module.bias += shift
            corrected[name] = float(shift.abs().max())
        return {"layers": len(corrected), "max_shift": max(corrected.values(), default=0.0)}
