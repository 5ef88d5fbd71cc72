"""ONNX export of ``QuantLinear`` layers (FP8, NVFP4, MXFP4, INT4, INT8 weight-only) for both targets.

Tracing uses the TorchScript exporter at opset 17, which has no FP4/INT4 types, no FP8 Q/DQ and no
blocked ``DequantizeLinear``. So each layer traces through placeholders in the ``compressor`` domain
(``QuantizeInput``, ``QuantMatMul``), carrying only the layer's name, and ``lower_quant_linears``
rewrites the saved graph: it writes the stored tensors as typed initializers (raw bytes: FP4 and
INT4 pack two elements per byte, first element in the low nibble, like the checkpoint) and the
target's node pattern.

``tensorrt`` (explicit quantization, strongly typed network): the graph is converted to **opset 23,
IR version 11** (``onnx.version_converter`` rewrites the ops whose signature changed, e.g.
ReduceMax's axes becoming an input). Per layer ``x [→ Mul(smooth)] → input quantization → MatMul(x,
Transpose(W)) [→ Add(bias)]`` with W:

* NVFP4: FLOAT4E2M1 [out, in] ← DequantizeLinear(axis=-1, block_size=16) with the block scales
  ``DequantizeLinear(FLOAT8E4M3FN [out, in/16], FP32 tensor scale)`` (TensorRT's double DQ).
* MXFP4: FLOAT4E2M1 ← DequantizeLinear(axis=-1, block_size=32), FP32 scales 2^e (exact).
* FP8: FLOAT8E4M3FN [out, in] ← DequantizeLinear(per output channel, axis 0).
* INT4: INT4 codes q-8 (symmetric, no zero point) or UINT4 codes + UINT4 zero points
  (asymmetric) ← DequantizeLinear(axis=-1, block_size=group). TensorRT quantizes symmetrically
  only (signed INT4, weight-only), so the asymmetric form is valid ONNX that it will not take.
* INT8 (weight-only or W8A8): INT8 ← DequantizeLinear(axis 0).

Inputs: INT8 → QuantizeLinear/DequantizeLinear (int8, zero point 0); FP8 → the same with a
FLOAT8E4M3FN zero point; NVFP4 → TensorRT's custom op ``trt::TRT_FP4DynamicQuantize`` (inputs: x
and the FP32 double-quantization scale, i.e. the static tensor scale ``input_scale``; attributes
axis=-1, block_size=16, scale_type=17 (FLOAT8E4M3FN); outputs: the FLOAT4E2M1 tensor and its
FLOAT8E4M3FN block scales, shaped like x with the last dim divided by 16) followed by the double
DQ. MXFP4 inputs: no TensorRT dynamic-quantize op is assumed, so they stay the float ops of the
eager fake quantization (same numbers, no FP4 GEMM for the input side).

A layer with a Hadamard input rotation (``QuantLinear.rotation`` = block b, both targets) rotates
its (smoothed) input right before the input quantization: ``Reshape([..., in] → [..., in/b, b]) →
MatMul([b, b] normalized Hadamard initializer, shared by the layers of one block size) →
Reshape([..., in])``; its stored weight is already the rotated one.

``onnxruntime`` (CPU kernels that exist; the graph stays at opset 17): INT4 weights →
``com.microsoft::MatMulNBits`` (bits 4, bias as its input); INT8 weight-only → DequantizeLinear →
MatMul. FP4 and FP8 weights have no CPU kernel (nor FP4 tensor type), so they are stored as their
packed bytes in UINT8 initializers and decoded by graph nodes (exporters/onnx_codebook.py) into the
float [out, in] weight, then Transpose → MatMul:

* NVFP4: nibbles → E2M1 codes → Gather(16-entry E2M1 table); block scales: E4M3 bytes →
  Gather(256-entry E4M3 table) · FP32 tensor scale; elements · block scales along each block of 16.
* MXFP4: the same codes · Gather(256-entry E8M0 table) of the scale bytes, blocks of 32.
* FP8: E4M3 bytes → Gather(E4M3 table) · per-row FP32 scale.

Each follows the format's PyTorch dequantization step for step, so the weight is bit for bit the one
PyTorch uses. What ONNX Runtime does with it at load (benchmarks/onnx_packed_load.py; figures in
docs/results.md, "What ONNX Runtime holds at load"): its constant folding, on by default, evaluates the
decode once and keeps float initializers, so a session holds what the float model's holds and runs as
fast; but folding materializes every intermediate of the decode on the way, so loading grows the process
well beyond the float graph (glibc keeps the freed heap until ``malloc_trim`` returns it). With folding
off (``onnx_session(..., constant_folding=False)``) the packed bytes stay as they are and every run
decodes them again, which costs more for sub-byte codes (6-bit VQ indices, FP4 nibbles) than for 8-bit
VQ indices.
Input quantization: INT8 as Q/DQ, every other format as the float ops of ``QuantLinear.quantize_input``,
so ONNX Runtime computes PyTorch's numbers.

Vector-quantized weights (``vq``, compressor/numerics/vq.py), both targets: FLOAT16 codebook and row
scales, the bit-packed indices as their UINT8 bytes; graph nodes unpack the indices with float
arithmetic (no BitShift/BitwiseAnd, which TensorRT lacks), Gather codebook rows, Reshape to [out, in]
and multiply by the row scales. Their inputs follow the scheme like any other format (INT8 Q/DQ on
ONNX Runtime, not its integer GEMM, which needs INT8 weights).

``runtime_kernels`` says, layer by layer, which of these numbers come from real low-precision kernels.
"""
from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper, version_converter
from torch import nn

from compressor.numerics.fp4 import pack_nibbles
from compressor.numerics.fp8 import decode_e8m0
from compressor.numerics.hadamard import hadamard_matrix, rotate_blocks
from compressor.numerics.int8 import fake_quantize_int8
from compressor.numerics.vq import index_bits
from compressor.quant_linear import QuantLinear, fake_quantize_input
from compressor.registry import Registry
from exporters.onnx_codebook import (
    blockwise,
    blockwise_sub,
    e2m1_table,
    e4m3_table,
    e8m0_table,
    lookup,
    per_row,
    shared_table,
    to_float,
    to_index,
    unpack_codes,
)

DOMAIN = "compressor"  # placeholders; none survive lowering
OPSET_17_WEIGHTS = frozenset({"int8"})  # weight formats whose DequantizeLinear opset 17 already has
TRT_OPSET, TRT_IR_VERSION = 23, 11
NVFP4_BLOCK = 16


# --- tracing -----------------------------------------------------------------------------------


class _Int8InputQDQ(torch.autograd.Function):
    """Static per-tensor INT8 input quantization as Q/DQ (opset 17 has it; both targets use it)."""

    @staticmethod
    def forward(ctx, x, scale):
        return fake_quantize_int8(x, scale)

    @staticmethod
    def symbolic(g, x, scale):
        zero = g.op("Constant", value_t=torch.tensor(0, dtype=torch.int8))
        return g.op("DequantizeLinear", g.op("QuantizeLinear", x, scale, zero), scale, zero)


class _QuantizeInput(torch.autograd.Function):
    """Placeholder for FP8 / NVFP4 input quantization (TensorRT), lowered after export."""

    @staticmethod
    def forward(ctx, x, scale, activation: str, layer: str):
        return fake_quantize_input(activation, x, scale)

    @staticmethod
    def symbolic(g, x, scale, activation: str, layer: str):
        out = g.op(f"{DOMAIN}::QuantizeInput", x, scale, format_s=activation, layer_s=layer)
        out.setType(x.type())
        return out


class _RotateInput(torch.autograd.Function):
    """Placeholder for the block-wise Hadamard rotation of a layer's input, lowered after export."""

    @staticmethod
    def forward(ctx, x, h, block: int, rank: int, layer: str):
        return rotate_blocks(x, h)

    @staticmethod
    def symbolic(g, x, h, block: int, rank: int, layer: str):
        out = g.op(f"{DOMAIN}::RotateInput", x, block_i=block, rank_i=rank, layer_s=layer)
        out.setType(x.type())
        return out


class _QuantMatMul(torch.autograd.Function):
    """Placeholder for x @ W^T (+ bias) with the layer's stored weight, lowered after export.

    ``weight`` (the float copy) only gives the trace its numbers; the symbolic drops it.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, layer: str):
        return nn.functional.linear(x, weight, bias)

    @staticmethod
    def symbolic(g, x, weight, bias, layer: str):
        inputs = (x,) if bias is None else (x, bias)
        out = g.op(f"{DOMAIN}::QuantMatMul", *inputs, layer_s=layer)
        sizes = x.type().varyingSizes()
        if sizes is not None:  # same shape as x but the last dim
            out.setType(x.type().with_sizes(sizes[:-1] + [weight.type().sizes()[0]]))
        return out


class _IntegerMatMul(torch.autograd.Function):
    """Placeholder for a W8A8 layer on ONNX Runtime: static INT8 input quantization and an integer GEMM
    (``MatMulIntegerToFloat``), lowered after export. ``x`` arrives unquantized."""

    @staticmethod
    def forward(ctx, x, weight, bias, scale, layer: str):
        return nn.functional.linear(fake_quantize_int8(x, scale), weight, bias)

    @staticmethod
    def symbolic(g, x, weight, bias, scale, layer: str):
        inputs = (x,) if bias is None else (x, bias)
        out = g.op(f"{DOMAIN}::IntegerMatMul", *inputs, layer_s=layer)
        sizes = x.type().varyingSizes()
        if sizes is not None:  # a contrib op has no shape inference: declare it so later shapes stay known
            out.setType(x.type().with_sizes(sizes[:-1] + [weight.type().sizes()[0]]))
        return out


# Schemes a target computes with an integer GEMM on the unquantized input (W8A8 INT8: ONNX Runtime's
# CPU provider), per target.
INTEGER_GEMM_SCHEMES = {"onnxruntime": frozenset({"int8"})}


def integer_gemm(layer: QuantLinear, target: str) -> bool:
    return layer.scheme.name in INTEGER_GEMM_SCHEMES.get(target, frozenset())


# "target:input format" → how the trace quantizes a layer's input. Anything not listed traces as the
# float ops of the eager fake quantization (MXFP4 anywhere, FP8/NVFP4 for ONNX Runtime, which has no
# such CPU kernels), so the graph computes PyTorch's numbers.
TRACED_INPUTS = Registry("ONNX input quantization")


def _qdq_int8_input(layer, x, key):
    return _Int8InputQDQ.apply(x, layer.input_scale)


def _placeholder_input(layer, x, key):
    return _QuantizeInput.apply(x, layer.input_scale, layer.scheme.activation, key)


for _target in ("onnxruntime", "tensorrt"):
    TRACED_INPUTS.register(f"{_target}:int8")(_qdq_int8_input)
for _activation in ("fp8", "nvfp4"):
    TRACED_INPUTS.register(f"tensorrt:{_activation}")(_placeholder_input)


def _float_input(layer, x, key):
    return layer.scheme.input.fake_quantize(x, layer.input_scale)


def quant_linear_export_fn(target: str, key: str):
    """``QuantLinear.export_fn`` for ``target``; ``key`` names the layer in the graph."""

    def run(layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
        if layer.input_smooth is not None:
            x = x * layer.input_smooth
        if layer.rotation:
            h = hadamard_matrix(layer.rotation, x.dtype, x.device)  # only for the trace's numbers; lowered to an initializer
            x = _RotateInput.apply(x, h, layer.rotation, x.dim(), key)
        if integer_gemm(layer, target):
            return _IntegerMatMul.apply(x, layer.dequantized_weight(), layer.bias, layer.input_scale, key)
        x = TRACED_INPUTS.get(f"{target}:{layer.scheme.activation}", _float_input)(layer, x, key)
        return _QuantMatMul.apply(x, layer.dequantized_weight(), layer.bias, key)

    return run


# --- lowering ----------------------------------------------------------------------------------


def _raw(name: str, data_type: int, dims, data: torch.Tensor) -> TensorProto:
    """An initializer from the bytes of ``data`` (packed 4-bit or 8-bit codes), as ONNX stores them."""
    return helper.make_tensor(name, data_type, list(dims), data.contiguous().view(torch.uint8).numpy().tobytes(), raw=True)


def _pack_flat(codes: torch.Tensor) -> torch.Tensor:
    """4-bit codes of any shape packed in row-major order, padded to an even count (ONNX's INT4 layout)."""
    flat = codes.reshape(-1).to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return pack_nibbles(flat)


class _Lowering:
    def __init__(self, model: onnx.ModelProto, layers: dict[str, QuantLinear], target: str, int8_weights: str = "uint8"):
        self.model, self.layers, self.target, self.int8_weights = model, layers, target, int8_weights
        self.nodes: list[onnx.NodeProto] = []
        self.domains: set[str] = set()
        self.names = {init.name for init in model.graph.initializer}

    def run(self) -> None:
        graph = self.model.graph
        for node in graph.node:
            if node.domain != DOMAIN:
                self.nodes.append(node)
                continue
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            key = attrs["layer"].decode()
            if node.op_type == "QuantizeInput":
                self._quantize_input(key, attrs["format"].decode(), node.input[0], node.input[1], node.output[0])
            elif node.op_type == "RotateInput":
                self._rotate_input(key, self.layers[key].in_features, attrs["block"], attrs["rank"], node.input[0], node.output[0])
            else:
                bias = node.input[1] if len(node.input) > 1 else ""
                lower = self._integer_matmul if node.op_type == "IntegerMatMul" else self._matmul
                lower(key, self.layers[key], node.input[0], bias, node.output[0])
        graph.ClearField("node")
        graph.node.extend(self.nodes)
        opsets = {op.domain: op.version for op in self.model.opset_import if op.domain != DOMAIN}
        opsets.update({domain: 1 for domain in self.domains})
        self.model.ClearField("opset_import")
        self.model.opset_import.extend(helper.make_opsetid(d, v) for d, v in opsets.items())

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def init(self, tensor: TensorProto) -> str:
        if tensor.name in self.names:
            raise ValueError(f"initializer name {tensor.name!r} is already in the graph")
        self.names.add(tensor.name)
        self.model.graph.initializer.append(tensor)
        return tensor.name

    def array(self, name: str, value: torch.Tensor) -> str:
        return self.init(numpy_helper.from_array(value.detach().contiguous().numpy(), name))

    def _rotate_input(self, key: str, features: int, block: int, rank: int, x: str, out: str) -> None:
        """x [..., in] → [..., in/b, b] → MatMul(H_b) → [..., in]; Reshape's 0 keeps a leading dim as it is."""
        h = f"rotation.hadamard_{block}"
        if h not in self.names:
            self.array(h, hadamard_matrix(block))
        blocks_shape = self.array(f"{key}.input_rotation_blocks", torch.tensor([0] * (rank - 1) + [features // block, block]))
        shape = self.array(f"{key}.input_rotation_shape", torch.tensor([0] * (rank - 1) + [features]))
        blocks = self.node("Reshape", [x, blocks_shape], f"{key}.input_blocks")
        rotated = self.node("MatMul", [blocks, h], f"{key}.input_rotated_blocks")
        self.node("Reshape", [rotated, shape], out)

    # inputs (TensorRT only: ONNX Runtime gets float ops at trace time)
    def _quantize_input(self, key: str, fmt: str, x: str, scale: str, out: str) -> None:
        lower = TENSORRT_INPUT_PATTERNS.get(fmt)
        if lower is None:
            raise ValueError(f"no TensorRT input pattern for {fmt!r}")
        lower(self, key, x, scale, out)

    def _matmul(self, key: str, layer: QuantLinear, x: str, bias: str, out: str) -> None:
        has_bias = bool(bias)
        kernel = MATMUL_KERNELS.get(f"{self.target}:{layer.format.name}")
        if kernel is not None:  # a runtime kernel that takes the stored weight as it is
            kernel(self, key, layer, x, bias, out)
            return
        # Every other weight is decoded to float [out, in] by graph nodes from its stored tensors.
        w_t = self.node("Transpose", [self._weight_dq(key, layer)], f"{key}.weight_t", perm=[1, 0])
        y = self.node("MatMul", [x, w_t], f"{key}.matmul" if has_bias else out)
        if has_bias:
            self.node("Add", [y, bias], out)

    def _weight_dq(self, key: str, layer: QuantLinear) -> str:
        """Nodes that dequantize the stored weight; returns the name of the float [out, in] tensor."""
        packed = PACKED_WEIGHT_DECODERS if self.target == "onnxruntime" else {}
        lower = packed.get(layer.format.name) or WEIGHT_DEQUANTIZERS.get(layer.format.name)
        if lower is None:
            raise ValueError(f"no ONNX weight pattern for {layer.format.name!r}")
        return lower(self, key, layer, layer.stored_weight(), [layer.out_features, layer.in_features])

    def _integer_matmul(self, key: str, layer: QuantLinear, x: str, bias: str, out: str) -> None:
        """QuantizeLinear (uint8, zero point 128: the grid of symmetric int8 shifted) feeding
        ``com.microsoft::MatMulIntegerToFloat`` with the [in, out] weight, its scales and the bias.
        The weight goes in as int8 (u8·s8 kernels) or shifted to uint8 with zero point 128 (u8·u8,
        the same numbers), as ``int8_weights`` says (see exporters/cpu_features.py)."""
        self.domains.add("com.microsoft")
        scale = self.array(f"{key}.input_scale", layer.input_scale.reshape(()))
        zero = self.array(f"{key}.input_zero_point", torch.tensor(128, dtype=torch.uint8))
        xq = self.node("QuantizeLinear", [x, scale, zero], f"{key}.input_uint8")
        t = layer.stored_weight()
        w_t, w_zero = INTEGER_GEMM_WEIGHTS.lookup(self.int8_weights)(self, key, t["values"].t(), zero)
        inputs = [xq, w_t, scale, self.array(f"{key}.weight_scale", t["scale"]), zero, w_zero]
        if bias:
            inputs.append(bias)
        self.nodes.append(helper.make_node("MatMulIntegerToFloat", inputs, [out], name=f"{key}.matmul_integer",
                                           domain="com.microsoft"))

    def _matmul_nbits(self, key: str, layer: QuantLinear, x: str, bias: str, out: str) -> None:
        t, group = layer.stored_weight(), layer.format.group_size
        n, k = layer.out_features, layer.in_features
        blocks = k // group
        # Same nibble order as the checkpoint: [N, K/2] bytes → [N, K/block, block/2].
        packed = self.array(f"{key}.weight", t["packed"].reshape(n, blocks, group // 2))
        inputs = [x, packed, self.array(f"{key}.weight_scale", t["scale"])]
        if not bool((t["zero"] == 8).all()):  # 8 is MatMulNBits' default zero point
            zero = t["zero"]
            if blocks % 2:  # zero points pack per row: [N, ceil(blocks/2)]
                zero = torch.cat([zero, zero.new_zeros(n, 1)], dim=1)
            inputs.append(self.array(f"{key}.weight_zero_point", pack_nibbles(zero)))
        if bias:
            inputs += [""] * (5 - len(inputs)) + [bias]  # skip zero_points / g_idx
        self.domains.add("com.microsoft")
        self.nodes.append(helper.make_node(
            "MatMulNBits", inputs, [out], name=f"{key}.matmul_nbits", domain="com.microsoft",
            K=k, N=n, bits=4, block_size=group,
        ))


def _signed_weight(low: "_Lowering", key: str, values: torch.Tensor, input_zero: str) -> tuple[str, str]:
    return (low.array(f"{key}.weight", values.to(torch.int8).contiguous()),
            low.array(f"{key}.weight_zero_point", torch.tensor(0, dtype=torch.int8)))


def _shifted_weight(low: "_Lowering", key: str, values: torch.Tensor, input_zero: str) -> tuple[str, str]:
    return low.array(f"{key}.weight", (values.to(torch.int16) + 128).to(torch.uint8)), input_zero


# How W8A8 weights feed MatMulIntegerToFloat (``int8_weights``): int8 with zero point 0 (u8·s8), or
# shifted to uint8 with the input's zero point 128 (u8·u8, the same numbers).
INTEGER_GEMM_WEIGHTS = Registry("int8 weight type")
INTEGER_GEMM_WEIGHTS.register("int8")(_signed_weight)
INTEGER_GEMM_WEIGHTS.register("uint8")(_shifted_weight)


def _fp8_input(low: "_Lowering", key: str, x: str, scale: str, out: str) -> None:
    zero = low.init(_raw(f"{key}.input_zero_point", TensorProto.FLOAT8E4M3FN, [], torch.zeros((), dtype=torch.uint8)))
    q = low.node("QuantizeLinear", [x, scale, zero], f"{key}.input_fp8")
    low.node("DequantizeLinear", [q, scale, zero], out)


def _nvfp4_input(low: "_Lowering", key: str, x: str, scale: str, out: str) -> None:
    low.domains.add("trt")
    q, block_scale = f"{key}.input_fp4", f"{key}.input_block_scale"
    low.nodes.append(helper.make_node(
        "TRT_FP4DynamicQuantize", [x, scale], [q, block_scale], name=q, domain="trt",
        axis=-1, block_size=NVFP4_BLOCK, scale_type=TensorProto.FLOAT8E4M3FN,
    ))
    # The custom op has no schema: declare its output types for checkers and parsers.
    low.model.graph.value_info.extend([
        helper.make_tensor_value_info(q, TensorProto.FLOAT4E2M1, None),
        helper.make_tensor_value_info(block_scale, TensorProto.FLOAT8E4M3FN, None),
    ])
    scales = low.node("DequantizeLinear", [block_scale, scale], f"{key}.input_block_scale_dq")
    low.node("DequantizeLinear", [q, scales], out, axis=-1, block_size=NVFP4_BLOCK)


# Input format → the TensorRT nodes that quantize a layer's input (the placeholders of TRACED_INPUTS).
TENSORRT_INPUT_PATTERNS = Registry("TensorRT input format")
TENSORRT_INPUT_PATTERNS.register("fp8")(_fp8_input)
TENSORRT_INPUT_PATTERNS.register("nvfp4")(_nvfp4_input)

# "target:weight format" → a kernel that takes the stored weight as it is (INT4 → MatMulNBits on ONNX
# Runtime); every other layer dequantizes its weight in the graph and runs MatMul.
MATMUL_KERNELS = Registry("ONNX matmul kernel")
MATMUL_KERNELS.register("onnxruntime:int4")(_Lowering._matmul_nbits)

# Weight format → the nodes that dequantize its stored tensors (``t``) into a float [out, in] tensor.
WEIGHT_DEQUANTIZERS = Registry("ONNX weight format")


@WEIGHT_DEQUANTIZERS.register("int8")
def _int8_weight(low: _Lowering, key: str, layer, t, shape) -> str:
    w = low.array(f"{key}.weight", t["values"])
    return low.node("DequantizeLinear", [w, low.array(f"{key}.weight_scale", t["scale"])], f"{key}.weight_dq", axis=0)


@WEIGHT_DEQUANTIZERS.register("fp8")
def _fp8_weight(low: _Lowering, key: str, layer, t, shape) -> str:
    w = low.init(_raw(f"{key}.weight", TensorProto.FLOAT8E4M3FN, shape, t["values"]))
    return low.node("DequantizeLinear", [w, low.array(f"{key}.weight_scale", t["scale"])], f"{key}.weight_dq", axis=0)


@WEIGHT_DEQUANTIZERS.register("int4")
def _int4_weight(low: _Lowering, key: str, layer, t, shape) -> str:
    w, zero = f"{key}.weight", t["zero"]
    inputs = [w, low.array(f"{key}.weight_scale", t["scale"])]
    if bool((zero == 8).all()):
        # Symmetric: signed codes q - 8; flipping bit 3 of each nibble turns q into q - 8
        # in two's complement, so no zero point is needed.
        low.init(_raw(w, TensorProto.INT4, shape, t["packed"] ^ 0x88))
    else:
        low.init(_raw(w, TensorProto.UINT4, shape, t["packed"]))
        inputs.append(low.init(_raw(f"{key}.weight_zero_point", TensorProto.UINT4, zero.shape, _pack_flat(zero))))
    return low.node("DequantizeLinear", inputs, f"{key}.weight_dq", axis=-1, block_size=layer.format.group_size)


@WEIGHT_DEQUANTIZERS.register("nvfp4")
def _nvfp4_weight(low: _Lowering, key: str, layer, t, shape) -> str:
    w = low.init(_raw(f"{key}.weight", TensorProto.FLOAT4E2M1, shape, t["packed"]))
    block_scale = low.init(_raw(f"{key}.weight_block_scale", TensorProto.FLOAT8E4M3FN, t["block_scale"].shape,
                                t["block_scale"]))
    tensor_scale = low.array(f"{key}.weight_tensor_scale", t["tensor_scale"].reshape(()))
    scales = low.node("DequantizeLinear", [block_scale, tensor_scale], f"{key}.weight_block_scale_dq")
    return low.node("DequantizeLinear", [w, scales], f"{key}.weight_dq", axis=-1, block_size=NVFP4_BLOCK)


@WEIGHT_DEQUANTIZERS.register("mxfp4")
def _mxfp4_weight(low: _Lowering, key: str, layer, t, shape) -> str:
    w = low.init(_raw(f"{key}.weight", TensorProto.FLOAT4E2M1, shape, t["packed"]))
    scale = low.array(f"{key}.weight_scale", decode_e8m0(t["scale"]))  # 2^e, exact in FP32
    block = layer.in_features // t["scale"].shape[-1]
    return low.node("DequantizeLinear", [w, scale], f"{key}.weight_dq", axis=-1, block_size=block)


@WEIGHT_DEQUANTIZERS.register("vq")
def _vq_weight(low: _Lowering, key: str, layer, t, shape) -> str:
    """Packed indices → codebook rows → [rows, in] → times the row scales (compressor/numerics/vq.py)."""
    rows, columns = shape
    dim, bits = layer.format.dim, index_bits(layer.format.entries)
    indices = low.array(f"{key}.weight_indices", t["indices"])
    codes = unpack_codes(low, f"{key}.weight_codes", indices, rows, t["indices"].shape[1], bits, columns // dim)
    codebook = to_float(low, low.array(f"{key}.weight_codebook", t["codebook"]), f"{key}.weight_codebook_float")
    vectors = lookup(low, codebook, to_index(low, codes, f"{key}.weight_code_index"), f"{key}.weight_vectors")
    flat = low.node("Reshape", [vectors, low.array(f"{key}.weight_shape", torch.tensor([rows, columns]))],
                    f"{key}.weight_unscaled")
    scale = to_float(low, low.array(f"{key}.weight_scale", t["scale"]), f"{key}.weight_scale_float")
    return low.node("Mul", [flat, per_row(low, scale, f"{key}.weight_row_scale")], f"{key}.weight_dq")


@WEIGHT_DEQUANTIZERS.register("int3")
def _int3_weight(low: _Lowering, key: str, layer, t, shape) -> str:
    """Packed 3-bit codes (8 per 3 bytes) → (code − zero) · scale per group; no ONNX type holds 3 bits."""
    rows, columns = shape
    codes = unpack_codes(low, f"{key}.weight_codes", low.array(f"{key}.weight", t["codes"]), rows, t["codes"].shape[1], 3,
                         columns)
    group = layer.format.group_size
    zero = to_float(low, low.array(f"{key}.weight_zero_point", t["zero"]), f"{key}.weight_zero_float")
    centred = blockwise_sub(low, f"{key}.weight_centred", codes, zero, rows, columns, group)
    return blockwise(low, f"{key}.weight_dq", centred, low.array(f"{key}.weight_scale", t["scale"]), rows, columns, group)


# ONNX Runtime only: FP4/FP8 weights as their stored bytes in UINT8 initializers (the graph stays at
# opset 17, which has no FP4/FP8 tensor types, and the CPU provider has no FP4 kernel), decoded by table
# lookups. Each repeats the format's PyTorch dequantization operation for operation, so bit for bit.
PACKED_WEIGHT_DECODERS = Registry("ONNX Runtime packed weight format")


def _e2m1_values(low: _Lowering, key: str, packed: torch.Tensor, rows: int, columns: int) -> str:
    """Packed nibbles [rows, columns/2] → float E2M1 values [rows, columns]."""
    codes = unpack_codes(low, f"{key}.weight_codes", low.array(f"{key}.weight", packed), rows, columns // 2, 4, columns)
    table = shared_table(low, "e2m1", e2m1_table())
    return lookup(low, table, to_index(low, codes, f"{key}.weight_code_index"), f"{key}.weight_values")


def _byte_values(low: _Lowering, name: str, data: torch.Tensor, table: str, values: torch.Tensor) -> str:
    """Float value of each stored byte of ``data`` (an FP8 or E8M0 tensor, kept as uint8)."""
    codes = to_index(low, low.array(name, data.view(torch.uint8)), f"{name}_index")
    return lookup(low, shared_table(low, table, values), codes, f"{name}_float")


@PACKED_WEIGHT_DECODERS.register("nvfp4")
def _nvfp4_packed(low: _Lowering, key: str, layer, t, shape) -> str:
    rows, columns = shape
    values = _e2m1_values(low, key, t["packed"], rows, columns)
    block_scale = _byte_values(low, f"{key}.weight_block_scale", t["block_scale"], "e4m3", e4m3_table())
    tensor_scale = low.array(f"{key}.weight_tensor_scale", t["tensor_scale"].reshape(()))
    # block scale · tensor scale first, then the elements: dequantize_nvfp4's order, so the same rounding
    scales = low.node("Mul", [block_scale, tensor_scale], f"{key}.weight_scales")
    return blockwise(low, f"{key}.weight_dq", values, scales, rows, columns, NVFP4_BLOCK)


@PACKED_WEIGHT_DECODERS.register("mxfp4")
def _mxfp4_packed(low: _Lowering, key: str, layer, t, shape) -> str:
    rows, columns = shape
    values = _e2m1_values(low, key, t["packed"], rows, columns)
    scales = _byte_values(low, f"{key}.weight_scale", t["scale"], "e8m0", e8m0_table())
    return blockwise(low, f"{key}.weight_dq", values, scales, rows, columns, columns // t["scale"].shape[-1])


@PACKED_WEIGHT_DECODERS.register("fp8")
def _fp8_packed(low: _Lowering, key: str, layer, t, shape) -> str:
    values = _byte_values(low, f"{key}.weight", t["values"], "e4m3", e4m3_table())
    scale = per_row(low, low.array(f"{key}.weight_scale", t["scale"]), f"{key}.weight_row_scale")
    return low.node("Mul", [values, scale], f"{key}.weight_dq")


def lower_quant_linears(model: onnx.ModelProto, layers: dict[str, QuantLinear], target: str,
                        int8_weights: str = "uint8") -> onnx.ModelProto:
    """Replace the ``compressor`` placeholders of ``layers`` (graph key → layer) by ``target``'s pattern.

    For TensorRT the model is first converted to opset 23 / IR 11 (returns a new ModelProto).
    """
    # W8A8-only graphs keep opset 17; FP4, INT4, FP8 and blocked DequantizeLinear need opset 23.
    if target == "tensorrt" and any(layer.format.name not in OPSET_17_WEIGHTS for layer in layers.values()):
        model = version_converter.convert_version(model, TRT_OPSET)
        model.ir_version = TRT_IR_VERSION
    _Lowering(model, layers, target, int8_weights).run()
    return model


# --- what runs where ---------------------------------------------------------------------------

_ORT_INT8 = "MatMulIntegerToFloat INT8 kernel"
_ORT_NBITS = "MatMulNBits 4-bit kernel"
_ORT_DECODED = ("float MatMul on weights decoded in the graph from packed FP4/FP8 codes (no FP4/FP8 kernel on CPU; "
                "constant folding expands them to float when the session loads)")
_ORT_VQ = ("float MatMul on VQ weights decoded in the graph (codebook Gather on packed indices; "
           "constant folding expands them to float when the session loads)")
_ORT_INT3 = "float MatMul on INT3 weights decoded in the graph from packed 3-bit codes"
_ORT_DQ = "float MatMul on INT8 weights dequantized in the graph (DequantizeLinear)"


# Weight format → what computes a layer on ONNX Runtime (anything else: _ORT_DECODED).
ORT_KERNELS = {"int4": _ORT_NBITS, "int8": _ORT_DQ, "vq": _ORT_VQ, "int3": _ORT_INT3}
# Schemes TensorRT computes in their own precision, weights and inputs alike.
TENSORRT_NATIVE = {
    "int8": "INT8 GEMM (Q/DQ)",
    "fp8": "FP8 GEMM (Q/DQ, Ada/Hopper and newer)",
    "nvfp4": "NVFP4 GEMM (FP4 tensor cores on Blackwell SM100+; dequantized to a wider GEMM elsewhere)",
    "mxfp4": "MXFP4 weights dequantized for a float GEMM; inputs fake-quantized in float ops",
}


def _vq_on_tensorrt(layer) -> str:
    inputs = f", {layer.scheme.activation.upper()} Q/DQ inputs" if layer.scheme.input.has_static_scale else ""
    return f"VQ weights decoded in the graph (codebook Gather on packed indices) feeding a float GEMM{inputs}"


def _int4_on_tensorrt(layer) -> str | None:
    if bool((layer.weight_zero == 8).all()):
        return None
    return "asymmetric INT4: valid ONNX (UINT4 + zero points), but TensorRT takes symmetric quantization only"


# Weight format → what TensorRT makes of it, where the weight alone decides (None: the scheme decides).
TENSORRT_WEIGHT_KERNELS = {
    "int3": lambda layer: "INT3 weights decoded in the graph from packed codes feeding a float GEMM",
    "vq": _vq_on_tensorrt,
    "int4": _int4_on_tensorrt,
}


def _kernel(layer: nn.Module, target: str) -> str | None:
    if not isinstance(layer, QuantLinear):
        return None
    if integer_gemm(layer, target):
        return _ORT_INT8
    weight, activation = layer.format.name, layer.scheme.activation
    if target == "onnxruntime":
        return ORT_KERNELS.get(weight, _ORT_DECODED)
    by_weight = TENSORRT_WEIGHT_KERNELS.get(weight)
    described = by_weight(layer) if by_weight is not None else None
    if described is not None:
        return described
    if layer.scheme.name in TENSORRT_NATIVE:
        return TENSORRT_NATIVE[layer.scheme.name]
    if layer.scheme.input.block is None and not layer.scheme.input.has_static_scale:
        return f"{weight.upper()} weight-only: DequantizeLinear feeding a float/half GEMM"
    return f"{weight.upper()} weights (DequantizeLinear) with {activation.upper()} Q/DQ inputs; TensorRT picks the GEMM"


def runtime_kernels(handle_or_model, target: str) -> dict[str, str]:
    """Quantized layer name → what computes it in ``target``'s exported graph (float layers are left out)."""
    model = getattr(handle_or_model, "model", handle_or_model)
    kernels = {name: _kernel(module, target) for name, module in model.named_modules()}
    return {name: kernel for name, kernel in kernels.items() if kernel is not None}


# --- checking FP4 graphs without a GPU ---------------------------------------------------------


def reference_ops() -> list[type]:
    """``onnx.reference.ReferenceEvaluator`` implementations of the TensorRT custom ops used here."""
    import ml_dtypes
    from onnx.reference.op_run import OpRun

    class TRT_FP4DynamicQuantize(OpRun):  # the class name is the op name the evaluator matches
        """NVFP4 with this repository's rounding: block scale = E4M3(clamp(block amax / 6 / scale,
        2^-9, 448)), element = E2M1(x / (block scale · scale)), saturating at ±6."""

        op_domain = "trt"

        def _run(self, x, scale, axis=-1, block_size=NVFP4_BLOCK, scale_type=TensorProto.FLOAT8E4M3FN):
            if axis not in (-1, x.ndim - 1) or scale_type != TensorProto.FLOAT8E4M3FN:
                raise NotImplementedError("only blocks along the last axis with E4M3 scales")
            x = x.astype(np.float32)
            scale = np.float32(scale)
            blocks = x.reshape(*x.shape[:-1], x.shape[-1] // block_size, block_size)
            amax = np.abs(blocks).max(axis=-1)
            block_scale = np.clip(amax / np.float32(6) / scale, 2.0**-9, 448.0).astype(ml_dtypes.float8_e4m3fn)
            step = (block_scale.astype(np.float32) * scale)[..., None]
            q = np.clip(blocks / step, -6, 6).astype(ml_dtypes.float4_e2m1fn)
            return q.reshape(x.shape), block_scale

    return [TRT_FP4DynamicQuantize]
