"""ONNX export of W4A4 layers with a Hadamard input rotation: Reshape → MatMul(H) → Reshape right
before the input quantization, on both targets, matching PyTorch (TensorRT graphs with FP4 tensors in
onnx's reference evaluator, ONNX Runtime graphs in ONNX Runtime). A tiny random BERT keeps it fast."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import nn
from transformers import BertConfig, BertModel

from compressor.adapters import EncoderAdapter
from compressor.files import load_tokenizer
from compressor.model import ModelHandle
from compressor.numerics.hadamard import hadamard_matrix, rotated_amax_bound
from compressor.quant_linear import QuantLinear
from exporters.onnx_export import onnx_session
from exporters.onnx_lowbit import reference_ops

SENTENCES = ["a short one", "a rather longer sentence, so that the batch has padding in it", "third"]
# case → (scheme, rotation block, smoothed inputs)
CASES = {
    "nvfp4": ("nvfp4", 16, False),
    "nvfp4-smooth": ("nvfp4", 16, True),
    "mxfp4": ("mxfp4", 32, False),
}


@pytest.fixture(scope="module")
def tiny(minilm_dir):
    """(float BertModel with hidden 64 / FFN 96, tokenizer, per-layer input channel amax)."""
    torch.manual_seed(0)
    tokenizer = load_tokenizer(minilm_dir)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=96, max_position_embeddings=64, attn_implementation="sdpa")
    model = BertModel(config, add_pooling_layer=False).eval()
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.bias, std=0.05)
    amax = {}
    hooks = [
        m.register_forward_hook(lambda m, args, out, name=name: amax.__setitem__(name, args[0].abs().amax(dim=(0, 1))))
        for name, m in model.named_modules() if isinstance(m, nn.Linear)
    ]
    with torch.no_grad():
        model(**EncoderAdapter().tokenize(tokenizer, SENTENCES, 32))
    for hook in hooks:
        hook.remove()
    return model, tokenizer, amax


@pytest.fixture(scope="module")
def batch(tiny):
    return EncoderAdapter().tokenize(tiny[1], SENTENCES, 32)


def rotated_handle(tiny, case: str) -> ModelHandle:
    scheme, block, smooth = CASES[case]
    base, tokenizer, amax = tiny
    model, adapter = copy.deepcopy(base), EncoderAdapter()
    generator = torch.Generator().manual_seed(1)
    for name in adapter.quantizable_layers(model):
        linear = model.get_submodule(name)
        factor = torch.rand(linear.in_features, generator=generator) + 0.5 if smooth else None
        channel_amax = amax[name] * (1 if factor is None else factor)
        rotation = 0 if name.endswith(".value") else block  # rotated and unrotated layers in one graph
        input_amax = rotated_amax_bound(channel_amax, block) if rotation else channel_amax.max()
        layer = QuantLinear.from_linear(linear, scheme, input_amax=float(input_amax), input_smooth=factor, rotation=rotation)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)
    return ModelHandle(model, tokenizer, adapter, Path("tiny-bert"))


@pytest.fixture(scope="module")
def exports(tiny, onnx_export_cache):
    return onnx_export_cache("rotation", lambda case: rotated_handle(tiny, case))


def feeds(batch):
    return {name: value.numpy() for name, value in batch.items()}


def rel_error(actual, expected) -> float:
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def torch_output(handle, batch) -> np.ndarray:
    with torch.no_grad():
        return handle.adapter.forward(handle.model, batch).numpy()


def consumers(model, name):
    return [n for n in model.graph.node if name in n.input]


def producer(model, name):
    return next(n for n in model.graph.node if name in n.output)


def initializer(model, name) -> np.ndarray:
    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name))


def check_rotation_pattern(model, handle, target):
    """Per rotated layer: Reshape [..., in/b, b] → MatMul(H_b) → Reshape [..., in] → the input quantization."""
    layers = {f"model.{n}": m for n, m in handle.model.named_modules() if isinstance(m, QuantLinear)}
    assert 0 < sum(bool(m.rotation) for m in layers.values()) < len(layers)
    for key, layer in layers.items():
        blocks = [n for n in model.graph.node if n.name == f"{key}.input_blocks"]
        if not layer.rotation:
            assert not blocks
            continue
        b, k = layer.rotation, layer.in_features
        (reshape,) = blocks
        assert reshape.op_type == "Reshape"
        assert initializer(model, reshape.input[1]).tolist() == [0, 0, k // b, b]
        if layer.input_smooth is not None:  # smoothing comes first
            assert producer(model, reshape.input[0]).op_type == "Mul"
        (matmul,) = consumers(model, reshape.output[0])
        assert matmul.op_type == "MatMul" and matmul.input[1] == f"rotation.hadamard_{b}"
        assert np.array_equal(initializer(model, matmul.input[1]), hadamard_matrix(b).numpy())
        (back,) = consumers(model, matmul.output[0])
        assert back.op_type == "Reshape" and initializer(model, back.input[1]).tolist() == [0, 0, k]
        quantizers = {n.op_type for n in consumers(model, back.output[0])}
        if target == "tensorrt" and layer.scheme.activation == "nvfp4":
            assert quantizers == {"TRT_FP4DynamicQuantize"}
        else:  # float ops of the dynamic block quantization
            assert quantizers & {"Reshape", "Abs", "ReduceMax", "Div"}
    hadamards = [i for i in model.graph.initializer if i.name.startswith("rotation.hadamard_")]
    assert len(hadamards) == 1  # shared by every layer of the block size


@pytest.mark.parametrize("case", CASES)
def test_tensorrt_rotated_graph_matches_pytorch(exports, batch, tiny, case):
    handle, model, _ = exports(case, "tensorrt")
    onnx.checker.check_model(model, full_check=True)
    assert {op.domain: op.version for op in model.opset_import}[""] == 23
    assert not any(n.domain == "compressor" for n in model.graph.node)
    check_rotation_pattern(model, handle, "tensorrt")
    expected = torch_output(handle, batch)
    actual = ReferenceEvaluator(model, new_ops=reference_ops()).run(None, feeds(batch))[0]
    with torch.no_grad():
        float_out = tiny[0](**batch).last_hidden_state.numpy()
    assert rel_error(actual, expected) < min(1e-5, rel_error(expected, float_out) / 100)


@pytest.mark.parametrize("case", CASES)
def test_onnxruntime_rotated_graph_matches_pytorch(exports, batch, case):
    handle, model, path = exports(case, "onnxruntime")
    onnx.checker.check_model(model, full_check=True)
    assert {op.domain: op.version for op in model.opset_import} == {"": 17}
    check_rotation_pattern(model, handle, "onnxruntime")
    assert rel_error(onnx_session(path).run(None, feeds(batch))[0], torch_output(handle, batch)) < 1e-5

