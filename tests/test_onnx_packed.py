"""Weights stored packed in ONNX graphs and decoded by graph nodes (exporters/onnx_codebook.py): VQ on both
targets, NVFP4 / MXFP4 / FP8 on ONNX Runtime. Checks the bit-field arithmetic on hand-worked bytes, the
decoded weights bit for bit against PyTorch's, whole tiny-BERT graphs against PyTorch (ONNX Runtime;
onnx's reference evaluator for the TensorRT graphs), the file sizes, and sessions without constant folding.
"""
from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import nn

from compressor.model import load_model
from compressor.numerics.fp4 import pack_nibbles
from compressor.numerics.vq import pack_indices, row_bytes, unpack_indices
from compressor.quant_linear import QuantLinear
from exporters.onnx_codebook import unpack_codes
from exporters.onnx_export import onnx_session, runtime_kernels
from exporters.onnx_lowbit import _Lowering, reference_ops

SENTENCES = ["a short one", "a rather longer sentence, so that the batch has padding in it", "third"]
VQ_SCHEMES = ("vq3", "vq2", "vq3-int8", "vq3-fp8")
PACKED_SCHEMES = ("nvfp4", "mxfp4", "fp8", "w4a16-nvfp4", "w4a16-mxfp4")
# Float graphs (and INT8/FP8 Q/DQ inputs) follow PyTorch's ops; only summation order differs.
TOLERANCE = 1e-5
ORT_OPSET, TRT_OPSET = (17, 8), (23, 11)  # (opset, IR version) of each target


# --- small graphs built with the lowering's helpers --------------------------------------------


def decode_graph(build, rows: int, columns: int, opset=ORT_OPSET, target: str = "onnxruntime") -> onnx.ModelProto:
    """A graph without inputs whose one output is what ``build(lowering)`` returns, float [rows, columns]."""
    version, ir = opset
    model = helper.make_model(helper.make_graph([], "decode", [], []), opset_imports=[helper.make_opsetid("", version)],
                              ir_version=ir)
    low = _Lowering(model, {}, target)
    out = build(low)
    model.graph.node.extend(low.nodes)
    model.graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, [rows, columns]))
    onnx.checker.check_model(model, full_check=True)
    return model


def ort_session(model: onnx.ModelProto, constant_folding: bool = True) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if not constant_folding:
        options.add_session_config_entry("optimization.disable_specified_optimizers", "ConstantFolding")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_ort(model: onnx.ModelProto, constant_folding: bool = True) -> np.ndarray:
    return ort_session(model, constant_folding).run(None, {})[0]


def codes_graph(packed: torch.Tensor, bits: int, count: int, opset=ORT_OPSET) -> onnx.ModelProto:
    rows, width = packed.shape
    return decode_graph(lambda low: unpack_codes(low, "codes", low.array("packed", packed), rows, width, bits, count),
                        rows, count, opset)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype == np.float32 and np.array_equal(a.view(np.uint32), b.view(np.uint32))


# --- bit fields --------------------------------------------------------------------------------


def test_six_bit_indices_hand_worked():
    """[1, 2, 3, 63] at 6 bits, little-endian: bits 000001 010000 110000 111111 → bytes 129, 48, 252."""
    packed = torch.tensor([[129, 48, 252]], dtype=torch.uint8)
    assert torch.equal(pack_indices(torch.tensor([[1, 2, 3, 63]]), 6), packed)
    model = codes_graph(packed, 6, 4)
    assert run_ort(model).tolist() == [[1, 2, 3, 63]]
    assert ReferenceEvaluator(model).run(None, {})[0].tolist() == [[1, 2, 3, 63]]


def test_nibbles_hand_worked():
    """FP4 packing: the first code of a pair in the low nibble; 0x21 → 1, 2 and 0xF0 → 0, 15."""
    packed = torch.tensor([[0x21, 0xF0]], dtype=torch.uint8)
    assert torch.equal(pack_nibbles(torch.tensor([[1, 2, 0, 15]])), packed)
    assert run_ort(codes_graph(packed, 4, 4)).tolist() == [[1, 2, 0, 15]]


@pytest.mark.parametrize("bits", range(1, 17))
def test_unpack_matches_pack_indices_for_every_width(bits):
    """Random indices with a padded last chunk (13 per row), every width up to 16 bits, both opsets."""
    generator = torch.Generator().manual_seed(bits)
    indices = torch.randint(0, 2**bits, (3, 13), generator=generator)
    indices[0, :2] = 2**bits - 1  # all bits set: the mod must cut exactly at the field's top
    packed = pack_indices(indices, bits)
    assert packed.shape[1] == row_bytes(13, bits)
    expected = unpack_indices(packed, bits, 13).float().numpy()
    assert np.array_equal(run_ort(codes_graph(packed, bits, 13)), expected)
    assert np.array_equal(ReferenceEvaluator(codes_graph(packed, bits, 13, TRT_OPSET)).run(None, {})[0], expected)


# --- decoded weights, layer by layer -----------------------------------------------------------

# (scheme, in_features, vq_shape): padded index rows (in 36 → 18 6-bit indices in 5 chunks of 4), 5- and
# 9-bit indices, blocks of 16 and 32, FP8 rows
LAYERS = {
    "vq3": ("vq3", 64, None),
    "vq3-padded": ("vq3", 36, None),
    "vq2": ("vq2", 64, None),
    "vq-5bit": ("vq3", 40, (2, 32)),
    "vq-9bit-padded": ("vq3", 42, (3, 512)),
    "nvfp4": ("nvfp4", 64, None),
    "mxfp4": ("mxfp4", 96, None),
    "fp8": ("fp8", 48, None),
}


def quant_layer(case: str) -> QuantLinear:
    scheme, columns, vq_shape = LAYERS[case]
    torch.manual_seed(0)
    linear = nn.Linear(columns, 24)
    with torch.no_grad():
        linear.weight.mul_(torch.logspace(-3, 1, columns))  # blocks and rows of very different ranges
        linear.weight[0, :16] = 0  # an all-zero block (MXFP4's smallest scale, a subnormal 2^-127)
    return QuantLinear.from_linear(linear, scheme, input_amax=3.0, vq_shape=vq_shape)


@pytest.mark.parametrize("case", LAYERS)
def test_decoded_weight_is_pytorch_weight_bit_for_bit(case):
    layer = quant_layer(case)
    expected = layer.dequantized_weight().numpy()
    model = decode_graph(lambda low: low._weight_dq("layer", layer), layer.out_features, layer.in_features)
    assert not {op.op_type for op in model.graph.node} & {"BitShift", "BitwiseAnd", "DequantizeLinear"}
    for folding in (True, False):
        assert same_bits(run_ort(model, folding), expected)
    if layer.format.name == "vq":  # the same nodes in the TensorRT graph
        trt = decode_graph(lambda low: low._weight_dq("layer", layer), layer.out_features, layer.in_features,
                           TRT_OPSET, "tensorrt")
        assert same_bits(ReferenceEvaluator(trt).run(None, {})[0], expected)


# --- whole graphs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir):
    """(float handle with random biases, token batch, per-layer input amax)."""
    handle = load_model(tiny_bert_dir)
    torch.manual_seed(0)
    for module in handle.model.modules():
        if isinstance(module, nn.Linear):  # distinct biases: the exporter would merge identical zero ones
            nn.init.normal_(module.bias, std=0.05)
    batch = handle.adapter.tokenize(handle.tokenizer, SENTENCES, 32)
    amax = {}
    hooks = [m.register_forward_hook(lambda m, args, out, name=name: amax.__setitem__(name, float(args[0].abs().max())))
             for name, m in handle.model.named_modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        handle.adapter.forward(handle.model, batch)
    for hook in hooks:
        hook.remove()
    return handle, batch, amax


def quant_handle(tiny, scheme: str):
    """The tiny BERT with every quantizable Linear in ``scheme`` (a fresh load: exports must not share modules)."""
    handle, _, amax = tiny
    fresh = load_model(handle.source)
    fresh.model.load_state_dict(handle.model.state_dict())
    if scheme == "float":
        return fresh
    for name in fresh.adapter.quantizable_layers(fresh.model):
        parent, _, child = name.rpartition(".")
        layer = QuantLinear.from_linear(fresh.model.get_submodule(name), scheme, input_amax=amax[name])
        setattr(fresh.model.get_submodule(parent), child, layer)
    return fresh


@pytest.fixture(scope="module")
def exports(tiny, onnx_export_cache):
    """(scheme, target) → (handle, ModelProto, path), each exported once."""
    return onnx_export_cache("packed", lambda scheme: quant_handle(tiny, scheme))


def feeds(batch) -> dict:
    return {name: value.numpy() for name, value in batch.items()}


def torch_output(handle, batch) -> np.ndarray:
    with torch.no_grad():
        return handle.adapter.forward(handle.model, batch).numpy()


def rel_error(actual, expected) -> float:
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def layer_keys(handle) -> dict[str, QuantLinear]:
    return {f"model.{name}": m for name, m in handle.model.named_modules() if isinstance(m, QuantLinear)}


def initializers(model) -> dict:
    return {init.name: init for init in model.graph.initializer}


def check_vq_initializers(model, handle):
    """Indices as the stored bytes, codebook and row scales as FLOAT16, no float copy of the weight."""
    inits = initializers(model)
    for key, layer in layer_keys(handle).items():
        stored = layer.stored_weight()
        indices = inits[f"{key}.weight_indices"]
        assert indices.data_type == TensorProto.UINT8
        assert np.array_equal(numpy_helper.to_array(indices), stored["indices"].numpy())
        assert inits[f"{key}.weight_codebook"].data_type == inits[f"{key}.weight_scale"].data_type == TensorProto.FLOAT16
        assert not [name for name in inits if name.startswith(f"{key}.weight") and inits[name].data_type == TensorProto.FLOAT
                    and numpy_helper.to_array(inits[name]).size >= layer.in_features]


@pytest.mark.parametrize("scheme", VQ_SCHEMES)
def test_vq_onnxruntime_matches_pytorch(exports, tiny, scheme):
    handle, model, path = exports(scheme, "onnxruntime")
    onnx.checker.check_model(model, full_check=True)
    assert {op.domain: op.version for op in model.opset_import} == {"": 17}
    ops = collections.Counter(n.op_type for n in model.graph.node)
    layers = len(layer_keys(handle))
    assert ops["MatMulIntegerToFloat"] == 0  # INT8 inputs on VQ weights: Q/DQ, not the int8 GEMM
    assert ops["QuantizeLinear"] == (layers if scheme.endswith("int8") else 0)
    check_vq_initializers(model, handle)
    expected, float_out = torch_output(handle, tiny[1]), torch_output(tiny[0], tiny[1])
    error = rel_error(onnx_session(path).run(None, feeds(tiny[1]))[0], expected)
    assert error < min(TOLERANCE, rel_error(expected, float_out) / 100)  # far below what quantization moves


@pytest.mark.parametrize("scheme", VQ_SCHEMES)
def test_vq_tensorrt_graph(exports, tiny, scheme):
    handle, model, _ = exports(scheme, "tensorrt")
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 11 and {op.domain: op.version for op in model.opset_import} == {"": 23}
    assert not {n.op_type for n in model.graph.node} & {"BitShift", "BitwiseAnd"}  # TensorRT has neither
    check_vq_initializers(model, handle)
    quantize = {n.name for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert len(quantize) == (0 if scheme in ("vq3", "vq2") else len(layer_keys(handle)))
    if scheme.endswith("fp8"):  # TensorRT's FP8 input Q/DQ in front of the decoded weights
        assert quantize == {f"{key}.input_fp8" for key in layer_keys(handle)}
    expected = torch_output(handle, tiny[1])
    actual = ReferenceEvaluator(model, new_ops=reference_ops()).run(None, feeds(tiny[1]))[0]
    assert rel_error(actual, expected) < TOLERANCE


def tensor_bytes(init) -> int:
    return len(init.raw_data) or numpy_helper.to_array(init).nbytes


def layer_bytes(model, key: str) -> int:
    return sum(tensor_bytes(init) for init in model.graph.initializer if init.name.startswith(f"{key}.weight"))


def initializer_bytes(model) -> int:
    return sum(tensor_bytes(init) for init in model.graph.initializer)


@pytest.mark.parametrize("scheme", PACKED_SCHEMES)
def test_onnxruntime_fp4_fp8_weights_stay_packed(exports, tiny, scheme):
    handle, model, path = exports(scheme, "onnxruntime")
    _, float_model, float_path = exports("float", "onnxruntime")
    inits = initializers(model)
    float_bytes = 0
    for key, layer in layer_keys(handle).items():
        stored = layer.stored_weight()
        weight = inits[f"{key}.weight"]
        assert weight.data_type == TensorProto.UINT8
        codes = stored["values" if scheme == "fp8" else "packed"]
        assert numpy_helper.to_array(weight).tobytes() == codes.view(torch.uint8).numpy().tobytes()
        layer_float = 4 * layer.in_features * layer.out_features
        assert layer_bytes(model, key) <= (0.3 if scheme == "fp8" else 0.15) * layer_float
        float_bytes += layer_float
    saved = initializer_bytes(float_model) - initializer_bytes(model)
    assert saved > 0.7 * float_bytes
    if scheme.startswith("w4a16"):  # weight-only
        # The file shrinks too, less the decode nodes (about 20 a layer, which weigh something next to
        # 64-wide layers). Not asserted with FP4/FP8 inputs: on a model this small the nodes of their float
        # input quantization weigh more than the weights they quantize.
        assert float_path.stat().st_size - path.stat().st_size > 0.5 * float_bytes


@pytest.mark.parametrize("scheme", PACKED_SCHEMES + ("vq3",))
def test_exported_weights_decode_bit_for_bit(exports, tiny, scheme):
    """The decoded weights of the exported graph itself, as extra outputs, with and without folding."""
    handle, model, _ = exports(scheme, "onnxruntime")
    keys = layer_keys(handle)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(f"{key}.weight_dq", TensorProto.FLOAT, None) for key in keys)
    for folding in (True, False):
        weights = ort_session(probe, folding).run([f"{key}.weight_dq" for key in keys], feeds(tiny[1]))
        for (key, layer), weight in zip(keys.items(), weights):
            assert same_bits(weight, layer.dequantized_weight().numpy()), (key, folding)


# --- sessions without constant folding ---------------------------------------------------------


def optimized_graph(monkeypatch, tmp_path, path, **kwargs) -> onnx.ModelProto:
    """The graph that ``onnx_session`` makes ONNX Runtime run (saved through the session's own options)."""
    original = ort.InferenceSession
    saved = tmp_path / f"optimized-{len(list(tmp_path.iterdir()))}.onnx"

    def keep_optimized(model, options, *args, **kw):
        options.optimized_model_filepath = str(saved)
        return original(model, options, *args, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(ort, "InferenceSession", keep_optimized)
        onnx_session(path, **kwargs)
    return onnx.load(str(saved))


def packed_initializers(model) -> list[str]:
    return [init.name for init in model.graph.initializer if init.data_type == TensorProto.UINT8]


@pytest.mark.parametrize("scheme", ("vq3", "vq2", "nvfp4", "mxfp4", "fp8"))
def test_sessions_without_constant_folding_compute_the_same(exports, tiny, scheme, monkeypatch, tmp_path):
    handle, model, path = exports(scheme, "onnxruntime")
    inputs = feeds(tiny[1])
    folded = onnx_session(path).run(None, inputs)[0]
    unfolded = onnx_session(path, constant_folding=False).run(None, inputs)[0]
    # the same weights bit for bit; only the GEMM may block differently on a computed weight
    assert rel_error(unfolded, folded) < 1e-6
    assert rel_error(unfolded, torch_output(handle, tiny[1])) < TOLERANCE
    # folding expands the packed bytes into float initializers at load; without it they stay and are decoded
    assert len(packed_initializers(model)) >= len(layer_keys(handle))
    assert packed_initializers(optimized_graph(monkeypatch, tmp_path, path)) == []
    kept = optimized_graph(monkeypatch, tmp_path, path, constant_folding=False)
    assert sorted(packed_initializers(kept)) == sorted(packed_initializers(model))


def kernel(handle, target: str) -> str:
    (only,) = set(runtime_kernels(handle, target).values())
    return only


def test_runtime_kernels_name_the_decode(exports):
    vq, fp4 = exports("vq3", "onnxruntime")[0], exports("nvfp4", "onnxruntime")[0]
    assert "decoded in the graph" in kernel(vq, "onnxruntime") and "VQ" in kernel(vq, "onnxruntime")
    assert "decoded in the graph" in kernel(fp4, "onnxruntime")
    assert "VQ" in kernel(vq, "tensorrt") and "DequantizeLinear" not in kernel(vq, "tensorrt")
