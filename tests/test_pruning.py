"""Pruning end to end on a small BERT: structured removal (shapes, reload, ONNX parity), 2:4 sparsity
kept exact through every quantization scheme, compressed sparse storage, and budget errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from compressor.cli import main
from compressor.errors import CompressorError
from compressor.numerics.sparsity import is_nm_sparse
from compressor.passes.reconstruct import GramStats, reconstruct, relative_error, ridge_fit
from compressor.passes.structured_prune import unit_energy
from compressor.pipeline import compress
from compressor.quant_linear import QuantLinear
from compressor.recipe import Recipe
from compressor.structure import UnitGroup, keep_units, linear_macs
from compressor.checkpoint import load_compressed
from exporters.onnx_export import export_onnx, onnx_session
from exporters.sparsity_check import check_nm_sparsity

FAST = dict(calib_samples=24, sensitivity_samples=8, search_tokens=512, batch_size=8, max_length=32)
SENTENCES = ["a cat sits on the mat", "stocks fell sharply on monday", "the weather is nice today, isn't it?"]


def run(model_dir, calib_file, out, passes):
    recipe = Recipe.from_dict({"name": "test", "calibration": FAST, "passes": passes})
    return compress(model_dir, recipe, calib_file, out)


def outputs(handle, sentences=SENTENCES):
    with torch.no_grad():
        return handle.adapter.forward(handle.model, handle.tokenize(sentences, 32))


# --- pure pieces ----------------------------------------------------------------------------------


def test_keep_units_equals_zeroing_the_removed_units():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5))
    group = UnitGroup("g", "heads", ("0",), "2", unit_size=2)  # 4 units of 2 features
    x = torch.randn(7, 6)
    with torch.no_grad():
        hidden = torch.relu(model[0](x))
        hidden[:, 2:4] = 0  # unit 1 removed
        hidden[:, 6:8] = 0  # unit 3 removed
        expected = model[2](hidden)
    keep_units(model, group, [2, 0])
    assert model[0].weight.shape == (4, 6) and model[2].weight.shape == (5, 4)
    assert torch.allclose(model(x), expected, atol=1e-6)
    assert linear_macs(model, ["0", "2"]) == 4 * 6 + 5 * 4


def test_unit_energy_is_the_variance_each_unit_adds():
    torch.manual_seed(0)
    weight, inputs = torch.randn(3, 4), torch.randn(50, 4) + 2.0
    centred = inputs - inputs.mean(0)
    for unit, columns in enumerate(([0, 1], [2, 3])):
        direct = (centred[:, columns] @ weight[:, columns].T).pow(2).sum(1).mean()
        assert unit_energy(weight, inputs, 2)[unit] == pytest.approx(float(direct), rel=1e-6)


def test_ridge_reconstruction_fits_and_refuses_to_make_things_worse():
    torch.manual_seed(0)
    x = torch.randn(400, 5)
    true = torch.randn(3, 6)  # [W, b]
    y = x @ true[:, :5].T + true[:, 5]
    fit, check = GramStats(), GramStats()
    fit.add(x[:300], y[:300])
    check.add(x[300:], y[300:])
    start = torch.zeros(3, 6)
    assert relative_error(check, start) == pytest.approx(1.0)
    # a tiny pull recovers the exact solution
    assert torch.allclose(ridge_fit(fit, start, 1e-9), true, atol=1e-4)
    refit, report = reconstruct(fit, check, start, [1e-6, 1.0])
    assert report["alpha"] == 1e-6 and report["check_error_after"] < 1e-8
    assert torch.allclose(refit, true, atol=1e-4)
    # noisy targets and few fit tokens: an unregularized fit learns the noise, does worse than the
    # (already right) start on the check tokens, and is refused
    noisy = y + torch.randn_like(y)
    few, many = GramStats(), GramStats()
    few.add(x[:8], noisy[:8])
    many.add(x[8:], noisy[8:])
    refit, report = reconstruct(few, many, true, [1e-6])
    assert refit is None and report["alpha"] is None
    assert report["check_errors"]["1e-06"] > report["check_error_before"]


def test_pooled_error_scores_the_pooled_vector_and_falls_back_to_tokens():
    from types import SimpleNamespace

    from compressor.adapters.base import Capabilities
    from compressor.fidelity import output_error, pooled_error

    out = torch.tensor([[[1.0, 0.0], [3.0, 0.0]]])  # one input, two tokens; pooled: [2, 0]
    ref = torch.tensor([[[2.0, 0.0], [2.0, 2.0]]])  # pooled: [2, 1]
    batch = {"mask": torch.ones(1, 2, dtype=torch.bool)}
    tokens = SimpleNamespace(forward=lambda _model, _batch: out, token_mask=lambda b: b["mask"],
                             capabilities=Capabilities())
    handle = SimpleNamespace(model=None, adapter=tokens)
    # token error: (1 + 1 + 4) / (4 + 4 + 4)
    assert output_error(handle, [batch], [ref]) == pytest.approx(6 / 12)
    assert pooled_error(handle, [batch], [ref]) == pytest.approx(6 / 12)
    pooled = SimpleNamespace(**{**vars(tokens), "capabilities": Capabilities(pooling=True)},
                             pool=lambda hidden, _batch: hidden.mean(1))
    handle = SimpleNamespace(model=None, adapter=pooled)
    # pooled error: |[2, 0] - [2, 1]|^2 / |[2, 1]|^2: token errors of opposite sign cancel
    assert pooled_error(handle, [batch], [ref]) == pytest.approx(1 / 5)


# --- structured pruning --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pruned(tiny_bert_dir, calib_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned") / "out"
    handle = run(tiny_bert_dir, calib_file, out, [{"prune_structured": {"keep_macs": 0.6, "min_channels": 4}}])
    return handle, out


def test_structured_pruning_meets_the_budget_and_shrinks_shapes(pruned):
    handle, _ = pruned
    record = handle.info["passes"][0]
    assert record["kept_macs"] <= 0.6 + 1e-9
    model = handle.model
    macs = sum(m.in_features * m.out_features for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and ".layer." in n)
    assert macs == record["macs_per_token_after"] <= 0.6 * record["macs_per_token_before"]
    for i in range(2):
        attention = model.get_submodule(f"encoder.layer.{i}.attention.self")
        assert attention.query.out_features == attention.num_attention_heads * attention.attention_head_size
        assert model.get_submodule(f"encoder.layer.{i}.attention.output.dense").in_features == attention.all_head_size


def test_per_kind_ratio_removes_only_that_kind(tiny_bert_dir, calib_file, tmp_path):
    handle = run(tiny_bert_dir, calib_file, tmp_path / "out",
                 [{"prune_structured": {"ratios": {"channels": 0.5}, "rounds": 1, "min_channels": 4}}])
    record = handle.info["passes"][0]
    assert record["removed"]["heads"] == 0 and record["budget"] == {"ratios": {"channels": 0.5}}
    channels = {n: u for n, u in record["units"].items() if n.endswith(".ffn")}
    assert sum(u["kept"] for u in channels.values()) <= 0.5 * sum(u["of"] for u in channels.values())
    for i in range(2):
        assert handle.model.get_submodule(f"encoder.layer.{i}.attention.self").query.out_features == 64
        kept = record["units"][f"encoder.layer.{i}.ffn"]["kept"]
        assert handle.model.get_submodule(f"encoder.layer.{i}.output.dense").in_features == kept


def test_structured_pruning_reloads_smaller_and_identical(pruned):
    handle, out = pruned
    reloaded = load_compressed(out)
    for name, module in handle.model.named_modules():
        if isinstance(module, nn.Linear):
            assert reloaded.model.get_submodule(name).weight.shape == module.weight.shape
    assert torch.equal(outputs(reloaded), outputs(handle))


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_structured_pruning_onnx_matches_pytorch(pruned, target, tmp_path):
    handle, out = pruned
    reloaded = load_compressed(out)
    path = export_onnx(reloaded, tmp_path / "model.onnx", target)
    session = onnx_session(path)
    inputs = reloaded.tokenize(SENTENCES, 32)
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    np.testing.assert_allclose(got, outputs(reloaded).numpy(), atol=2e-4)


def test_compare_reports_macs_and_sparsity(pruned, sparse_float, tiny_bert_dir, tiny_sts, tmp_path):
    import json
    import shutil

    structured, sparse = tmp_path / "structured", tmp_path / "sparse"
    shutil.copytree(pruned[1], structured)
    shutil.copytree(sparse_float[1], sparse)
    assert main(["compare", str(tiny_bert_dir), str(structured), str(sparse), "--eval-data", str(tiny_sts),
                 "--report", str(tmp_path / "report"), "--repeats", "1", "--batch", "2", "--length", "16"]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    rows = {row["model"]: row for row in report["models"]}
    record = pruned[0].info["passes"][0]
    assert rows["structured"]["pruned"] and not rows["sparse"]["pruned"]
    assert rows["original"]["linear_macs_per_token"] == record["macs_per_token_before"]
    assert rows["structured"]["linear_macs_per_token"] == record["macs_per_token_after"]
    assert rows["structured"]["macs_ratio"] == pytest.approx(record["kept_macs"], abs=1e-4)
    # 2:4 on every Linear: half of all weights are zero, and no MAC is saved
    assert rows["sparse"]["sparsity_pattern"] == "2:4" and rows["sparse"]["sparsity"] == 0.5
    assert rows["sparse"]["macs_ratio"] == 1.0 and rows["original"]["sparsity_pattern"] is None
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| sparse | test | 32.00 | 1.00 | 2:4 (50%) |" in md
    assert "Sparsity does not make a CPU faster" in md


def test_compress_summary_names_what_was_pruned(pruned, sparse_float):
    from compressor.cli import plan_table

    record = pruned[0].info["passes"][0]
    removed = record["removed"]
    assert plan_table(pruned[0].info) == (f"structured pruning: {removed['heads']} heads and {removed['channels']} "
                                          f"channels removed; {record['kept_macs']:.3f} of the Linear MACs kept")
    assert plan_table(sparse_float[0].info) == "sparsity: 2:4 by sparsegpt on 12 layers, 50.0% of the eligible weights zero"


def test_keep_macs_flag_errors_exit_2(tiny_bert_dir, tmp_path, capsys):
    bad = main(["compress", str(tiny_bert_dir), "--recipe", "prune-structured", "--keep-macs", "1.5",
                "--output", str(tmp_path / "a")])
    assert bad == 2 and "--keep-macs must be a fraction" in capsys.readouterr().err
    wrong = main(["compress", str(tiny_bert_dir), "--recipe", "int8", "--keep-macs", "0.5",
                  "--output", str(tmp_path / "b")])
    assert wrong == 2 and "needs a recipe with structured pruning" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_bad_pruning_budget_in_a_recipe_is_one_line():
    with pytest.raises(CompressorError, match="field 'keep_macs'"):
        Recipe.from_dict({"passes": [{"prune_structured": {"keep_macs": 0}}]})
    with pytest.raises(CompressorError, match="ratios"):
        Recipe.from_dict({"passes": [{"prune_structured": {"ratios": {"channels": 1.5}}}]})
    with pytest.raises(CompressorError, match="sparsity"):
        Recipe.from_dict({"passes": [{"sparsify": {"target": "5:4"}}]})


# --- 2:4 sparsity through quantization -------------------------------------------------------------


@pytest.fixture(scope="module")
def sparse_float(tiny_bert_dir, calib_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("sparse") / "out"
    return run(tiny_bert_dir, calib_file, out, [{"sparsify": {"target": "2:4"}}]), out


def _masks(handle) -> dict[str, torch.Tensor]:
    return {n: handle.model.get_submodule(n).weight.detach() != 0 for n in handle.info["sparsity"]["layers"]}


def test_sparse24_pattern_storage_and_reload(sparse_float):
    handle, out = sparse_float
    masks = _masks(handle)
    assert len(masks) == 12
    for name, mask in masks.items():
        assert is_nm_sparse(handle.model.get_submodule(name).weight, 2, 4, axis=1)
        assert float(mask.float().mean()) == 0.5
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        name = next(iter(masks))
        assert f"{name}.weight" not in keys and f"{name}.weight.sparse_positions" in keys
        stored = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in keys
                     if any(k.startswith(n + ".weight") for n in masks))
    dense = sum(m.numel() * 4 for m in masks.values())
    assert stored / dense <= 0.57
    reloaded = load_compressed(out)
    for name in masks:
        assert torch.equal(reloaded.model.get_submodule(name).weight, handle.model.get_submodule(name).weight)


@pytest.mark.parametrize("passes", [
    [{"smoothquant": {}}, {"quantize": {"scheme": "int8"}}, {"fallback": {"max_layers": 2, "tolerance": 0.0}}],
    [{"quantize": {"scheme": "fp8", "observer": "max"}}],
    [{"quantize": {"scheme": "nvfp4", "rounding": "gptq"}}],
    [{"quantize": {"scheme": "mxfp4", "rounding": "gptq", "rotation": "hadamard"}}],
    [{"quantize": {"scheme": "w4a16-nvfp4", "rounding": "gptq"}}],
    [{"awq": {}}, {"quantize": {"scheme": "w4a16-int4", "group_size": 32, "symmetric": False, "rounding": "gptq"}}],
], ids=["int8-smoothquant-fallback", "fp8", "nvfp4-gptq", "mxfp4-rotated", "w4a16-nvfp4", "int4-awq-gptq"])
def test_masks_stay_exact_through_every_scheme(passes, sparse_float, tiny_bert_dir, calib_file, tmp_path):
    masks = _masks(sparse_float[0])  # the same sparsify pass on the same calibration gives the same masks
    handle = run(tiny_bert_dir, calib_file, tmp_path / "out", [{"sparsify": {"target": "2:4"}}, *passes])
    reloaded = load_compressed(tmp_path / "out")
    for model in (handle.model, reloaded.model):
        for name, mask in masks.items():
            module = model.get_submodule(name)
            weight = module.dequantized_weight() if isinstance(module, QuantLinear) else module.weight.detach()
            assert torch.equal(weight[~mask], torch.zeros(int((~mask).sum()))), name
            if isinstance(module, QuantLinear):
                assert module.rotation == 0  # a rotation would mix the zeros away


def test_sparse24_onnx_keeps_the_pattern_on_both_targets(sparse_float, tmp_path):
    handle, out = sparse_float
    reloaded = load_compressed(out)
    for target in ("onnxruntime", "tensorrt"):
        rows = check_nm_sparsity(export_onnx(reloaded, tmp_path / f"{target}.onnx", target), 2, 4)
        assert sum(r["sparse"] for r in rows) == 12, target
