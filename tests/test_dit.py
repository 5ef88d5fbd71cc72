"""Diffusion Transformers saved by diffusers (DiT, PixArt): loading, compression calibrated on the sampling
trajectory, the compressed checkpoint, and ONNX export for both targets.

Tiny random models keep every step well under a second. Weights are drawn with std 0.1: the adaLN-zero
init would make every block the identity, and at std 0.05 the blocks move the output by about 1%, too
little for quantization error bounds to mean anything; at 0.1 they move it by about 14%.
"""
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from diffusers import DDIMScheduler, DiTTransformer2DModel, PixArtTransformer2DModel
from onnx import TensorProto
from onnx.reference import ReferenceEvaluator
from torch import nn

from compressor.errors import CompressorError
from compressor.quant_linear import QuantLinear
from compressor.model import load_model
from compressor.pipeline import compress
from compressor.quant_linear import QuantLinear
from compressor.recipe import FLAT_PRESETS, flat_recipe, load_recipe
from compressor.checkpoint import load_compressed
from exporters.onnx_export import export_onnx, onnx_session
from exporters.onnx_lowbit import reference_ops

STEPS = 4
FAST = {"calib_images": 8, "sampling_steps": STEPS}
DIT_INPUTS = ["hidden_states", "timestep", "class_labels"]
# Per block: attn1.to_q/k/v/out.0 and ff.net.0.proj/ff.net.2 are quantized; the adaLN modulation
# (norm1.linear) and the timestep embedder (norm1.emb.timestep_embedder.linear_1/2) stay float.
QUANTIZED_PER_BLOCK, FLOAT_PER_BLOCK = 6, 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _is_w8a8(module) -> bool:
    return isinstance(module, QuantLinear) and module.scheme.name == "int8"


def randomized(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for p in model.parameters():
        nn.init.normal_(p, std=0.1)
    return model.eval()


@pytest.fixture(scope="module")
def dit(tmp_path_factory):
    """(directory, the diffusers model saved in it): 2 blocks, 16 patches of a 1×8×8 latent, 4 classes."""
    path = tmp_path_factory.mktemp("dit")
    model = randomized(DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=1, out_channels=1, num_layers=2, sample_size=8,
        patch_size=2, num_embeds_ada_norm=4, norm_type="ada_norm_zero"))
    model.save_pretrained(path)
    DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                  timestep_spacing="trailing").save_pretrained(path)
    return path, model


@pytest.fixture(scope="module")
def compressed(dit, tmp_path_factory):
    """compressed(preset, **recipe overrides) → (output directory, handle compress() returned), made once each."""
    root, cache = tmp_path_factory.mktemp("compressed"), {}

    def get(preset: str, **overrides):
        key = preset + json.dumps(overrides, sort_keys=True)
        if key not in cache:
            recipe = flat_recipe({**FLAT_PRESETS[preset], **FAST, **overrides})
            output = root / f"{preset}-{len(cache)}"
            cache[key] = output, compress(dit[0], recipe, None, output)
        return cache[key]

    return get


@pytest.fixture(scope="module")
def batch():
    """Three samples (the export's dummy has two), the null class 4 included."""
    generator = torch.Generator().manual_seed(7)
    return {"hidden_states": torch.randn((3, 1, 8, 8), generator=generator),
            "timestep": torch.tensor([999, 500, 1]), "class_labels": torch.tensor([4, 0, 3])}


def run(handle, batch) -> np.ndarray:
    with torch.no_grad():
        return handle.adapter.forward(handle.model, batch).numpy()


def rel_error(actual, expected) -> float:
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def feeds(batch) -> dict:
    return {name: value.numpy() for name, value in batch.items()}


def formats(handle) -> dict[str, str]:
    return {layer["name"]: layer["format"] for layer in handle.info["layers"]}


# A last-bit difference upstream (the graph's MatMul/Softmax attention against PyTorch's SDPA) can move an
# INT8 input code by one step; over 30 random batches that cost up to 3.7% of the quantization error.
INT8_INPUTS = ("int8", "w4a8", "fp4-int8")


def assert_computes(actual, expected, float_expected, kind: str) -> None:
    """``actual`` is ``expected`` up to float rounding, and for a quantized model far from the float one."""
    error = rel_error(actual, expected)
    if kind in INT8_INPUTS:
        assert error < rel_error(expected, float_expected) / 10
        return
    assert error < 1e-5
    if kind != "fp32":
        assert error < rel_error(expected, float_expected) / 100


def constant_type(model, name: str) -> int:
    """The data type of an initializer or of a Constant node's value."""
    inits = {init.name: init.data_type for init in model.graph.initializer}
    if name in inits:
        return inits[name]
    (node,) = [n for n in model.graph.node if name in n.output]
    assert node.op_type == "Constant"
    return node.attribute[0].t.data_type


def op_count(model, op: str) -> int:
    return sum(node.op_type == op for node in model.graph.node)


def one_line_error(call, match: str) -> str:
    with pytest.raises(CompressorError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


# --- loading ----------------------------------------------------------------------------------


def test_load_matches_diffusers(dit, batch):
    path, model = dit
    handle = load_model(path)
    assert handle.adapter.kind == "diffusion" and handle.tokenizer is None
    assert handle.adapter.input_names() == tuple(DIT_INPUTS)
    with torch.no_grad():
        expected = model(**batch).sample.numpy()
    assert np.array_equal(run(handle, batch), expected)


def test_unsupported_class_and_missing_weights_fail_in_one_line(dit, tmp_path):
    path = dit[0]
    config = json.loads((path / "config.json").read_text())
    unsupported = tmp_path / "unet"
    shutil.copytree(path, unsupported)
    (unsupported / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DModel"}))
    message = one_line_error(lambda: load_model(unsupported), "UNet2DModel")
    assert "DiTTransformer2DModel" in message  # names what is supported

    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(path / "config.json", no_weights)
    one_line_error(lambda: load_model(no_weights), "no weight file")


# --- compression ------------------------------------------------------------------------------


def test_int8_quantizes_blocks_and_keeps_conditioning_float(compressed):
    _, handle = compressed("int8")
    chosen = formats(handle)
    quantized = [name for name in chosen if ".attn1." in name or ".ff." in name]
    kept = [name for name in chosen if name.endswith(".norm1.linear") or ".norm1.emb." in name
            or name in ("proj_out_1", "proj_out_2")]
    assert len(quantized) == 2 * QUANTIZED_PER_BLOCK and len(kept) == 2 * FLOAT_PER_BLOCK + 2
    assert sorted(quantized + kept) == sorted(chosen)
    assert all(chosen[name] == "int8" and _is_w8a8(handle.model.get_submodule(name)) for name in quantized)
    assert all(chosen[name] == "float" and type(handle.model.get_submodule(name)) is nn.Linear for name in kept)
    assert not handle.info["fallback"]


def test_pinned_formats_quantize_kept_layers(compressed):
    _, handle = compressed("int8", formats={"*.norm1.linear": "int8"})
    chosen = formats(handle)
    pinned = [name for name in chosen if name.endswith(".norm1.linear")]
    assert len(pinned) == 2
    assert all(chosen[name] == "int8" and _is_w8a8(handle.model.get_submodule(name)) for name in pinned)
    embedders = [name for name in chosen if ".norm1.emb." in name]
    assert embedders and all(chosen[name] == "float" for name in embedders)


def test_record_has_per_step_ranges_and_default_calibration(compressed, dit):
    _, handle = compressed("int8")
    scheduler = DDIMScheduler.from_pretrained(dit[0])
    scheduler.set_timesteps(STEPS)
    ranges = handle.info["calibration"]["timestep_ranges"]
    assert ranges["timesteps"] == scheduler.timesteps.tolist()
    assert sorted(ranges["input_amax"]) == sorted(formats(handle))
    assert all(len(amax) == STEPS and min(amax) > 0 for amax in ranges["input_amax"].values())
    # the point of recording them: input ranges move along the trajectory
    assert any(max(amax) > 1.05 * min(amax) for amax in ranges["input_amax"].values())
    calibration = handle.info["calibration"]
    assert calibration["default"] is True
    assert (calibration["samples"], calibration["steps"]) == (FAST["calib_images"], STEPS)


def test_checkpoint_reloads_with_identical_outputs(compressed, batch):
    output, handle = compressed("int8")
    loaded = load_compressed(output)
    assert _is_w8a8(loaded.model.get_submodule("transformer_blocks.1.ff.net.2"))
    assert np.array_equal(run(loaded, batch), run(handle, batch))


def test_int8_output_stays_close_to_fp32(compressed, dit, batch):
    # measured 0.14% relative: quantization moves the output, but far less than the bound
    error = rel_error(run(compressed("int8")[1], batch), run(load_model(dit[0]), batch))
    assert 1e-5 < error < 0.005


def test_calibration_file_is_used(dit, tmp_path):
    data = tmp_path / "calib.json"
    data.write_text(json.dumps({"class_labels": [0, 1, 2, 3], "seed": 3}))
    recipe = flat_recipe(FAST)
    handle = load_model(dit[0])
    batches, _, info = handle.adapter.calibration(handle, data, recipe.calibration)
    assert len(batches) == STEPS
    # guided (the recipe default): the file's labels, then the null class for the unconditional half
    assert batches[0]["class_labels"].tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
    assert (info["default"], info["samples"], info["seed"], info["data"]) == (False, 4, 3, str(data))

    record = compress(dit[0], recipe, data, tmp_path / "out").info["calibration"]
    assert (record["default"], record["samples"], record["seed"]) == (False, 4, 3)


@pytest.mark.parametrize("content, match", [
    ('{"class_labels": [0, 4]}', "class_labels"),  # 4 is the null class, not a label
    ("class_labels: [0, 1]", "JSON"),
    ('{"class_labels": [0], "colour": 1}', "colour"),
    ('{"seed": 1}', "class_labels"),
])
def test_bad_calibration_file_fails_naming_the_field(dit, tmp_path, content, match):
    data = tmp_path / "calib.json"
    data.write_text(content)
    recipe = flat_recipe(FAST)
    one_line_error(lambda: compress(dit[0], recipe, data, tmp_path / "out"), match)
    assert not (tmp_path / "out").exists()


# --- ONNX -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def handles(dit, compressed):
    fp32 = load_model(dit[0])
    return lambda kind: fp32 if kind == "fp32" else compressed(kind)[1]


def dims(value) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.mark.parametrize("kind", ["fp32", "int8", "fp8", "w4a8"])
def test_onnxruntime_export_matches_pytorch(handles, batch, tmp_path, kind):
    handle = handles(kind)
    path = export_onnx(handle, tmp_path / f"{kind}.onnx", "onnxruntime")
    model = onnx.load(str(path))
    assert [v.name for v in model.graph.input] == DIT_INPUTS
    assert [v.name for v in model.graph.output] == ["sample"]
    inputs = {v.name: v for v in model.graph.input}
    assert dims(inputs["hidden_states"]) == ["batch", 1, 8, 8]
    assert dims(inputs["timestep"]) == dims(inputs["class_labels"]) == ["batch"]
    assert inputs["timestep"].type.tensor_type.elem_type == TensorProto.INT64
    assert dims(model.graph.output[0])[0] == "batch"
    layers = 2 * QUANTIZED_PER_BLOCK
    assert op_count(model, "MatMulIntegerToFloat") == (layers if kind == "int8" else 0)
    assert op_count(model, "QuantizeLinear") == {"int8": layers, "w4a8": layers}.get(kind, 0)

    actual = onnx_session(path, threads=1).run(None, feeds(batch))[0]
    assert actual.shape == (3, 1, 8, 8)
    assert_computes(actual, run(handle, batch), run(handles("fp32"), batch), kind)


@pytest.mark.parametrize("kind", ["fp32", "int8", "fp8", "w4a8"])
def test_tensorrt_export(handles, batch, tmp_path, kind):
    handle = handles(kind)
    path = export_onnx(handle, tmp_path / f"{kind}.onnx", "tensorrt")
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [v.name for v in model.graph.input] == DIT_INPUTS
    assert all(dims(v)[0] == "batch" for v in (*model.graph.input, *model.graph.output))
    layers = 2 * QUANTIZED_PER_BLOCK
    opset = {op.domain: op.version for op in model.opset_import}[""]
    expected, float_expected = run(handle, batch), run(handles("fp32"), batch)
    if kind in ("fp32", "int8"):  # opset 17, standard ops: ONNX Runtime runs the TensorRT graph as is
        assert opset == 17
        assert op_count(model, "QuantizeLinear") == (layers if kind == "int8" else 0)
        assert op_count(model, "DequantizeLinear") == (2 * layers if kind == "int8" else 0)  # input and weight
        assert [init.data_type for init in model.graph.initializer].count(TensorProto.INT8) == (
            layers if kind == "int8" else 0)
        assert_computes(onnx_session(path, threads=1).run(None, feeds(batch))[0], expected, float_expected, kind)
        return
    assert opset == 23 and model.ir_version == 11
    low = TensorProto.FLOAT4E2M1 if kind == "w4a8" else TensorProto.FLOAT8E4M3FN
    quantized = {f"model.{name}.weight" for name, m in handle.model.named_modules() if isinstance(m, QuantLinear)}
    assert len(quantized) == layers
    assert {init.name for init in model.graph.initializer if init.data_type == low and init.name.endswith(".weight")} == quantized
    quantize = [node for node in model.graph.node if node.op_type == "QuantizeLinear"]
    assert len(quantize) == layers
    # w4a8: static INT8 inputs (int8 zero point) beside the NVFP4 weights; fp8: FP8 inputs
    input_type = TensorProto.INT8 if kind == "w4a8" else TensorProto.FLOAT8E4M3FN
    assert {constant_type(model, q.input[2]) for q in quantize} == {input_type}
    actual = ReferenceEvaluator(model, new_ops=reference_ops()).run(None, feeds(batch))[0]
    assert_computes(actual, expected, float_expected, kind)


def test_quantized_layer_kinds(handles):
    """The w4a8 preset gives NVFP4 weights with INT8 inputs, the layers the exports above lower."""
    layers = [m for m in handles("w4a8").model.modules() if isinstance(m, QuantLinear)]
    assert len(layers) == 2 * QUANTIZED_PER_BLOCK
    assert {(m.scheme.weight, m.scheme.activation) for m in layers} == {("nvfp4", "int8")}


def test_searched_fp4_int8_mix_exports_for_both_targets(handles, batch, tmp_path):
    handle = handles("fp4-int8")
    chosen = [scheme for scheme in formats(handle).values() if scheme != "float"]
    assert len(chosen) == 2 * QUANTIZED_PER_BLOCK and set(chosen) <= {"nvfp4", "w4a8-nvfp4", "int8"}
    assert len(set(chosen)) >= 2  # a mix, not one scheme everywhere
    expected, float_expected = run(handle, batch), run(handles("fp32"), batch)
    path = export_onnx(handle, tmp_path / "ort.onnx", "onnxruntime")
    assert_computes(onnx_session(path, threads=1).run(None, feeds(batch))[0], expected, float_expected, "fp4-int8")
    model = onnx.load(str(export_onnx(handle, tmp_path / "trt.onnx", "tensorrt")))
    onnx.checker.check_model(model, full_check=True)
    assert op_count(model, "TRT_FP4DynamicQuantize") == chosen.count("nvfp4")
    # INT8 inputs (W8A8 and W4A8 layers) are quantized by a QuantizeLinear
    assert op_count(model, "QuantizeLinear") == chosen.count("int8") + chosen.count("w4a8-nvfp4")
    actual = ReferenceEvaluator(model, new_ops=reference_ops()).run(None, feeds(batch))[0]
    assert_computes(actual, expected, float_expected, "fp4-int8")


# --- PixArt -----------------------------------------------------------------------------------


def test_pixart_compress_and_export(tmp_path):
    path = tmp_path / "pixart"
    randomized(PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1, sample_size=8,
        patch_size=2, cross_attention_dim=16, caption_channels=12, norm_type="ada_norm_single")).save_pretrained(path)
    recipe = flat_recipe({"calib_images": 4, "sampling_steps": 3})
    handle = compress(path, recipe, None, tmp_path / "out")
    assert handle.info["calibration"]["default"] is True
    assert "Gaussian caption embeddings" in handle.info["calibration"]["description"]
    chosen = formats(handle)
    quantized = [name for name in chosen if ".attn1." in name or ".attn2." in name or ".ff." in name]
    assert len(quantized) == 10 and all(chosen[name] == "int8" for name in quantized)
    assert all(chosen[name] == "float" for name in chosen if name.startswith(("adaln_single.", "caption_projection.")))

    onnx_path = export_onnx(handle, tmp_path / "pixart.onnx", "onnxruntime")
    model = onnx.load(str(onnx_path))
    inputs = {v.name: v for v in model.graph.input}
    assert list(inputs) == ["hidden_states", "timestep", "encoder_hidden_states"]
    assert dims(inputs["encoder_hidden_states"]) == ["batch", "sequence", 12]
    assert op_count(model, "If") == 0  # PixArt's squeeze(1) folded: ONNX Runtime cannot load the If
    generator = torch.Generator().manual_seed(3)
    batch = {"hidden_states": torch.randn((3, 4, 8, 8), generator=generator), "timestep": torch.tensor([5, 400, 990]),
             "encoder_hidden_states": torch.randn((3, 5, 12), generator=generator)}  # dummy: batch 2, 8 tokens
    expected = run(handle, batch)
    actual = onnx_session(onnx_path, threads=1).run(None, feeds(batch))[0]
    assert actual.shape == (3, 8, 8, 8)  # learned sigma: twice the latent channels
    assert_computes(actual, expected, run(load_model(path), batch), "int8")
