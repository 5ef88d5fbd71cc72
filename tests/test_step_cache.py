"""DiT step caching (diffusers' First Block Cache behind the `step_cache` pass): threshold 0 equals the uncached
sampler exactly, block evaluations are counted right, the checkpoint round trip, the presets, and compare's
sampling time, block counts and --save-samples."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from calibrators.sampling import sample
from compressor.diffusion.step_cache import apply_step_cache, remove_step_cache, step_cache_of
from compressor.errors import CompressorError

STEPS = 6


def draw(handle, seed=3):
    adapter, model = handle.adapter, handle.model
    labels = torch.arange(8) % 4
    return sample(adapter.denoiser(model), adapter.scheduler(), labels, shape=adapter.latent_shape(model), steps=STEPS,
                  guidance=1.5, seed=seed, null_conditioning=adapter.null_conditioning(model, labels))


def test_threshold_zero_equals_the_uncached_sampler_exactly(tiny_dit_dir):
    from compressor.model import load_model

    handle = load_model(tiny_dit_dir)
    reference = draw(handle)
    cache = apply_step_cache(handle.model, handle.adapter.blocks(handle.model), 0.0)
    assert torch.equal(draw(handle), reference)
    assert cache.block_evaluations == STEPS * 3 and cache.trajectories == 1  # every block of every step
    assert torch.equal(draw(handle), reference)  # a second trajectory starts afresh
    assert cache.trajectories == 2
    remove_step_cache(handle.model)
    assert step_cache_of(handle.model) is None and torch.equal(draw(handle), reference)


def test_a_large_threshold_skips_the_blocks_after_the_first(tiny_dit_dir):
    from compressor.model import load_model

    handle = load_model(tiny_dit_dir)
    reference = draw(handle)
    cache = apply_step_cache(handle.model, handle.adapter.blocks(handle.model), 1e9)  # any change is "small": only the first step computes all
    images = draw(handle)
    # step 1: all 3 blocks; steps 2..6: the first block only
    assert cache.block_evaluations == 3 + (STEPS - 1) * 1
    assert not torch.equal(images, reference)
    remove_step_cache(handle.model)


def test_step_cache_pass_round_trip(tiny_dit_dir, tmp_path):
    from compressor.pipeline import compress
    from compressor.recipe import Recipe
    from compressor.checkpoint import load_compressed

    recipe = Recipe.from_dict({"name": "cache", "passes": [{"step_cache": {"thresholds": [0.05, 0.2, 0.5, 2.0],
                                                                           "guidance_scales": [1.0, 3.0]}}],
                               "calibration": {"calib_images": 8, "sampling_steps": STEPS}})
    handle = compress(tiny_dit_dir, recipe, None, tmp_path / "cache")
    record = next(p for p in handle.info["passes"] if p["pass"] == "step_cache")
    calibration = record["calibration"]
    # the recipe's own guidance (1.5) is calibrated along with the ones asked for
    assert sorted(calibration["thresholds"]) == ["1.0", "1.5", "3.0"]
    assert calibration["steps"] == STEPS and calibration["scheduler"] == "DDIMScheduler"
    threshold = record["threshold"]
    assert threshold == calibration["thresholds"]["1.5"]
    assert handle.info["token_reduction"] == {"method": "step_cache", "threshold": threshold, "calibration": calibration}
    # at each guidance the chosen threshold keeps 27 dB on the calibration samples; larger ones measured do not
    for guidance, chosen in calibration["thresholds"].items():
        searched = record["searched"][guidance]
        holding = [float(t) for t, m in searched.items() if m["psnr"] >= 27.0]
        failing = [float(t) for t, m in searched.items() if m["psnr"] < 27.0]
        assert chosen == max(holding, default=0.0) and all(t > chosen for t in failing)
    reloaded = load_compressed(tmp_path / "cache")
    cache = step_cache_of(reloaded.model)
    assert cache.threshold == threshold and cache.calibration == calibration
    assert torch.equal(draw(reloaded), draw(handle))


def test_threshold_for_guidance_takes_the_stricter_neighbour_and_flags_what_was_not_calibrated():
    from compressor.diffusion.step_cache import threshold_for_guidance

    table = {1.0: 0.4, 2.0: 0.2, 4.0: 0.1}
    assert threshold_for_guidance(table, 2.0) == (0.2, True)
    assert threshold_for_guidance(table, 1.5) == (0.2, True)  # neither 1 nor 2 was measured at 1.5
    assert threshold_for_guidance(table, 3.0) == (0.1, True)
    assert threshold_for_guidance(table, 6.0) == (0.1, False)  # beyond the table: its end, unchecked
    assert threshold_for_guidance({1.5: 0.3, 3.0: 0.35}, 2.0) == (0.3, True)


def _calibrated(tiny_dit_dir):
    from compressor.model import load_model

    handle = load_model(tiny_dit_dir)
    calibration = {"thresholds": {"1.0": 0.5, "1.5": 0.3, "2.0": 0.2}, "steps": STEPS, "scheduler": "DDIMScheduler"}
    apply_step_cache(handle.model, handle.adapter.blocks(handle.model), 0.3, calibration)
    return handle


def test_prepare_picks_the_threshold_calibrated_for_the_guidance(tiny_dit_dir, recwarn):
    handle = _calibrated(tiny_dit_dir)
    cache = step_cache_of(handle.model)
    assert cache.prepare(2.0, STEPS, "DDIMScheduler") == 0.2 and cache.threshold == 0.2
    assert cache.prepare(1.0, STEPS) == 0.5
    assert not recwarn.list
    # the hooks use the new threshold: at 0 every block of every step runs again
    cache.calibration["thresholds"]["1.0"] = 0.0
    cache.prepare(1.0, STEPS)
    cache.reset_counts()
    draw(handle)
    assert cache.block_evaluations == STEPS * 3


@pytest.mark.parametrize("guidance, steps, scheduler, says", [
    (3.0, STEPS, "DDIMScheduler", "guidance 3 \\(calibrated 1 to 2\\)"),
    (1.5, STEPS + 4, "DDIMScheduler", f"{STEPS + 4} steps \\(calibrated {STEPS}\\)"),
    (1.5, STEPS, "EulerDiscreteScheduler", "scheduler EulerDiscreteScheduler"),
])
def test_sampling_outside_the_calibration_warns(tiny_dit_dir, guidance, steps, scheduler, says):
    cache = step_cache_of(_calibrated(tiny_dit_dir).model)
    with pytest.warns(UserWarning, match=f"step cache: sampling at {says}.*never measured"):
        cache.prepare(guidance, steps, scheduler)


def test_a_threshold_set_by_hand_is_used_at_any_guidance(tiny_dit_dir, tmp_path, recwarn):
    from compressor.checkpoint import load_compressed
    from compressor.pipeline import compress
    from compressor.recipe import Recipe

    recipe = Recipe.from_dict({"name": "cache", "passes": [{"step_cache": {"threshold": 0.3}}],
                               "calibration": {"calib_images": 4, "sampling_steps": 3}})
    compress(tiny_dit_dir, recipe, None, tmp_path / "cached")
    cache = step_cache_of(load_compressed(tmp_path / "cached").model)
    assert cache.calibration is None and cache.prepare(4.0, 50) == 0.3 and not recwarn.list


def test_a_checkpoint_from_before_the_table_warns_away_from_its_guidance(tiny_dit_dir, tmp_path):
    from compressor.checkpoint import RECORD_FILE, load_compressed
    from compressor.pipeline import compress
    from compressor.recipe import Recipe

    recipe = Recipe.from_dict({"name": "cache", "passes": [{"step_cache": {"thresholds": [0.05, 0.5],
                                                                           "guidance_scales": [1.5]}}],
                               "calibration": {"calib_images": 4, "sampling_steps": STEPS}})
    compress(tiny_dit_dir, recipe, None, tmp_path / "cached")
    path = tmp_path / "cached" / RECORD_FILE
    record = json.loads(path.read_text())
    del record["token_reduction"]["calibration"]  # what earlier versions wrote
    path.write_text(json.dumps(record))
    cache = step_cache_of(load_compressed(tmp_path / "cached").model)
    assert cache.calibration["thresholds"] == {"1.5": record["token_reduction"]["threshold"]}
    with pytest.warns(UserWarning, match="guidance 2 \\(calibrated 1.5\\)"):
        cache.prepare(2.0, STEPS)


def test_compare_at_another_guidance_uses_that_guidances_threshold(tiny_dit_dir, tmp_path):
    from compressor.cli import main
    from compressor.pipeline import compress
    from compressor.recipe import Recipe

    recipe = Recipe.from_dict({"name": "cache", "passes": [{"step_cache": {"thresholds": [0.05, 0.2, 1e9],
                                                                           "guidance_scales": [1.0, 3.0]}}],
                               "calibration": {"calib_images": 8, "sampling_steps": STEPS}})
    handle = compress(tiny_dit_dir, recipe, None, tmp_path / "cached")
    table = handle.info["token_reduction"]["calibration"]["thresholds"]
    report_dir = tmp_path / "report"
    assert main(["compare", str(tiny_dit_dir), str(tmp_path / "cached"), "--num-samples", "8", "--steps", str(STEPS),
                 "--guidance", "3", "--batch", "2", "--repeats", "1", "--report", str(report_dir)]) == 0
    rows = {row["model"]: row for row in json.loads((report_dir / "report.json").read_text())["models"]}
    cache = step_cache_of(handle.model)
    cache.prepare(3.0, STEPS)
    assert cache.threshold == table["3.0"]
    cache.reset_counts()
    from compressor.evaluation.generated_images import SamplingSetup, generate

    generate(handle, torch.arange(8) % 4, SamplingSetup(8, STEPS, 3.0, 0))
    assert rows["cached"]["block_evaluations"] == cache.block_evaluations / cache.trajectories


def test_step_cache_needs_a_dit(tiny_bert_dir, tmp_path, calib_file):
    from compressor.pipeline import compress
    from compressor.recipe import load_recipe

    with pytest.raises(CompressorError, match="needs a diffusion model with timesteps; encoder models have none"):
        compress(tiny_bert_dir, load_recipe("step-cache").with_calibration(calib_samples=8), calib_file, tmp_path / "x")
    with pytest.raises(CompressorError, match=r"step_cache\): field 'threshold'"):
        from compressor.recipe import Recipe

        Recipe.from_dict({"passes": [{"step_cache": {"threshold": -1.0}}]})


def test_compare_reports_sampling_time_block_counts_and_saves_samples(tiny_dit_dir, tmp_path):
    from compressor.cli import main
    from compressor.pipeline import compress
    from compressor.recipe import Recipe

    recipe = Recipe.from_dict({"name": "cache", "passes": [{"step_cache": {"threshold": 1e9}}],
                               "calibration": {"calib_images": 4, "sampling_steps": 3}})
    compress(tiny_dit_dir, recipe, None, tmp_path / "cached")
    report_dir = tmp_path / "report"
    assert main(["compare", str(tiny_dit_dir), str(tmp_path / "cached"), "--num-samples", "6", "--steps", str(STEPS),
                 "--batch", "2", "--repeats", "2", "--save-samples", "--report", str(report_dir)]) == 0
    rows = {row["model"]: row for row in json.loads((report_dir / "report.json").read_text())["models"]}
    assert rows["original"]["block_evaluations"] == STEPS * 3
    assert rows["cached"]["block_evaluations"] == 3 + (STEPS - 1)
    assert rows["cached"]["sampling_seconds"] > 0
    for name in ("original", "cached"):
        saved = np.load(report_dir / "samples" / f"{name}.npz")
        assert saved["images"].shape == (6, 1, 12, 12) and saved["images"].dtype == np.float32
        assert saved["images"].min() >= -1 and saved["images"].max() <= 1
        assert saved["labels"].tolist() == [0, 1, 2, 3, 0, 1]
    from compressor.model import load_model

    original = load_model(tiny_dit_dir)
    labels = torch.arange(6) % 4
    expected = sample(original.adapter.denoiser(original.model), original.adapter.scheduler(), labels,
                      shape=(1, 12, 12), steps=STEPS, guidance=1.5, seed=0,
                      null_conditioning=original.adapter.null_conditioning(original.model, labels))
    np.testing.assert_array_equal(np.load(report_dir / "samples" / "original.npz")["images"], expected.numpy())


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_split_graphs_chain_to_the_model_and_run_a_cached_loop(tiny_dit_dir, tmp_path, target):
    from compressor.cli import main
    from compressor.model import load_model
    from exporters.onnx_export import onnx_session

    handle = load_model(tiny_dit_dir)
    assert main(["export", str(tiny_dit_dir), "--split", "--target", target, "--output", str(tmp_path / "split")]) == 0
    head, rest, final = (onnx_session(tmp_path / "split" / f"{p}.onnx") for p in ("head", "rest", "final"))
    batch = {"hidden_states": torch.randn(3, 1, 12, 12), "timestep": torch.tensor([999, 500, 1]),
             "class_labels": torch.tensor([4, 0, 3])}
    feeds = {k: v.numpy() for k, v in batch.items()}
    first, residual = head.run(None, feeds)
    blocks = rest.run(None, {"first_block_output": first, "timestep": feeds["timestep"],
                             "class_labels": feeds["class_labels"]})[0]
    out = final.run(None, {"hidden": first + blocks, "timestep": feeds["timestep"],
                           "class_labels": feeds["class_labels"]})[0]
    with torch.no_grad():
        expected = handle.adapter.forward(handle.model, batch).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)

    # the README's loop, threshold 0: every step runs `rest`, and the samples are the model's
    scheduler, labels = handle.adapter.scheduler(), torch.arange(4) % 4
    null = handle.adapter.null_conditioning(handle.model, labels)
    latents = torch.randn((4, 1, 12, 12), generator=torch.Generator().manual_seed(5))
    expected = sample(handle.adapter.denoiser(handle.model), handle.adapter.scheduler(), labels, shape=(1, 12, 12),
                      steps=STEPS, guidance=1.5, seed=5, null_conditioning=null)
    scheduler.set_timesteps(STEPS)
    kept = previous = None
    classes = torch.cat([labels, null]).numpy()
    for t in scheduler.timesteps:
        x = torch.cat([latents, latents]).numpy()
        steps = np.full(len(x), int(t))
        first, residual = head.run(None, {"hidden_states": x, "timestep": steps, "class_labels": classes})
        change = np.inf if previous is None else np.abs(residual - previous).mean() / np.abs(previous).mean()
        if change > 0.0:
            kept = rest.run(None, {"first_block_output": first, "timestep": steps, "class_labels": classes})[0]
            previous = residual
        out = torch.from_numpy(final.run(None, {"hidden": first + kept, "timestep": steps, "class_labels": classes})[0])
        cond, uncond = out.chunk(2)
        latents = scheduler.step(uncond + 1.5 * (cond - uncond), t, latents).prev_sample
    np.testing.assert_allclose(latents.clamp(-1, 1).numpy(), expected.numpy(), atol=1e-3)


def test_model_card_names_the_token_reduction(tiny_dit_dir, tmp_path):
    from compressor.pipeline import compress
    from compressor.recipe import Recipe

    recipe = Recipe.from_dict({"name": "cache", "passes": [{"step_cache": {"threshold": 0.3}}],
                               "calibration": {"calib_images": 4, "sampling_steps": 3}})
    compress(tiny_dit_dir, recipe, None, tmp_path / "cached")
    assert "- Token reduction `step_cache` (threshold 0.3), applied again" in (tmp_path / "cached" / "README.md").read_text()
