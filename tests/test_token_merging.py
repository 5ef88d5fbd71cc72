"""Token merging (ToMe): the matching and merge against a brute-force reference, protected tokens and
padding, positions for unmerging, the patched ViT and BERT forwards, ONNX parity on both targets, the pass
and its checkpoint round trip, and the image data the ViT adapter reads."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from compressor.errors import CompressorError
from compressor.tokens.merge import (
    bipartite_soft_matching,
    merge_mask,
    merge_positions,
    merge_tokens,
    unmerge_tokens,
)
from compressor.tokens.tome import _attend, _bert_forward, _vit_forward, patch_token_merging, tome_schedule


def brute_force_merge(x, size, metric, r, protected=1):
    """ToMe for one sequence, written with plain loops: each even token's most similar odd token by cosine;
    the r best-matched even tokens are averaged (size-weighted) into their odd partner."""
    n = len(x)
    cos = lambda i, j: float(metric[i] @ metric[j] / (metric[i].norm() * metric[j].norm()))  # noqa: E731
    evens, odds = list(range(0, n, 2)), list(range(1, n, 2))
    best = {}
    for i in evens:
        if i < protected:
            continue
        candidates = [j for j in odds if j >= protected]
        j = max(candidates, key=lambda j: cos(i, j))
        best[i] = (cos(i, j), j)
    merged = sorted(best, key=lambda i: -best[i][0])[:r]
    sums = {j: (x[j] * size[j], float(size[j])) for j in odds}
    for i in merged:
        total, count = sums[best[i][1]]
        sums[best[i][1]] = (total + x[i] * size[i], count + float(size[i]))
    kept = [i for i in evens if i not in merged]
    out = [x[i] for i in kept] + [sums[j][0] / sums[j][1] for j in odds]
    sizes = [float(size[i]) for i in kept] + [sums[j][1] for j in odds]
    groups = {i: i for i in range(n)}  # original token → the token it ends up in (as an original index)
    for i in merged:
        groups[i] = best[i][1]
    return torch.stack(out), torch.tensor(sizes), kept + odds, groups


@pytest.mark.parametrize("tokens,r,protected", [(9, 3, 1), (10, 4, 1), (8, 2, 2), (7, 0, 1)])
def test_merge_matches_brute_force(tokens, r, protected):
    generator = torch.Generator().manual_seed(tokens + r)
    x = torch.randn(3, tokens, 5, generator=generator)
    metric = torch.randn(3, tokens, 4, generator=generator)
    size = torch.randint(1, 4, (3, tokens, 1), generator=generator).float()
    plan = bipartite_soft_matching(metric, r, protected)
    merged, new_size = merge_tokens(plan, x, size)
    source = merge_positions(plan, tokens, torch.arange(tokens).expand(3, -1))
    assert merged.shape == (3, tokens - r, 5)
    for b in range(3):
        expected, expected_size, order, groups = brute_force_merge(x[b], size[b, :, 0], metric[b], r, protected)
        torch.testing.assert_close(merged[b], expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(new_size[b, :, 0], expected_size)
        # every original token points at the output slot holding the token it was merged into
        for original, ends_in in groups.items():
            assert source[b, original].item() == order.index(ends_in)


@pytest.mark.parametrize("protected", [0, 1, 2, 3])
def test_matching_without_padding_equals_the_masked_matching(protected):
    # without a mask, protected tokens are left out of the scores instead of masked: the same plan
    metric = torch.randn(4, 11, 6, generator=torch.Generator().manual_seed(protected))
    plain = bipartite_soft_matching(metric, 3, protected)
    masked = bipartite_soft_matching(metric, 3, protected, torch.ones(4, 11, dtype=torch.bool))
    for field in ("kept", "merged", "destination"):
        assert torch.equal(getattr(plain, field), getattr(masked, field)), field


def test_size_weighted_attention_counts_each_key_size_times():
    generator = torch.Generator().manual_seed(3)
    heads, head_dim = 2, 4
    projections = [torch.nn.Linear(8, heads * head_dim) for _ in range(3)]
    x = torch.randn(2, 5, 8, generator=generator)
    size = torch.tensor([1.0, 3.0, 1.0, 2.0, 1.0]).reshape(1, 5, 1).expand(2, -1, -1)
    context, metric = _attend(*projections, head_dim, x, 0.0, size)
    # reference: repeat every token size times and attend over the repeated keys with plain softmax
    q, k, v = (p(x).view(2, 5, heads, head_dim).transpose(1, 2) for p in projections)
    repeat = torch.tensor([0, 1, 1, 1, 2, 3, 3, 4])
    weights = torch.softmax(q @ k[:, :, repeat].transpose(-1, -2) / head_dim ** 0.5, dim=-1)
    expected = (weights @ v[:, :, repeat]).transpose(1, 2).reshape(2, 5, -1)
    torch.testing.assert_close(context, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(metric, projections[1](x))  # the keys of all heads


def test_protected_tokens_are_never_merged():
    # every token identical: any pair is a perfect match, so only the protection keeps tokens 0 and 1 apart
    x = torch.arange(10.0).reshape(1, 10, 1).expand(1, 10, 3).contiguous()
    metric = torch.ones(1, 10, 4)
    plan = bipartite_soft_matching(metric, 4, protected=2)
    merged, size = merge_tokens(plan, x, torch.ones(1, 10, 1))
    assert merged[0, 0, 0].item() == 0.0 and size[0, 0, 0].item() == 1  # CLS (set A) stays first, alone
    b_slot = plan.kept.shape[1]  # token 1 is the first of set B
    assert merged[0, b_slot, 0].item() == 1.0 and size[0, b_slot, 0].item() == 1
    assert 0 not in plan.merged.flatten().tolist()


def test_padding_never_merges_into_real_tokens():
    generator = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    x = torch.randn(2, 10, 4, generator=generator)
    x[~mask] = 1e6  # any padding leaking into a real token would show
    metric = torch.randn(2, 10, 4, generator=generator)
    metric[:, 5:] = metric[:, 2:3]  # padding looks exactly like real token 2
    for r in (1, 3, 4):
        plan = bipartite_soft_matching(metric, r, 1, mask)
        merged, size = merge_tokens(plan, x, torch.ones(2, 10, 1))
        new_mask = merge_mask(plan, mask)
        assert merged[new_mask].abs().max() < 100
        assert int(size[new_mask].sum()) == int(mask.sum())  # every real token still counted once
        # padding pairs merge first: with enough of them no real token is merged at all
        if r <= 2:
            assert (mask[:, ::2].gather(1, plan.merged[..., 0]) == 0).all()


def test_unmerged_mean_pooling_weights_tokens_by_size():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 12, 6, generator=generator)
    metric = torch.randn(2, 12, 3, generator=generator)
    plan = bipartite_soft_matching(metric, 5, 1)
    merged, size = merge_tokens(plan, x, torch.ones(2, 12, 1))
    full = unmerge_tokens(merged, merge_positions(plan, 12, torch.arange(12).expand(2, -1)))
    # the mean over original positions of the unmerged tokens is the size-weighted mean of merged tokens,
    # which is the plain mean of the inputs
    torch.testing.assert_close(full.mean(1), (merged * size).sum(1) / size.sum(1))
    torch.testing.assert_close(full.mean(1), x.mean(1))


def test_schedules():
    assert tome_schedule(4, 3) == [4, 4, 4]
    assert tome_schedule(4, 3, "decreasing") == [8, 4, 0]
    assert tome_schedule(2.5, 3, "decreasing") == [5, 2, 0]  # half an r: whole counts (2.5 rounds to even)
    with pytest.raises(CompressorError, match="schedule"):
        tome_schedule(4, 3, "random")


def _vit_adapter(model):
    from compressor.adapters import VisionTransformerAdapter

    return VisionTransformerAdapter(config=model.config)


def _tiny_vit_model():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=16, num_hidden_layers=3,
                       num_attention_heads=2, intermediate_size=32, num_labels=3)
    return ViTForImageClassification(config).eval()


def test_vit_forward_without_merging_equals_the_model():
    model = _tiny_vit_model()
    x = torch.randn(4, 1, 8, 8)
    reference = model(pixel_values=x).logits
    torch.testing.assert_close(_vit_forward(model.vit, model.classifier, [0, 0, 0], 1)(x).logits, reference, rtol=1e-5, atol=1e-6)
    patch_token_merging(model, _vit_adapter(model), [5, 3, 2])
    assert not torch.allclose(model(pixel_values=x).logits, reference)
    patch_token_merging(model, _vit_adapter(model), [0, 0, 0])  # restores the model's own forward
    assert torch.equal(model(pixel_values=x).logits, reference)
    with pytest.raises(CompressorError, match="one r per block"):
        patch_token_merging(model, _vit_adapter(model), [1, 1])


def test_vit_merging_on_the_embeddings():
    model = _tiny_vit_model()
    x = torch.randn(4, 1, 8, 8)
    # 17 tokens: 6 merge on the embeddings, then 2 in the first block
    hidden = _vit_forward(model.vit, None, [2, 0, 0], 1, embeddings=6)(x).last_hidden_state
    assert hidden.shape == (4, 17 - 6 - 2, 16)
    # more than set A holds is limited to it (8 A tokens less CLS)
    assert _vit_forward(model.vit, None, [0, 0, 0], 1, embeddings=50)(x).last_hidden_state.shape[1] == 17 - 8
    patch_token_merging(model, _vit_adapter(model), [0, 0, 0], embeddings=6)
    assert not torch.allclose(model(pixel_values=x).logits, _vit_forward(model.vit, model.classifier, [0, 0, 0], 1)(x).logits)


def test_embeddings_merge_is_for_vision_transformers(tiny_bert_dir):
    from compressor.model import load_model
    from compressor.passes.tome import TomePass

    handle = load_model(tiny_bert_dir)
    layout = handle.adapter.capabilities.token_merging
    with pytest.raises(CompressorError, match="Vision Transformers only"):
        patch_token_merging(handle.model, handle.adapter, [1, 1], embeddings=2)
    with pytest.raises(CompressorError, match="merge_embeddings is for Vision Transformers"):
        TomePass(TomePass.Config(merge_embeddings=True))._on_embeddings(layout, "BertModel")
    assert TomePass(TomePass.Config())._on_embeddings(layout, "BertModel") is False  # the default: off for text


def test_bert_forward_without_merging_equals_the_model(tiny_bert_dir):
    from compressor.model import load_model

    handle = load_model(tiny_bert_dir)
    batch = handle.tokenize(["a short one", "a considerably longer sentence than the first one is"], 32)
    reference = handle.adapter.forward(handle.model, batch)
    hidden = _bert_forward(handle.model, None, [0, 0], 1)(**batch).last_hidden_state
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(hidden[real], reference[real], rtol=1e-4, atol=1e-5)
    # merging keeps last_hidden_state at the input length (unmerged), so pooling works unchanged
    patch_token_merging(handle.model, handle.adapter, [2, 2])
    assert handle.adapter.forward(handle.model, batch).shape == reference.shape
    patch_token_merging(handle.model, handle.adapter, [0, 0])


def _scatter_ops(model: onnx.ModelProto):
    ops = [n for n in model.graph.node if n.op_type in ("ScatterElements", "ScatterND")]
    return [(n.op_type, {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}) for n in ops]


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_vit_tome_onnx_parity(tiny_vit, tmp_path, target):
    from compressor.model import load_model
    from exporters.onnx_export import export_onnx, onnx_session

    handle = load_model(tiny_vit[0])
    patch_token_merging(handle.model, handle.adapter, [4, 4], embeddings=8)
    path = export_onnx(handle, tmp_path / "tome.onnx", target)
    graph = onnx.load(str(path))
    # merged tokens are sums (a one-hot MatMul) divided by sizes: no scatter, no "mean" reduction
    assert _scatter_ops(graph) == []
    assert {"TopK", "GatherElements", "MatMul", "Div"} <= {n.op_type for n in graph.graph.node}
    x = torch.randn(5, 1, 8, 8)
    expected = handle.adapter.forward(handle.model, {"pixel_values": x}).detach().numpy()
    got = onnx_session(path).run(None, {"pixel_values": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_bert_tome_onnx_parity_at_every_length(tiny_bert_dir, tmp_path, target):
    from compressor.model import load_model
    from exporters.onnx_export import export_onnx, onnx_session

    handle = load_model(tiny_bert_dir)
    patch_token_merging(handle.model, handle.adapter, [3, 3])
    session = onnx_session(export_onnx(handle, tmp_path / "tome.onnx", target))
    for sentences in (["hi"], ["a b", "a far longer sentence with a good many more words in it than the other"]):
        batch = handle.tokenize(sentences, 128)
        expected = handle.adapter.forward(handle.model, batch).detach().numpy()
        got = session.run(None, {k: v.numpy() for k, v in batch.items()})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_tome_pass_round_trip_and_int8(tiny_vit, tmp_path):
    from compressor.pipeline import compress
    from compressor.quant_linear import QuantLinear
    from compressor.recipe import Recipe, load_recipe
    from compressor.checkpoint import load_compressed
    from exporters.onnx_export import export_onnx, onnx_session

    model_dir, data = tiny_vit
    recipe = Recipe.from_dict({"name": "t", "passes": [{"tome": {"r": 3, "schedule": "constant"}}], "calibration": {"calib_samples": 32}})
    handle = compress(model_dir, recipe, data, tmp_path / "tome")
    # ViTs merge on the embeddings too, by default twice the first block's count
    assert handle.info["token_reduction"] == {"method": "tome", "schedule": [3, 3], "protected": 1, "embeddings": 6}
    reloaded = load_compressed(tmp_path / "tome")
    x = handle.adapter.images(handle, data, "evaluation")[0][:16]
    torch.testing.assert_close(reloaded.adapter.forward(reloaded.model, {"pixel_values": x}),
                               handle.adapter.forward(handle.model, {"pixel_values": x}))

    recipe = load_recipe("tome-int8").with_calibration(calib_samples=32)
    int8 = compress(model_dir, recipe, data, tmp_path / "tome-int8")
    assert any(isinstance(m, QuantLinear) for m in int8.model.modules())
    assert int8.info["token_reduction"]["method"] == "tome"
    searched = next(p for p in int8.info["passes"] if p["pass"] == "tome")
    assert searched["output_error"] <= recipe.find("tome").config.max_error
    reloaded = load_compressed(tmp_path / "tome-int8")
    expected = reloaded.adapter.forward(reloaded.model, {"pixel_values": x}).detach().numpy()
    got = onnx_session(export_onnx(reloaded, tmp_path / "int8.onnx", "onnxruntime")).run(None, {"pixel_values": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=0.05, atol=0.05 * np.abs(expected).max())


def test_tome_search_keeps_its_margin_below_the_edge(tiny_vit, tmp_path):
    from compressor.pipeline import compress
    from compressor.recipe import Recipe

    model_dir, data = tiny_vit
    picked = {}
    for margin in (0.0, 0.5):
        recipe = Recipe.from_dict({"name": "t", "passes": [{"tome": {"max_error": 0.05, "margin": margin}}],
                                   "calibration": {"calib_samples": 32, "sensitivity_samples": 32}})
        handle = compress(model_dir, recipe, data, tmp_path / f"m{margin}")
        picked[margin] = next(p for p in handle.info["passes"] if p["pass"] == "tome")
    edge = picked[0.0]["edge_r"]
    searched = {float(r): e for r, e in picked[0.0]["searched"].items()}
    # the edge holds the budget and every larger r measured breaks it
    assert edge > 0 and searched[edge] <= 0.05 and all(e > 0.05 for r, e in searched.items() if r > edge)
    assert picked[0.0]["r"] == edge and picked[0.5]["edge_r"] == edge
    # a decreasing schedule moves in half steps: the largest half step whose 1.5 times is within the edge
    assert picked[0.5]["r"] == int(2 * edge / 1.5) / 2 and picked[0.5]["r"] * 1.5 <= edge


def test_tome_pass_rejects_a_diffusion_model_and_bad_config():
    from compressor.recipe import Recipe

    with pytest.raises(CompressorError, match=r"tome\): field 'r'"):
        Recipe.from_dict({"passes": [{"tome": {"r": -1}}]})
    with pytest.raises(CompressorError, match="schedule"):
        Recipe.from_dict({"passes": [{"tome": {"schedule": "random"}}]})


# --- image data ----------------------------------------------------------------------------------


def test_idx_images_split_and_preprocessing(tiny_vit):
    from compressor.model import load_model
    from calibrators.images import read_idx

    model_dir, data = tiny_vit
    handle = load_model(model_dir)
    calibration, labels = handle.adapter.images(handle, data, "calibration")
    evaluation, eval_labels = handle.adapter.images(handle, data, "evaluation")
    raw = read_idx(data / "images-idx3-ubyte").astype(np.float32)
    assert calibration.shape == (100, 1, 8, 8) and evaluation.shape == (1000, 1, 8, 8)
    # the processor maps 8-bit pixels to [-1, 1]: x / 127.5 - 1
    np.testing.assert_allclose(calibration[:, 0].numpy(), raw[:100] / 127.5 - 1, atol=1e-6)
    np.testing.assert_allclose(evaluation[:, 0].numpy(), raw[100:] / 127.5 - 1, atol=1e-6)
    assert torch.equal(eval_labels, torch.from_numpy(read_idx(data / "labels-idx1-ubyte")[100:].astype(np.int64)))


def test_image_folder_reads_classes_by_label_name(tiny_vit, tmp_path):
    from PIL import Image

    from compressor.model import load_model

    handle = load_model(tiny_vit[0])
    pixels = {"top": np.full((8, 8), 255, np.uint8), "bottom": np.zeros((8, 8), np.uint8)}
    for name, image in pixels.items():
        (tmp_path / name).mkdir()
        Image.fromarray(image).save(tmp_path / name / "a.png")
        Image.fromarray(image).convert("RGB").save(tmp_path / name / "b.jpg", quality=100)
    images, labels = handle.adapter.images(handle, tmp_path, "evaluation")
    assert images.shape == (4, 1, 8, 8)
    assert labels.tolist() == [1, 1, 0, 0]  # folders in name order: bottom, top
    np.testing.assert_allclose(images[2:].numpy(), 1.0, atol=1e-2)
    np.testing.assert_allclose(images[:2].numpy(), -1.0, atol=1e-2)
    (tmp_path / "sideways").mkdir()
    with pytest.raises(CompressorError, match="'sideways' is not a class"):
        handle.adapter.images(handle, tmp_path, "evaluation")


def test_idx_calibration_needs_more_than_the_evaluation_part(tiny_vit, tmp_path):
    from compressor.model import load_model
    from conftest import write_idx

    handle = load_model(tiny_vit[0])
    write_idx(tmp_path / "images-idx3-ubyte", np.zeros((1000, 8, 8), np.uint8))
    with pytest.raises(CompressorError, match="evaluation part"):
        handle.adapter.images(handle, tmp_path, "calibration")
    with pytest.raises(CompressorError, match="needs --calib-data"):
        handle.adapter.calibration(handle, None, None)


def test_cli_compress_export_and_compare_a_vit(tiny_vit, tmp_path, capsys):
    import json

    from compressor.cli import main

    model_dir, data = tiny_vit
    out = tmp_path / "tome"
    assert main(["compress", str(model_dir), "--recipe", "tome", "--calib-data", str(data), "--num-samples", "32",
                 "--output", str(out)]) == 0
    assert main(["export", str(out), "--output", str(tmp_path / "tome.onnx")]) == 0
    graph = onnx.load(str(tmp_path / "tome.onnx"))
    assert [i.name for i in graph.graph.input] == ["pixel_values"] and graph.graph.output[0].name == "logits"
    assert main(["compare", str(model_dir), str(out), "--eval-data", str(data), "--batch", "8", "--report",
                 str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    rows = {row["model"]: row for row in report["models"]}
    assert rows["original"]["top1_agreement"] == 1.0 and report["eval_images"] == 1000
    from compressor.checkpoint import load_compressed

    reloaded = load_compressed(out)
    images, labels = reloaded.adapter.images(reloaded, data, "evaluation")
    with torch.no_grad():
        accuracy = (reloaded.adapter.forward(reloaded.model, {"pixel_values": images}).argmax(1) == labels).double().mean()
    assert abs(rows["tome"]["top1_accuracy"] - accuracy.item()) <= 0.002  # ONNX against PyTorch: ties at most
    assert rows["tome"]["images_per_second"] == pytest.approx(8000 / rows["tome"]["latency_ms"])
    schedule = json.loads((out / "compression.json").read_text())["token_reduction"]["schedule"]
    assert len(schedule) == 2
    capsys.readouterr()
    # no calibration data: a one-line error, exit code 2
    assert main(["compress", str(model_dir), "--recipe", "tome", "--output", str(tmp_path / "none")]) == 2
    assert "needs --calib-data" in capsys.readouterr().err


# --- Diffusion Transformers: merge around attention and MLP, unmerge after ------------------------


def test_dit_mlp_on_merged_duplicates_is_unchanged(tiny_dit_dir):
    from compressor.model import load_model
    from compressor.tokens.dit_merge import patch_dit_token_merging

    handle = load_model(tiny_dit_dir)
    ff = handle.model.transformer_blocks[0].ff
    x = torch.randn(2, 8, 32).repeat_interleave(2, dim=1)  # tokens 2k and 2k+1 equal: a perfect pair each
    expected = ff(x)
    patch_dit_token_merging(handle.model, [4, 0, 0])
    # merging pairs of equal tokens and unmerging after a token-wise MLP changes nothing
    torch.testing.assert_close(ff(x), expected, rtol=1e-5, atol=1e-6)
    assert "forward" in ff.__dict__ and "forward" not in handle.model.transformer_blocks[1].ff.__dict__
    patch_dit_token_merging(handle.model, [0, 0, 0])
    assert "forward" not in ff.__dict__


def test_dit_tome_round_trip_and_onnx(tiny_dit_dir, tmp_path):
    from compressor.pipeline import compress
    from compressor.recipe import Recipe
    from compressor.checkpoint import load_compressed
    from exporters.onnx_export import export_onnx, onnx_session

    recipe = Recipe.from_dict({"name": "dit-tome", "passes": [{"tome": {"r": 4, "schedule": "constant"}}],
                               "calibration": {"calib_images": 4, "sampling_steps": 3}})
    handle = compress(tiny_dit_dir, recipe, None, tmp_path / "dit-tome")
    assert handle.info["token_reduction"]["schedule"] == [4, 4, 4]
    reloaded = load_compressed(tmp_path / "dit-tome")
    batch = {"hidden_states": torch.randn(3, 1, 12, 12), "timestep": torch.tensor([999, 500, 1]),
             "class_labels": torch.tensor([4, 0, 3])}
    with torch.no_grad():
        expected = reloaded.adapter.forward(reloaded.model, batch)
        torch.testing.assert_close(handle.adapter.forward(handle.model, batch), expected)
    session = onnx_session(export_onnx(reloaded, tmp_path / "dit.onnx", "onnxruntime"))
    got = session.run(None, {k: v.numpy() for k, v in batch.items()})[0]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("preset", ["int8", "int8-minmax", "fp8", "nvfp4", "mxfp4", "w4a16-nvfp4", "int4-awq", "w4a8",
                                    "fp4-int8"])
def test_every_quantization_preset_compresses_and_exports_a_vit(tiny_vit, tmp_path, preset):
    from compressor.pipeline import compress
    from compressor.quant_linear import QuantLinear
    from compressor.recipe import load_recipe
    from compressor.checkpoint import load_compressed
    from exporters.onnx_export import export_onnx, onnx_session

    model_dir, data = tiny_vit
    compress(model_dir, load_recipe(preset).with_calibration(calib_samples=32), data, tmp_path / preset)
    handle = load_compressed(tmp_path / preset)
    assert sum(isinstance(m, QuantLinear) for m in handle.model.modules()) >= 8  # of the 12 block Linears
    x = handle.adapter.images(handle, data, "evaluation")[0][:16]
    expected = handle.adapter.forward(handle.model, {"pixel_values": x}).detach().numpy()
    for target in ("onnxruntime", "tensorrt"):
        path = export_onnx(handle, tmp_path / f"{target}.onnx", target)
        if target == "onnxruntime":
            got = onnx_session(path).run(None, {"pixel_values": x.numpy()})[0]
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_int4_groups_fit_narrow_layers():
    from compressor.numerics.formats import layer_group_size

    assert layer_group_size(128, 64) == 64 and layer_group_size(128, 32) == 32
    assert layer_group_size(128, 384) == 128 and layer_group_size(128, 128) == 128


def test_structured_pruning_then_merging_on_a_vit(tiny_vit, tmp_path):
    from compressor.pipeline import compress
    from compressor.recipe import Recipe
    from compressor.checkpoint import load_compressed
    from exporters.onnx_export import export_onnx, onnx_session

    model_dir, data = tiny_vit
    recipe = Recipe.from_dict({"name": "pruned-tome", "passes": [{"prune_structured": {"keep_macs": 0.6}},
                                                                 {"tome": {"r": 2, "schedule": "constant"}}],
                               "calibration": {"calib_samples": 64}})
    handle = compress(model_dir, recipe, data, tmp_path / "out")
    reloaded = load_compressed(tmp_path / "out")
    heads = [reloaded.model.get_submodule(f"vit.layers.{i}.attention").num_attention_heads for i in range(2)]
    widths = [reloaded.model.get_submodule(f"vit.layers.{i}.mlp.fc1").out_features for i in range(2)]
    assert heads != [2, 2] or widths != [64, 64]  # something was removed
    assert heads == [handle.model.get_submodule(f"vit.layers.{i}.attention").num_attention_heads for i in range(2)]
    x = reloaded.adapter.images(reloaded, data, "evaluation")[0][:8]
    expected = reloaded.adapter.forward(reloaded.model, {"pixel_values": x})
    torch.testing.assert_close(handle.adapter.forward(handle.model, {"pixel_values": x}), expected)
    got = onnx_session(export_onnx(reloaded, tmp_path / "m.onnx", "onnxruntime")).run(None, {"pixel_values": x.numpy()})[0]
    np.testing.assert_allclose(got, expected.detach().numpy(), rtol=1e-4, atol=1e-5)
