"""ONNX export for two runtimes.

``tensorrt``: explicit quantization as TensorRT consumes it. A W8A8 INT8 Linear becomes
QuantizeLinear→DequantizeLinear on its input (per-tensor scale, zero point 0, int8) and an INT8
weight initializer→DequantizeLinear (per output channel, axis 0)→Transpose→MatMul. Build the engine
strongly typed, with no precision flags.

``onnxruntime``: the CPU provider's integer kernels. A W8A8 input is quantized once with its static
scale (uint8, zero point 128: the same grid as symmetric int8) and fed with the int8 weight to
``com.microsoft.MatMulIntegerToFloat``, which runs the integer GEMM and rescales to float in one op.

Every quantized Linear is a ``QuantLinear``; ``exporters.onnx_lowbit`` lowers each scheme for each
target. Graphs with only INT8 layers are opset 17; for ``tensorrt`` a graph with FP8, FP4 or INT4
layers becomes opset 23 / IR version 11 (FP4, INT4 and FP8 tensors, blocked DequantizeLinear); for
``onnxruntime`` it stays opset 17 with ``com.microsoft.MatMulNBits`` for INT4 weights.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from compressor.errors import CompressorError
from compressor.model import ModelHandle
from compressor.quant_linear import QuantLinear
from compressor.atomic import atomic_file
from exporters.cpu_features import default_int8_weights
from exporters.onnx_lowbit import (
    DOMAIN,
    integer_gemm,
    lower_quant_linears,
    quant_linear_export_fn,
    runtime_kernels,  # noqa: F401 (reports import it from here)
)

TARGETS = ("onnxruntime", "tensorrt")
OPSET = 17


class _Graph(nn.Module):
    """Named positional inputs → the adapter's output tensor."""

    def __init__(self, handle: ModelHandle, input_names: tuple[str, ...]):
        super().__init__()
        self.model, self.adapter, self.input_names = handle.model, handle.adapter, input_names

    def forward(self, *inputs):
        return self.adapter.forward(self.model, dict(zip(self.input_names, inputs)))


INT8_WEIGHTS = ("auto", "int8", "uint8")


def export_onnx(handle: ModelHandle, output: str | Path, target: str = "onnxruntime", overwrite: bool = False,
                int8_weights: str = "auto") -> Path:
    """Write ``handle``'s model as ONNX for ``target`` with the adapter's dynamic axes (batch, sequence).
    ``int8_weights``: how W8A8 layers feed ONNX Runtime's integer GEMM ("int8": u8·s8, fast on CPUs with
    int8 dot products; "uint8": u8·u8, exact on AVX2; "auto": what this CPU favours)."""
    if target not in TARGETS:
        raise CompressorError(f"unknown export target '{target}'; choose one of: {', '.join(TARGETS)}")
    if int8_weights not in INT8_WEIGHTS:
        raise CompressorError(f"unknown int8 weight type '{int8_weights}'; choose one of: {', '.join(INT8_WEIGHTS)}")
    if int8_weights == "auto":
        int8_weights = default_int8_weights()
    output = Path(output)
    input_names = handle.adapter.input_names(handle.tokenizer)
    output_names = list(handle.adapter.output_names)
    dummy = handle.adapter.dummy_inputs(handle)
    axes = handle.adapter.dynamic_axes(input_names)
    # Graph names of the low-bit layers: the module path under _Graph's "model" attribute.
    quant = {f"model.{name}": m for name, m in handle.model.named_modules() if isinstance(m, QuantLinear)}
    for key, layer in quant.items():
        layer.export_fn = quant_linear_export_fn(target, key)
        with torch.no_grad():
            layer.dequantized_weight()  # fill the cache now: unpacking inside the trace would be traced
    custom_opsets = {DOMAIN: 1} if quant else {}
    try:
        with atomic_file(output, overwrite) as scratch, warnings.catch_warnings(), \
                handle.adapter.export_attention(handle.model):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Graph(handle, input_names).eval(),
                tuple(dummy[name] for name in input_names),
                str(scratch),
                input_names=list(input_names),
                output_names=output_names,
                dynamic_axes=axes,
                opset_version=OPSET,
                do_constant_folding=True,
                custom_opsets=custom_opsets or None,
                dynamo=False,
            )
            graph = onnx.load(str(scratch))
            fold_static_squeezes(graph)
            if quant:
                graph = lower_quant_linears(graph, quant, target, int8_weights)
            graph.producer_name = "compressor"
            graph.doc_string = f"target={target}"
            if target == "onnxruntime" and any(integer_gemm(layer, target) for layer in quant.values()):
                helper.set_model_props(graph, {"int8_weights": int8_weights})
            onnx.checker.check_model(graph)
            onnx.save(graph, str(scratch))
    finally:
        for layer in quant.values():
            layer.export_fn = None
    return output


def fold_static_squeezes(model: onnx.ModelProto) -> None:
    """The tracer writes ``x.squeeze(d)`` as If(shape[d] == 1, Squeeze, Identity) when it lost dim d's size
    (a Reshape to -1 behind a dynamic batch does that). ONNX shape inference often still knows the size
    (PixArt's patch count), and ONNX Runtime rejects an If whose Squeeze branch cannot type-check, so
    each such If whose dim is known becomes the branch that runs."""
    ifs = [node for node in model.graph.node if node.op_type == "If"]
    if not ifs:
        return
    inferred = onnx.shape_inference.infer_shapes(model).graph
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in (*inferred.value_info, *inferred.input)}
    for node in ifs:
        branches = {a.name: list(a.g.node) for a in node.attribute}
        then, other = branches["then_branch"], branches["else_branch"]
        if [n.op_type for n in then] != ["Constant", "Squeeze"] or [n.op_type for n in other] != ["Identity"]:
            continue
        x, axes = other[0].input[0], numpy_helper.to_array(then[0].attribute[0].t).reshape(-1).tolist()
        shape = shapes.get(x)
        if len(axes) != 1 or not shape or not -len(shape) <= axes[0] < len(shape) or shape[axes[0]] is None:
            continue
        if shape[axes[0]] == 1:
            replacement = [then[0], helper.make_node("Squeeze", [x, then[0].output[0]], list(node.output), name=node.name)]
        else:
            replacement = [helper.make_node("Identity", [x], list(node.output), name=node.name)]
        index = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        for offset, new in enumerate(replacement):
            model.graph.node.insert(index + offset, new)


def onnx_session(path: str | Path, threads: int = 2, constant_folding: bool = True):
    """A CPU session with every graph optimization. ``constant_folding=False`` leaves out ONNX Runtime's
    ConstantFolding pass, so weights stored packed (see exporters/onnx_lowbit.py) are decoded at every run
    instead of being expanded once into float initializers when the session loads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle workers do not spin: when models are timed in turn, a spinning pool of the model that just ran
    # takes cores from the next one, while a model timed alone barely gains from spinning (see the timing
    # note in docs/results.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not constant_folding:  # the documented session option (the constructor's disabled_optimizers is internal)
        options.add_session_config_entry("optimization.disable_specified_optimizers", "ConstantFolding")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
