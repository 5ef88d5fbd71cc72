"""exporters.onnx_lowbit: QuantLinear layers in ONNX for TensorRT (opset 23, FP4/INT4/FP8 tensors, checked
with onnx's reference evaluator) and ONNX Runtime (MatMulNBits, FP4/FP8 weights decoded in the graph; run in
ONNX Runtime).

A tiny random BERT keeps every export and reference run under a second. Its intermediate size 96
gives 3 INT4 groups of 32 per row in the FFN output layer, so odd group counts are covered too.
"""
import copy
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import nn
from transformers import BertConfig, BertModel

from compressor.adapters import EncoderAdapter
from compressor.files import load_tokenizer
from compressor.model import ModelHandle
from compressor.numerics.fp8 import decode_e8m0
from compressor.numerics.nvfp4 import fake_quantize_nvfp4
from compressor.quant_linear import QuantLinear
from exporters.onnx_export import export_onnx, onnx_session, runtime_kernels
from exporters.onnx_lowbit import reference_ops

GROUP = 32
SCHEMES = ("int8", "fp8", "nvfp4", "mxfp4", "w4a16-nvfp4", "w4a16-mxfp4", "w4a16-int4", "w8a16-int8", "w4a8-int4")
# case name → (scheme, symmetric INT4, smoothed inputs)
CASES = {s: (s, True, False) for s in SCHEMES} | {
    "w4a16-int4-asym": ("w4a16-int4", False, False),
    "w4a8-int4-asym-smooth": ("w4a8-int4", False, True),
    "nvfp4-smooth": ("nvfp4", True, True),
}
SENTENCES = ["a short one", "a rather longer sentence, so that the batch has padding in it", "third"]


@pytest.fixture(scope="module")
def tiny(minilm_dir):
    """(float BertModel, tokenizer, per-layer input amax)."""
    torch.manual_seed(0)
    tokenizer = load_tokenizer(minilm_dir)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=96, max_position_embeddings=64, attn_implementation="sdpa")
    model = BertModel(config, add_pooling_layer=False).eval()
    for module in model.modules():
        if isinstance(module, nn.Linear):  # distinct biases: the exporter would merge identical zero ones
            nn.init.normal_(module.bias, std=0.05)
    amax = {}
    hooks = [
        m.register_forward_hook(lambda m, args, out, name=name: amax.__setitem__(name, float(args[0].abs().max())))
        for name, m in model.named_modules() if isinstance(m, nn.Linear)
    ]
    with torch.no_grad():
        model(**EncoderAdapter().tokenize(tokenizer, SENTENCES, 32))
    for hook in hooks:
        hook.remove()
    return model, tokenizer, amax


def make_handle(tiny, make_layer) -> ModelHandle:
    base, tokenizer, amax = tiny
    model, adapter = copy.deepcopy(base), EncoderAdapter()
    for name in adapter.quantizable_layers(model):
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, make_layer(name, model.get_submodule(name), amax[name]))
    return ModelHandle(model, tokenizer, adapter, Path("tiny-bert"))


def quant_handle(tiny, case: str) -> ModelHandle:
    scheme, symmetric, smooth = CASES[case]
    generator = torch.Generator().manual_seed(1)

    def layer(name, linear, amax):
        factor = torch.rand(linear.in_features, generator=generator) + 0.5 if smooth else None
        return QuantLinear.from_linear(linear, scheme, input_amax=amax, input_smooth=factor, group_size=GROUP, symmetric=symmetric)

    return make_handle(tiny, layer)


@pytest.fixture(scope="module")
def batch(tiny):
    return EncoderAdapter().tokenize(tiny[1], SENTENCES, 32)


@pytest.fixture(scope="module")
def exports(tiny, onnx_export_cache):
    """(case, target) → (handle, exported ModelProto, path), exported once per module."""
    return onnx_export_cache("lowbit", lambda case: quant_handle(tiny, case))


def torch_output(handle, batch) -> np.ndarray:
    with torch.no_grad():
        return handle.adapter.forward(handle.model, batch).numpy()


def rel_error(actual, expected) -> float:
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def feeds(batch):
    return {name: value.numpy() for name, value in batch.items()}


def run_reference(model, batch) -> np.ndarray:
    """The reference evaluator implements DequantizeLinear from opset 19: older graphs (INT8 only) run
    in ONNX Runtime instead."""
    if {op.domain: op.version for op in model.opset_import}[""] < 19:
        import onnxruntime as ort

        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, feeds(batch))[0]
    return ReferenceEvaluator(model, new_ops=reference_ops()).run(None, feeds(batch))[0]


def attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def initializers(model) -> dict:
    return {init.name: init for init in model.graph.initializer}


def consumers(model, name: str) -> list:
    return [n for n in model.graph.node if name in n.input]


def producer(model, name: str):
    return next(n for n in model.graph.node if name in n.output)


def resolve(model, name: str) -> np.ndarray:
    """An initializer's value, looking through the Identity nodes the exporter makes for shared constants."""
    inits = initializers(model)
    while name not in inits:
        node = producer(model, name)
        assert node.op_type == "Identity"
        name = node.input[0]
    return numpy_helper.to_array(inits[name])


def layer_keys(handle) -> dict[str, QuantLinear]:
    return {f"model.{name}": m for name, m in handle.model.named_modules() if isinstance(m, QuantLinear)}


# --- TensorRT ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_tensorrt_graph_matches_pytorch(exports, batch, tiny, case):
    handle, model, _ = exports(case, "tensorrt")
    onnx.checker.check_model(model, full_check=True)
    opsets = {op.domain: op.version for op in model.opset_import}
    # INT8 weights need nothing newer than opset 17; FP8, FP4 and INT4 tensors need opset 23 / IR 11
    if CASES[case][0] in ("int8", "w8a16-int8"):
        assert model.ir_version < 11 and opsets[""] == 17
    else:
        assert model.ir_version == 11 and opsets[""] == 23
    assert "compressor" not in opsets
    assert not any(n.domain == "compressor" for n in model.graph.node)
    assert ("trt" in opsets) == (CASES[case][0] == "nvfp4")
    expected = torch_output(handle, batch)
    actual = run_reference(model, batch)
    assert actual.shape == expected.shape
    # ... and far closer than quantization itself moves the output, so the check has teeth
    with torch.no_grad():
        float_out = tiny[0](**batch).last_hidden_state.numpy()
    assert rel_error(actual, expected) < min(1e-5, rel_error(expected, float_out) / 100)


def weight_dq(model, key):
    """The DequantizeLinear reading ``key``'s stored weight; checks it feeds Transpose → MatMul."""
    (dq,) = consumers(model, f"{key}.weight")
    assert dq.op_type == "DequantizeLinear"
    (transpose,) = consumers(model, dq.output[0])
    assert transpose.op_type == "Transpose" and attrs(transpose)["perm"] == [1, 0]
    assert [n.op_type for n in consumers(model, transpose.output[0])] == ["MatMul"]
    return dq


def test_tensorrt_nvfp4_pattern(exports):
    handle, model, _ = exports("nvfp4", "tensorrt")
    inits = initializers(model)
    for key, layer in layer_keys(handle).items():
        stored = layer.stored_weight()
        # weights: FP4 codes, FP8 block scales and the FP32 tensor scale, as stored (same bytes)
        dq = weight_dq(model, key)
        weight = inits[dq.input[0]]
        assert weight.data_type == TensorProto.FLOAT4E2M1 and list(weight.dims) == [layer.out_features, layer.in_features]
        assert weight.raw_data == stored["packed"].numpy().tobytes()
        assert attrs(dq) == {"axis": -1, "block_size": 16}
        scale_dq = producer(model, dq.input[1])
        assert scale_dq.op_type == "DequantizeLinear" and len(scale_dq.input) == 2
        block_scale = inits[scale_dq.input[0]]
        assert block_scale.data_type == TensorProto.FLOAT8E4M3FN
        assert list(block_scale.dims) == [layer.out_features, layer.in_features // 16]
        assert block_scale.raw_data == stored["block_scale"].view(torch.uint8).numpy().tobytes()
        assert resolve(model, scale_dq.input[1]) == np.float32(stored["tensor_scale"])
        # inputs: TRT_FP4DynamicQuantize with the static tensor scale, then the same double DQ
        matmul = consumers(model, consumers(model, dq.output[0])[0].output[0])[0]
        x_dq = producer(model, matmul.input[0])
        assert x_dq.op_type == "DequantizeLinear" and attrs(x_dq) == {"axis": -1, "block_size": 16}
        quantize = producer(model, x_dq.input[0])
        assert (quantize.domain, quantize.op_type) == ("trt", "TRT_FP4DynamicQuantize")
        assert attrs(quantize) == {"axis": -1, "block_size": 16, "scale_type": TensorProto.FLOAT8E4M3FN}
        assert list(quantize.output) == [x_dq.input[0], producer(model, x_dq.input[1]).input[0]]
        assert resolve(model, quantize.input[1]) == np.float32(layer.input_scale)
        assert producer(model, x_dq.input[1]).input[1] == quantize.input[1]
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    fp4_inputs = [n.output for n in model.graph.node if n.op_type == "TRT_FP4DynamicQuantize"]
    assert len(fp4_inputs) == len(layer_keys(handle))
    assert all(types[q] == TensorProto.FLOAT4E2M1 and types[s] == TensorProto.FLOAT8E4M3FN for q, s in fp4_inputs)


def test_tensorrt_mxfp4_pattern(exports):
    handle, model, _ = exports("mxfp4", "tensorrt")
    for key, layer in layer_keys(handle).items():
        dq = weight_dq(model, key)
        weight = initializers(model)[dq.input[0]]
        assert weight.data_type == TensorProto.FLOAT4E2M1
        assert weight.raw_data == layer.weight_packed.numpy().tobytes()
        assert attrs(dq) == {"axis": -1, "block_size": 32}
        scale = resolve(model, dq.input[1])
        assert scale.dtype == np.float32 and scale.shape == (layer.out_features, layer.in_features // 32)
        assert np.array_equal(scale, decode_e8m0(layer.weight_scale).numpy())
        assert np.array_equal(np.exp2(np.log2(scale).round()), scale)  # powers of two
    ops = {n.op_type for n in model.graph.node}
    assert "QuantizeLinear" not in ops and "TRT_FP4DynamicQuantize" not in ops  # inputs stay float ops
    assert {"ReduceMax", "Floor", "Round"} <= ops


def test_tensorrt_fp8_pattern(exports):
    handle, model, _ = exports("fp8", "tensorrt")
    inits = initializers(model)
    for key, layer in layer_keys(handle).items():
        dq = weight_dq(model, key)
        weight = inits[dq.input[0]]
        assert weight.data_type == TensorProto.FLOAT8E4M3FN
        assert weight.raw_data == layer.weight_values.view(torch.uint8).numpy().tobytes()
        assert attrs(dq) == {"axis": 0}
        assert np.array_equal(resolve(model, dq.input[1]), layer.weight_scale.numpy())
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantize) == len(layer_keys(handle))
    for q in quantize:
        (dq,) = consumers(model, q.output[0])
        assert dq.op_type == "DequantizeLinear" and list(dq.input[1:]) == list(q.input[1:])
        zero = inits[q.input[2]]
        assert zero.data_type == TensorProto.FLOAT8E4M3FN and list(zero.dims) == [] and zero.raw_data == b"\0"
        assert resolve(model, q.input[1]).shape == ()


@pytest.mark.parametrize("case", ["w4a16-int4", "w4a16-int4-asym", "w4a8-int4"])
def test_tensorrt_int4_pattern(exports, case):
    handle, model, _ = exports(case, "tensorrt")
    inits = initializers(model)
    symmetric = CASES[case][1]
    for key, layer in layer_keys(handle).items():
        dq = weight_dq(model, key)
        weight = inits[dq.input[0]]
        assert attrs(dq) == {"axis": -1, "block_size": GROUP}
        assert np.array_equal(resolve(model, dq.input[1]), layer.weight_scale.numpy())
        codes = numpy_helper.to_array(weight).astype(np.int16)
        unpacked = torch.stack([layer.weight_packed & 15, layer.weight_packed >> 4], -1).reshape(codes.shape)
        if symmetric:
            assert weight.data_type == TensorProto.INT4 and len(dq.input) == 2
            assert np.array_equal(codes, unpacked.numpy().astype(np.int16) - 8)
        else:
            assert weight.data_type == TensorProto.UINT4
            assert np.array_equal(codes, unpacked.numpy())
            zero = inits[dq.input[2]]
            assert zero.data_type == TensorProto.UINT4 and list(zero.dims) == list(layer.weight_zero.shape)
            assert np.array_equal(numpy_helper.to_array(zero).astype(np.int16), layer.weight_zero.numpy())
    n_quantize = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    assert n_quantize == (len(layer_keys(handle)) if CASES[case][0] == "w4a8-int4" else 0)


def test_tensorrt_int8_weight_only_pattern(exports):
    handle, model, _ = exports("w8a16-int8", "tensorrt")
    for key, layer in layer_keys(handle).items():
        dq = weight_dq(model, key)
        assert initializers(model)[dq.input[0]].data_type == TensorProto.INT8
        assert np.array_equal(resolve(model, dq.input[0]), layer.weight_values.numpy())
        assert attrs(dq) == {"axis": 0}
    assert "QuantizeLinear" not in {n.op_type for n in model.graph.node}


@pytest.mark.parametrize("case", ["int8", "fp8", "w4a16-int4", "w4a16-int4-asym", "w8a16-int8", "w4a8-int4-asym-smooth"])
def test_tensorrt_graph_without_fp4_runs_in_onnxruntime(exports, batch, case):
    """A second, independent implementation of INT4/UINT4/FP8 Q/DQ checks the packing."""
    handle, _, path = exports(case, "tensorrt")
    options = ort.SessionOptions()
    # ONNX Runtime's optimizer fuses FP8 Q/DQ into integer kernels that reject float8 inputs.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert rel_error(session.run(None, feeds(batch))[0], torch_output(handle, batch)) < 1e-5


def test_reference_fp4_dynamic_quantize_matches_pytorch():
    """The reference TRT_FP4DynamicQuantize + double DQ reproduces fake_quantize_nvfp4 exactly."""
    x = torch.randn(3, 5, 64) * torch.logspace(-4, 2, 64)  # blocks of very different ranges
    x[0, 0, :16] = 0  # an all-zero block
    scale = torch.tensor(float(x.abs().max()) / (6 * 448))
    nodes = [
        helper.make_node("TRT_FP4DynamicQuantize", ["x", "s"], ["q", "bs"], domain="trt", axis=-1, block_size=16, scale_type=17),
        helper.make_node("DequantizeLinear", ["bs", "s"], ["bsf"]),
        helper.make_node("DequantizeLinear", ["q", "bsf"], ["y"], axis=-1, block_size=16),
    ]
    graph = helper.make_graph(
        nodes, "fp4", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5, 64])],
        [numpy_helper.from_array(scale.numpy(), "s")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23), helper.make_opsetid("trt", 1)], ir_version=11)
    session = ReferenceEvaluator(model, new_ops=reference_ops())
    q, y = session.run(["q", "y"], {"x": x.numpy()})
    assert q.dtype == ml_dtypes.float4_e2m1fn
    assert np.array_equal(y, fake_quantize_nvfp4(x, scale).numpy())


# --- ONNX Runtime ------------------------------------------------------------------------------

LOWBIT_TYPES = {TensorProto.FLOAT4E2M1, TensorProto.FLOAT8E4M3FN, TensorProto.INT4, TensorProto.UINT4}


@pytest.mark.parametrize("case", CASES)
def test_onnxruntime_matches_pytorch(exports, batch, case, tmp_path):
    handle, model, path = exports(case, "onnxruntime")
    onnx.checker.check_model(model, full_check=True)
    scheme = CASES[case][0]
    int4 = scheme.endswith("int4")
    opsets = {op.domain: op.version for op in model.opset_import}
    integer = int4 or scheme == "int8"  # MatMulNBits, or MatMulIntegerToFloat for W8A8
    assert opsets == ({"": 17, "com.microsoft": 1} if integer else {"": 17})
    integer_gemms = [n for n in model.graph.node if n.op_type == "MatMulIntegerToFloat"]
    assert len(integer_gemms) == (len(layer_keys(handle)) if scheme == "int8" else 0)
    # nothing the CPU provider cannot run: no FP4/FP8/INT4 tensors, no TensorRT op
    assert not {init.data_type for init in model.graph.initializer} & LOWBIT_TYPES
    assert not any(n.domain in ("trt", "compressor") for n in model.graph.node)
    layers = layer_keys(handle)
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == (len(layers) if int4 else 0)
    inits = initializers(model)
    for node in nbits:
        layer = layers[node.name.removesuffix(".matmul_nbits")]
        n, k = layer.out_features, layer.in_features
        assert attrs(node) == {"K": k, "N": n, "bits": 4, "block_size": GROUP}
        packed = numpy_helper.to_array(inits[node.input[1]])
        assert packed.shape == (n, k // GROUP, GROUP // 2)
        assert np.array_equal(packed.reshape(n, -1), layer.weight_packed.numpy())
        assert np.array_equal(numpy_helper.to_array(inits[node.input[2]]), layer.weight_scale.numpy())
        has_zero = len(node.input) > 3 and node.input[3]
        assert bool(has_zero) == (not CASES[case][1])
        if has_zero:
            assert numpy_helper.to_array(inits[node.input[3]]).shape == (n, (k // GROUP + 1) // 2)
        assert node.input[-1] == f"{node.name.removesuffix('.matmul_nbits')}.bias"  # bias fused in

    expected = torch_output(handle, batch)
    actual = onnx_session(path).run(None, feeds(batch))[0]
    # MatMulNBits accumulates in its own order, and the CPU's u8·s8 integer GEMM saturates pair sums at
    # int16 (AVX2); the float graphs follow PyTorch's ops
    assert rel_error(actual, expected) < (1e-3 if int4 else 5e-3 if integer else 1e-5)

    if int4:  # ONNX Runtime keeps the 4-bit kernel after its own graph optimizations
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(str(tmp_path / "optimized.onnx"))
        assert sum(n.op_type == "MatMulNBits" for n in optimized.graph.node) == len(layers)


def test_onnxruntime_fp4_weights_are_packed_and_decoded_in_the_graph(exports):
    """The stored nibbles as UINT8 bytes, decoded by graph nodes into the [out, in] weight (bit for bit:
    tests/test_onnx_packed.py), then Transpose → MatMul."""
    handle, model, _ = exports("nvfp4", "onnxruntime")
    inits = initializers(model)
    for key, layer in layer_keys(handle).items():
        weight = inits[f"{key}.weight"]
        assert weight.data_type == TensorProto.UINT8
        assert np.array_equal(numpy_helper.to_array(weight), layer.weight_packed.numpy())
        (transpose,) = consumers(model, f"{key}.weight_dq")
        assert transpose.op_type == "Transpose" and [n.op_type for n in consumers(model, transpose.output[0])] == ["MatMul"]
    assert "DequantizeLinear" not in {n.op_type for n in model.graph.node}


# --- mixed models, kernels, bookkeeping --------------------------------------------------------


def test_int8_layers_alone_keep_opset_17_and_mix_with_lowbit(tiny, batch, tmp_path):
    mixed_layers = []

    def int8_only(name, linear, amax):
        return QuantLinear.from_linear(linear, "int8", amax)

    def mixed(name, linear, amax):
        if "attention" in name:
            return QuantLinear.from_linear(linear, "int8", amax)
        mixed_layers.append(name)
        return QuantLinear.from_linear(linear, "nvfp4" if "intermediate" in name else "w4a16-int4", input_amax=amax, group_size=GROUP)

    int8 = make_handle(tiny, int8_only)
    model = onnx.load(str(export_onnx(int8, tmp_path / "int8.onnx", "tensorrt")))
    assert {op.domain: op.version for op in model.opset_import} == {"": 17}

    handle = make_handle(tiny, mixed)
    expected = torch_output(handle, batch)
    trt = onnx.load(str(export_onnx(handle, tmp_path / "trt.onnx", "tensorrt")))
    onnx.checker.check_model(trt, full_check=True)
    assert {op.domain: op.version for op in trt.opset_import} == {"": 23, "trt": 1}
    assert rel_error(run_reference(trt, batch), expected) < 1e-5
    path = export_onnx(handle, tmp_path / "ort.onnx", "onnxruntime")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("MatMulIntegerToFloat") == 8 and ops.count("MatMulNBits") == 2
    assert rel_error(onnx_session(path).run(None, feeds(batch))[0], expected) < 2e-3  # the integer GEMM (see test_onnxruntime_matches_pytorch)

    kernels = runtime_kernels(handle, "onnxruntime")
    assert set(kernels) == set(EncoderAdapter().quantizable_layers(tiny[0]))
    assert {kernels[name] for name in kernels if "attention" in name} == {"MatMulIntegerToFloat INT8 kernel"}
    assert kernels["encoder.layer.0.output.dense"] == "MatMulNBits 4-bit kernel"
    assert "no FP4" in kernels["encoder.layer.0.intermediate.dense"]
    assert runtime_kernels(handle.model, "tensorrt") == runtime_kernels(handle, "tensorrt")
    assert runtime_kernels(tiny[0], "onnxruntime") == {}  # float layers are not listed


@pytest.mark.parametrize("case", CASES)
def test_runtime_kernels_describe_every_layer(exports, tiny, case):
    handle, model, _ = exports(case, "onnxruntime")
    for target in ("onnxruntime", "tensorrt"):
        kernels = runtime_kernels(handle, target)
        assert set(kernels) == set(handle.adapter.quantizable_layers(tiny[0]))
        assert len(set(kernels.values())) == 1
    # what the report says runs each layer is what the exported graph holds
    nodes = {n.name for n in model.graph.node}
    for name, kernel in runtime_kernels(handle, "onnxruntime").items():
        assert (f"model.{name}.matmul_integer" in nodes) == (kernel == "MatMulIntegerToFloat INT8 kernel"), name
        assert (f"model.{name}.matmul_nbits" in nodes) == (kernel == "MatMulNBits 4-bit kernel"), name
    ort_kernel = next(iter(runtime_kernels(handle, "onnxruntime").values()))
    weight = CASES[case][0]
    if weight.endswith("int4"):
        assert ort_kernel == "MatMulNBits 4-bit kernel"
    elif "fp4" in weight or "fp8" in weight:
        assert ort_kernel.startswith("float MatMul")


def test_export_restores_the_layers(exports):
    handle = exports("nvfp4", "tensorrt")[0]
    exports("nvfp4", "onnxruntime")
    layers = layer_keys(handle).values()
    assert layers and all(layer.export_fn is None for layer in layers)
    assert handle.model.config._attn_implementation == "sdpa"
