"""Low-bit schemes end to end on a small BERT: calibration, rounding, search, checkpoint, reload."""
from __future__ import annotations

import itertools
import json

import pytest
import torch
from safetensors import safe_open

from compressor.cli import main
from compressor.errors import CompressorError
from compressor.numerics.formats import SCHEMES
from compressor.passes.awq import search_awq_scales
from compressor.passes.precision_search import Option, choose_schemes
from compressor.pipeline import compress
from compressor.quant_embedding import QuantEmbedding
from compressor.quant_linear import QuantLinear
from compressor.recipe import flat_recipe, load_recipe
from compressor.numerics.formats import make_weight_format
from compressor.checkpoint import checkpoint_bytes, load_compressed

FAST = dict(calib_samples=24, sensitivity_samples=8, search_tokens=512, batch_size=8, max_length=32)
QUERY = "encoder.layer.0.attention.self.query"


def run(tiny_bert_dir, calib_file, tmp_path, **fields):
    recipe = flat_recipe({**FAST, "fallback_max_layers": 0, **fields})
    return compress(tiny_bert_dir, recipe, calib_file, tmp_path / "out"), tmp_path / "out"


def outputs(handle, sentences):
    with torch.no_grad():
        return handle.adapter.forward(handle.model, handle.tokenize(sentences))


# --- the bit-budget choice -------------------------------------------------------------------


def test_choose_schemes_matches_brute_force():
    gen = torch.Generator().manual_seed(1)
    names = [f"l{i}" for i in range(6)]
    params = {n: int(torch.randint(100, 1000, (1,), generator=gen)) for n in names}
    options = {}
    for n in names:
        e4, e8 = torch.rand(2, generator=gen).tolist()
        options[n] = [Option("nvfp4", 4.5, e4), Option("int8", 8.0, e8 / 10), Option("float", 16.0, 0.0)]
    total = sum(params.values())
    for max_bits in (4.5, 5.0, 6.0, 9.0):
        chosen = choose_schemes(options, params, max_bits)
        bits = {o.scheme: o.bits for o in options[names[0]]}
        assert sum(bits[chosen[n]] * params[n] for n in names) <= max_bits * total + 1e-6
        best = min(
            (combo for combo in itertools.product(*[options[n] for n in names])
             if sum(o.bits * params[n] for o, n in zip(combo, names)) <= max_bits * total),
            key=lambda combo: sum(o.error for o in combo),
        )
        got = sum(next(o.error for o in options[n] if o.scheme == chosen[n]) for n in names)
        # the cost grid rounds up, so the optimum can be missed only by a hair of budget
        assert got <= sum(o.error for o in best) + 1e-3


def test_choose_schemes_rejects_an_impossible_budget():
    options = {"a": [Option("nvfp4", 4.5, 1.0), Option("int8", 8.0, 0.1)]}
    with pytest.raises(CompressorError, match="--max-bits 4 is below the smallest plan"):
        choose_schemes(options, {"a": 100}, 4.0)


# --- AWQ -------------------------------------------------------------------------------------


def test_awq_scaling_helps_outlier_channels_and_never_hurts():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 128, generator=gen)
    x[:, :4] *= 30  # a few channels carry most of the signal
    w = torch.randn(64, 128, generator=gen) * 0.05
    fmt = make_weight_format("int4", group_size=32)
    choice = search_awq_scales(x, w, fmt)
    assert choice.alpha is not None and choice.error < 0.8 * choice.error_unsmoothed
    flat = search_awq_scales(torch.randn(512, 128, generator=gen), w, fmt)
    assert flat.error <= flat.error_unsmoothed


# --- whole pipeline on a tiny model -----------------------------------------------------------


@pytest.mark.parametrize("scheme,extra", [
    ("w4a16-nvfp4", {"rounding": "gptq"}),
    ("nvfp4", {}),
    ("mxfp4", {"rounding": "gptq"}),
    ("w4a16-int4", {"group_size": 32, "symmetric": False, "awq": True}),
    ("w4a8-int4", {"group_size": 32}),
    ("fp8", {"observer": "max"}),
])
def test_scheme_round_trips_through_checkpoint(scheme, extra, tiny_bert_dir, calib_file, packaged_sentences, tmp_path):
    handle, out = run(tiny_bert_dir, calib_file, tmp_path, scheme=scheme, **extra)
    record = json.loads((out / "compression.json").read_text())
    assert {layer["format"] for layer in record["layers"]} == {scheme}
    expected_bits = record["layers"][0]["bits"]
    assert record["bits_per_weight"] == pytest.approx(expected_bits, rel=0.02)
    reloaded = load_compressed(out)
    query = reloaded.model.get_submodule(QUERY)
    assert isinstance(query, QuantLinear) and query.scheme.name == scheme
    sentences = packaged_sentences[:6]
    assert torch.equal(outputs(reloaded, sentences), outputs(handle, sentences))
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        assert f"{QUERY}.weight" not in keys  # no float copy of a quantized weight
        if SCHEMES[scheme].weight in ("nvfp4", "mxfp4", "int4"):
            packed = f.get_slice(f"{QUERY}.weight_packed")
            assert packed.get_dtype() == "U8" and packed.get_shape() == [64, 32]  # two 4-bit values per byte
        if SCHEMES[scheme].weight == "nvfp4":
            assert f.get_slice(f"{QUERY}.weight_block_scale").get_dtype() == "F8_E4M3"
        if scheme == "fp8":
            assert f.get_slice(f"{QUERY}.weight_values").get_dtype() == "F8_E4M3"


def test_quantized_model_stays_close_to_float(tiny_bert_dir, calib_file, packaged_sentences, tmp_path):
    from compressor.model import load_model

    handle, _ = run(tiny_bert_dir, calib_file, tmp_path, scheme="w4a16-nvfp4", rounding="gptq")
    reference = outputs(load_model(tiny_bert_dir), packaged_sentences[:8])
    got = outputs(handle, packaged_sentences[:8])
    cosine = torch.nn.functional.cosine_similarity(got.flatten(0, 1), reference.flatten(0, 1), dim=-1)
    assert float(cosine.mean()) > 0.99


def test_search_respects_budget_and_records_sensitivity(tiny_bert_dir, calib_file, tmp_path):
    pinned = "encoder.layer.1.output.dense"
    handle, out = run(tiny_bert_dir, calib_file, tmp_path, scheme="nvfp4", candidates=["nvfp4", "int8"],
                      max_bits=7.0, formats={pinned: "float"})
    record = json.loads((out / "compression.json").read_text())
    layers = {layer["name"]: layer for layer in record["layers"]}
    assert layers[pinned]["format"] == "float" and layers[pinned]["sensitivity"] is None
    searched = [layer for name, layer in layers.items() if name != pinned]
    assert all(set(layer["sensitivity"]) == {"nvfp4", "int8"} for layer in searched)
    assert {layer["format"] for layer in searched} <= {"nvfp4", "int8"}
    # the pinned float layer eats budget too; the plan stays within it
    assert record["bits_per_weight"] <= 7.0 + 1e-9
    assert record["search"]["bits_per_weight"] == pytest.approx(record["bits_per_weight"])
    worst = record["search"]["most_sensitive"]
    assert len(worst) == 3
    assert [w["sensitivity"] for w in worst] == sorted((w["sensitivity"] for w in worst), reverse=True)
    top = max(searched, key=lambda layer: layer["sensitivity"]["nvfp4"])
    assert worst[0]["name"] == top["name"]


def test_embeddings_quantized_and_reloaded(tiny_bert_dir, calib_file, packaged_sentences, tmp_path):
    handle, out = run(tiny_bert_dir, calib_file, tmp_path, scheme="w4a16-nvfp4", embeddings="int8")
    word = handle.model.get_submodule("embeddings.word_embeddings")
    assert isinstance(word, QuantEmbedding)
    assert type(handle.model.get_submodule("embeddings.token_type_embeddings")) is torch.nn.Embedding  # 2 rows
    reloaded = load_compressed(out)
    assert torch.equal(outputs(reloaded, packaged_sentences[:4]), outputs(handle, packaged_sentences[:4]))
    assert checkpoint_bytes(out) < 0.35 * checkpoint_bytes(tiny_bert_dir)
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert f.get_slice("embeddings.word_embeddings.weight_values").get_dtype() == "I8"


# --- recipe and CLI errors -------------------------------------------------------------------


@pytest.mark.parametrize("fields,message", [
    ({"scheme": "int3"}, "field 'scheme'"),
    ({"formats": {"*.query": "nope"}}, "field 'formats'"),
    ({"candidates": ["nvfp4", "int8"]}, "field 'max_bits'"),
    ({"candidates": ["fp5"], "max_bits": 5.0}, "field 'candidates'"),
    ({"rounding": "adaround"}, "field 'rounding'"),
    ({"embeddings": "int2"}, "field 'embeddings'"),
    ({"group_size": 7}, "field 'group_size'"),
])
def test_recipe_rejects_bad_lowbit_fields(fields, message):
    with pytest.raises(CompressorError, match=message):
        flat_recipe(fields)


def test_presets_name_their_formats():
    def quantize(name):
        return load_recipe(name).find("quantize").config

    assert quantize("fp4-int8").candidates == ["nvfp4", "w4a8-nvfp4", "int8"] and quantize("fp4-int8").max_bits == 5.0
    assert quantize("int4-awq").scheme == "w4a16-int4" and load_recipe("int4-awq").find("awq") is not None
    assert quantize("w4a16-nvfp4").scheme == "w4a16-nvfp4"


def test_cli_max_bits_errors(capsys, tiny_bert_dir, calib_file, tmp_path):
    code = main(["compress", str(tiny_bert_dir), "--recipe", "int8", "--max-bits", "5",
                 "--calib-data", str(calib_file), "--output", str(tmp_path / "a")])
    assert code == 2 and "--max-bits needs a recipe that searches" in capsys.readouterr().err
    code = main(["compress", str(tiny_bert_dir), "--recipe", "fp4-int8", "--max-bits", "4", "--num-samples", "8",
                 "--calib-data", str(calib_file), "--output", str(tmp_path / "b")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("compressor: error:")]
    assert code == 2 and len(errors) == 1 and "--max-bits 4 is below the smallest plan" in errors[0]
    assert not (tmp_path / "b").exists()
