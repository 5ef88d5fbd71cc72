"""The compressed checkpoint directory: INT8 tensors on disk, the record, reload, and atomic writes."""
import json
from pathlib import Path

import numpy as np

import pytest
import torch
from safetensors import safe_open

import exporters.checkpoint as checkpoint
from compressor.errors import CompressorError
from compressor.quant_linear import QuantLinear
from compressor.pipeline import compress
from compressor.recipe import Recipe, load_recipe
from compressor.checkpoint import FORMAT_VERSION, checkpoint_bytes, is_compressed_checkpoint, load_any, load_compressed
from exporters.checkpoint import save_compressed

QUERY = "encoder.layer.0.attention.self.query"


@pytest.fixture(scope="module")
def record(compressed_dir):
    return json.loads((compressed_dir / "compression.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def reloaded(compressed_dir):
    return load_compressed(compressed_dir)


def int8_layer_names(record):
    return [layer["name"] for layer in record["layers"] if layer["format"] == "int8"]


def test_directory_contents(compressed_dir):
    names = {p.name for p in compressed_dir.iterdir()}
    assert {"config.json", "model.safetensors", "compression.json", "README.md", "tokenizer.json"} <= names
    assert not any(".partial" in n for n in names)
    assert is_compressed_checkpoint(compressed_dir)
    assert not any(".partial" in p.name for p in compressed_dir.parent.iterdir())


def test_weights_stored_as_int8(compressed_dir, record):
    int8 = int8_layer_names(record)
    floats = [layer["name"] for layer in record["layers"] if layer["format"] != "int8"]
    assert len(int8) >= 34
    with safe_open(str(compressed_dir / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        for name in int8:
            weight = f.get_slice(f"{name}.weight_values")
            assert weight.get_dtype() == "I8", name
            out_features = weight.get_shape()[0]
            assert f.get_slice(f"{name}.weight_scale").get_dtype() == "F32"
            assert f.get_slice(f"{name}.weight_scale").get_shape() == [out_features]
            assert f.get_slice(f"{name}.input_scale").get_shape() == []
            assert float(f.get_tensor(f"{name}.input_scale")) > 0
            assert f.get_tensor(f"{name}.weight_scale").gt(0).all()
        for name in floats:
            assert f.get_slice(f"{name}.weight").get_dtype() == "F32", name
            assert f"{name}.weight_scale" not in keys
        # the FP32 parts that are never quantized
        assert f.get_slice("embeddings.word_embeddings.weight").get_dtype() == "F32"
        assert f.metadata().get("compressor") == "int8"  # the recipe name
    if QUERY in int8:
        assert f"{QUERY}.weight_scale" in keys and f"{QUERY}.input_scale" in keys


def test_int8_checkpoint_is_smaller(compressed_dir, minilm_dir):
    # 36 Linear layers hold ~10.6M of the 22.7M parameters: INT8 saves ~3/4 of those bytes
    ratio = checkpoint_bytes(compressed_dir) / checkpoint_bytes(minilm_dir)
    assert 0.5 < ratio < 0.75


def test_record(record, recipe, calib_file, minilm_dir):
    assert record["format_version"] == FORMAT_VERSION
    layers = record["layers"]
    assert len(layers) == 36
    assert len({layer["name"] for layer in layers}) == 36
    floats = [layer for layer in layers if layer["format"] == "float"]
    assert len(floats) <= 2
    assert {layer["format"] for layer in layers} <= {"int8", "float"}
    assert sorted(record["fallback"]) == sorted(layer["name"] for layer in floats)
    assert record["recipe"] == recipe.to_dict()
    assert Recipe.from_dict(record["recipe"]).to_dict() == recipe.to_dict()
    assert [p["pass"] for p in record["passes"]] == ["smoothquant", "quantize", "fallback"]
    calibration = record["calibration"]
    assert (calibration["data"], calibration["samples"], calibration["max_length"]) == (str(calib_file), 48, 128)
    assert calibration["default"] is False and "48 sentences" in calibration["description"]
    assert record["source"] == str(minilm_dir)
    for layer in layers:
        if layer["format"] == "int8":
            assert layer["input_amax"] > 0
            assert layer["error"] <= layer["error_unsmoothed"]
    errors = record["output_error"]
    assert 0 <= errors["output_error_final"] <= errors["output_error_quantized"] < 0.05
    assert errors["tolerance"] == recipe.find("fallback").config.tolerance


def test_readme(compressed_dir, record):
    text = (compressed_dir / "README.md").read_text(encoding="utf-8")
    assert text.startswith("# Compressed model: int8")
    assert f"{len(int8_layer_names(record))} Linear layers in `int8`: W8A8 INT8" in text
    assert "load_compressed" in text


def test_reload_reproduces_pipeline_model(compressed_handle, reloaded, record, packaged_sentences):
    assert reloaded.info == json.loads(json.dumps({"format_version": FORMAT_VERSION, **compressed_handle.info}))
    modules = dict(reloaded.model.named_modules())
    for layer in record["layers"]:
        module = modules[layer["name"]]
        if layer["format"] == "int8":
            assert isinstance(module, QuantLinear) and module.scheme.name == "int8"
            assert (module.input_smooth is not None) == (layer["smoothing_alpha"] is not None)
        else:
            assert type(module) is torch.nn.Linear
    batch = compressed_handle.tokenize(packaged_sentences[:16])
    with torch.no_grad():
        expected = compressed_handle.adapter.forward(compressed_handle.model, batch)
        actual = reloaded.adapter.forward(reloaded.model, batch)
    assert float((actual - expected).abs().max()) < 1e-6


def test_load_any_dispatches(compressed_dir, minilm_dir):
    assert load_any(compressed_dir).info["format_version"] == FORMAT_VERSION
    assert load_any(minilm_dir).info == {}


def test_w8a8_embeddings_close_to_fp32(reloaded, fp32_handle, packaged_sentences):
    sentences = packaged_sentences[:32]
    ref = fp32_handle.embed(sentences, batch_size=16)
    got = reloaded.embed(sentences, batch_size=16)
    cosine = (ref * got).sum(dim=1)  # both L2-normalised
    assert float(cosine.mean()) > 0.99
    assert float(cosine.min()) > 0.97
    assert not torch.equal(ref, got)  # it really is a different (quantized) model


def test_load_compressed_errors(compressed_dir, minilm_dir, tmp_path):
    with pytest.raises(CompressorError, match="not a compressed checkpoint"):
        load_compressed(minilm_dir)
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("config.json", "compression.json"):
        (bad / name).write_bytes((compressed_dir / name).read_bytes())
    record = json.loads((bad / "compression.json").read_text())
    (bad / "compression.json").write_text(json.dumps({**record, "format_version": 99}))
    with pytest.raises(CompressorError, match="unsupported format_version 99"):
        load_compressed(bad)
    (bad / "compression.json").write_text(json.dumps(record))
    with pytest.raises(CompressorError, match="has no model.safetensors"):
        load_compressed(bad)


# --- atomic output ---------------------------------------------------------------------------


def test_existing_output_without_overwrite(minilm_dir, calib_file, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(CompressorError, match="already exists.*--overwrite"):
        compress(minilm_dir, load_recipe("int8"), calib_file, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failing_compress_leaves_nothing(minilm_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    out = tmp_path / "out"
    with pytest.raises(CompressorError, match="data file is empty"):
        compress(minilm_dir, load_recipe("int8").with_calibration(calib_samples=8), empty, out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt"]


def empty_record() -> dict:
    """The smallest record save_compressed accepts: no layer quantized."""
    return {
        "recipe": load_recipe("int8").to_dict(), "layers": [], "fallback": [], "source": "x",
        "calibration": {"data": "d", "samples": 1, "max_length": 8},
    }


def test_failure_while_writing_leaves_old_output_and_no_partials(fp32_handle, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old version")
    record = empty_record()

    def exploding_card(_record):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "model_card", exploding_card)  # fails after the weights were written
    with pytest.raises(OSError, match="disk full"):
        save_compressed(fp32_handle, out, record, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .out.partial-* or .out.old-*

    fresh = tmp_path / "fresh"
    with pytest.raises(OSError, match="disk full"):
        save_compressed(fp32_handle, fresh, record)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_overwrite_replaces_directory(fp32_handle, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    record = empty_record()
    save_compressed(fp32_handle, out, record, overwrite=True)
    names = {p.name for p in out.iterdir()}
    assert "stale.txt" not in names and {"model.safetensors", "compression.json", "README.md"} <= names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# --- older checkpoint versions ---------------------------------------------------------------

ASSETS = Path(__file__).parent / "assets"


def test_format_version_2_checkpoint_loads_and_exports(tmp_path):
    """tests/assets/checkpoint_v2 was written by the format-2 code (every scheme of that version, INT8
    W8A8 layers stored as ``.weight``, INT8 embeddings); its reloaded output was saved beside it, on another
    machine."""
    from safetensors.torch import load_file

    from exporters.onnx_export import export_onnx, onnx_session

    handle = load_compressed(ASSETS / "checkpoint_v2")
    assert handle.info["format_version"] == 2
    expected = load_file(str(ASSETS / "checkpoint_v2_expected.safetensors"))
    inputs = {k: expected[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        hidden = handle.model(**inputs).last_hidden_state
    # Not bit-exact: another CPU's float kernels sum in another order (last-bit differences), and such a
    # difference can move an activation across an INT8 or FP4 rounding boundary: one quantization step.
    # Perturbing every layer's input by 1e-6 relative noise moved these outputs (magnitudes up to 3.3) by at
    # most 9e-5 over 100 draws; the tolerance leaves a few times that.
    torch.testing.assert_close(hidden, expected["last_hidden_state"], atol=3e-4, rtol=1e-4)
    w8a8 = handle.model.get_submodule("encoder.layer.0.output.dense")
    assert isinstance(w8a8, QuantLinear) and w8a8.scheme.name == "int8" and w8a8.weight_values.dtype == torch.int8
    path = export_onnx(handle, tmp_path / "v2.onnx", "onnxruntime")
    out = onnx_session(path).run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    reference = expected["last_hidden_state"].numpy()
    assert float(np.linalg.norm(out - reference) / np.linalg.norm(reference)) < 1e-2
    # saved again on this machine, it is a current-version checkpoint that reloads to the same model, bit for bit
    again = save_compressed(handle, tmp_path / "v3", dict(handle.info))
    reloaded = load_compressed(again)
    assert reloaded.info["format_version"] == FORMAT_VERSION
    with torch.no_grad():
        assert torch.equal(reloaded.model(**inputs).last_hidden_state, hidden)


def test_unknown_module_kind_is_one_line_error(tmp_path):
    import shutil

    copy = tmp_path / "ckpt"
    shutil.copytree(ASSETS / "checkpoint_v2", copy)
    handle = load_compressed(copy)
    path = save_compressed(handle, tmp_path / "v3", dict(handle.info))
    record = json.loads((path / "compression.json").read_text())
    record["modules"][0]["module"] = "hyperbolic_linear"
    (path / "compression.json").write_text(json.dumps(record))
    with pytest.raises(CompressorError, match="unknown module kind 'hyperbolic_linear'"):
        load_compressed(path)


def test_outputs_have_normal_permissions(tmp_path):
    import os
    import stat

    from exporters.onnx_export import export_onnx

    handle = load_compressed(ASSETS / "checkpoint_v2")
    mask = os.umask(0o022)
    try:
        out = save_compressed(handle, tmp_path / "ckpt", dict(handle.info))
        onnx_path = export_onnx(handle, tmp_path / "model.onnx", "onnxruntime")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    for path in [*out.iterdir(), onnx_path]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
