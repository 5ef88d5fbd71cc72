"""The pass interface end to end with a pass that lives in the tests (tests/example_pass.py): registered
by its own file, used from a recipe file through the CLI, and fed by the calibration service."""
import json

import torch

import example_pass  # noqa: F401 (registers bias_correction)
from calibrators.service import CalibrationService
from compressor.cli import main
from compressor.model import load_model
from compressor.pipeline import run_recipe
from compressor.recipe import load_recipe


def test_example_pass_runs_from_a_recipe_file(tiny_bert_dir, calib_file, tmp_path):
    recipe = tmp_path / "corrected.yaml"
    recipe.write_text("calibration: {calib_samples: 16, sensitivity_samples: 8}\npasses:\n"
                      "  - quantize: {scheme: int8, observer: max}\n  - bias_correction: {strength: 1.0}\n")
    out = tmp_path / "out"
    assert main(["compress", str(tiny_bert_dir), "--recipe", str(recipe), "--calib-data", str(calib_file),
                 "--output", str(out)]) == 0
    record = json.loads((out / "compression.json").read_text())
    assert [p["pass"] for p in record["passes"]] == ["quantize", "bias_correction"]
    assert record["passes"][1]["layers"] == 12 and record["passes"][1]["max_shift"] > 0


def test_bias_correction_removes_the_mean_output_error(tiny_bert_dir, calib_file):
    """Independent check: the mean error of a corrected layer on the calibration inputs is ~0, and the
    model's output error drops."""
    from calibrators.data import read_sentences

    sentences = read_sentences(calib_file)[:16]
    errors = {}
    for passes in (["quantize"], ["quantize", "bias_correction"]):
        handle = load_model(tiny_bert_dir)
        recipe = load_recipe("int8-minmax")
        recipe = type(recipe).from_dict({"name": "x", "passes": [
            {"quantize": {"scheme": "int8", "observer": "max"}}, *([{"bias_correction": {}}] if len(passes) > 1 else [])]})
        recipe = recipe.with_calibration(calib_samples=16, sensitivity_samples=16)
        batches = handle.adapter.batches(handle, sentences, recipe.calibration)
        record = run_recipe(handle, batches, batches, recipe)
        errors[len(passes)] = record["output_error"]["output_error_final"]
        if len(passes) > 1:
            name = "encoder.layer.1.output.dense"
            service = CalibrationService(handle, batches)
            x = service.samples(name)
            float_layer = torch.nn.Linear(128, 64)  # rebuild the float layer from the original checkpoint
            float_layer.load_state_dict(load_model(tiny_bert_dir).model.get_submodule(name).state_dict())
            with torch.no_grad():
                mean_error = (float_layer(x) - handle.model.get_submodule(name)(x)).mean(dim=0)
            assert float(mean_error.abs().max()) < 1e-3
    assert errors[2] < errors[1]


def test_service_gathers_once_and_again_after_a_layer_changes(tiny_bert_dir, calib_file):
    from calibrators.data import read_sentences

    handle = load_model(tiny_bert_dir)
    batches = handle.adapter.batches(handle, read_sentences(calib_file)[:8], load_recipe("int8").calibration)
    service = CalibrationService(handle, batches, sample_tokens=10_000)
    layers = ["encoder.layer.0.attention.self.query", "encoder.layer.1.output.dense"]
    service.require(layers, samples=True, hessians=True)
    assert service.runs == 1  # both kinds, both layers, one run over the batches

    # Independent reference: every real token's input to the layer, from a plain forward hook.
    seen = []
    hook = handle.model.get_submodule(layers[1]).register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        for batch in batches:
            handle.model(**batch)
    hook.remove()
    x = torch.cat([inp[b["attention_mask"].bool()] for inp, b in zip(seen, batches)]).double()
    assert torch.allclose(service.hessian(layers[1]), 2.0 / len(x) * x.T @ x, rtol=1e-6, atol=1e-9)
    assert torch.equal(service.channel_amax(layers[1]), x.abs().amax(dim=0).float())
    assert service.runs == 1  # served from the cache
    service.invalidate(layers[1])
    service.samples(layers[1])
    assert service.runs == 2 and service.sampler.seen[layers[1]] == len(x)
