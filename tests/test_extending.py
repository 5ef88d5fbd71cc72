"""A new weight format and a new model family each take one file and a registry line (tests/toy_format.py,
tests/toy_adapter.py): registered, they run compress → checkpoint → reload → ONNX export with no other
change to the product."""
import importlib
import sys

import numpy as np
import pytest
import torch
from onnx.reference import ReferenceEvaluator

from compressor.adapters.base import ADAPTERS
from compressor.checkpoint import load_compressed
from compressor.errors import CompressorError
from compressor.numerics.formats import SCHEMES, WEIGHT_FORMATS
from compressor.pipeline import compress
from compressor.quant_linear import QuantLinear
from compressor.recipe import Recipe
from exporters.onnx_export import export_onnx, onnx_session
from exporters.onnx_lowbit import WEIGHT_DEQUANTIZERS


@pytest.fixture
def toys():
    """Import (and so register) the toy format and adapter; take them out of the registries afterwards."""
    modules = [importlib.import_module(name) for name in ("toy_format", "toy_adapter")]
    yield modules
    for registry, name in ((WEIGHT_FORMATS, "int6"), (SCHEMES, "w6a16-int6"), (WEIGHT_DEQUANTIZERS, "int6"),
                           (ADAPTERS, "toy-mlp")):
        registry.pop(name, None)
    for module in ("toy_format", "toy_adapter"):
        sys.modules.pop(module, None)


def _recipe(scheme: str) -> Recipe:
    return Recipe.from_dict({"name": "toy", "passes": [{"quantize": {"scheme": scheme}}],
                             "calibration": {"calib_samples": 16, "sensitivity_samples": 8, "batch_size": 8}})


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_toy_format_and_adapter_compress_reload_and_export(toys, tmp_path, target):
    toy_format, toy_adapter = toys
    source = toy_adapter.write_toy_checkpoint(tmp_path / "toy")
    original = toy_adapter.ToyMlpAdapter(source).load()
    out = tmp_path / "toy-int6"
    handle = compress(source, _recipe("w6a16-int6"), None, out)
    reloaded = load_compressed(out)
    assert type(reloaded.adapter).__name__ == "ToyMlpAdapter"

    layers = {n: m for n, m in reloaded.model.named_modules() if isinstance(m, QuantLinear)}
    assert sorted(layers) == ["blocks.0.0", "blocks.0.2", "blocks.1.0", "blocks.1.2"]
    for name, layer in layers.items():
        # independent reference: per-row symmetric rounding to 31 levels, written out here
        weight = original.get_submodule(name).weight.detach()
        step = weight.abs().amax(dim=1, keepdim=True) / 31
        torch.testing.assert_close(layer.dequantized_weight(), torch.round(weight / step).clamp(-31, 31) * step)
        assert layer.weight_codes.dtype == torch.int8 and int(layer.weight_codes.abs().max()) <= 31

    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reloaded.model(x)
        assert torch.equal(expected, handle.model(x))  # save → reload on one machine: bit for bit
    graph = export_onnx(reloaded, tmp_path / "toy.onnx", target)
    # The TensorRT graph (opset 23) is checked with ONNX's reference evaluator, as the other TensorRT-graph
    # tests do: ONNX Runtime's CPU session computes this graph's numbers differently from the evaluator.
    run = onnx_session(graph).run if target == "onnxruntime" else ReferenceEvaluator(str(graph)).run
    got = run(None, {"features": x.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_a_pass_names_the_capability_the_toy_model_lacks(toys, tmp_path):
    _, toy_adapter = toys
    source = toy_adapter.write_toy_checkpoint(tmp_path / "toy")
    recipe = Recipe.from_dict({"name": "t", "passes": [{"tome": {"r": 1}}], "calibration": {"calib_samples": 8}})
    with pytest.raises(CompressorError, match="tome\\) needs a token-merging patch for its blocks; toy-mlp models have none"):
        compress(source, recipe, None, tmp_path / "out")
    assert not (tmp_path / "out").exists()
