"""The example MNIST DiT (examples/train_mnist_dit.py): it generates digits its judge recognises, its
W8A8 version samples nearly the same images, and `compressor compress` / `compare` run on it end to end."""
import json
from pathlib import Path

import pytest
import torch

from compressor.cli import main
from compressor.diffusion.compare import SamplingSetup, generate
from compressor.diffusion.quality import judge_scores, psnr
from compressor.evaluation.judge import load_judge
from compressor.evaluation.mnist import HELD_OUT, load_mnist
from compressor.model import load_model
from compressor.pipeline import compress
from compressor.recipe import Recipe, load_recipe

ASSET = Path(__file__).resolve().parents[1] / "examples" / "mnist_dit"
MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
SETUP = SamplingSetup(samples=40, steps=10, guidance=1.5, seed=0, chunk=40)
LABELS = torch.arange(40) % 10


@pytest.fixture(scope="module")
def fp32_samples():
    return generate(load_model(ASSET / "model"), LABELS, SETUP)


def test_mnist_split():
    train_x, _ = load_mnist(MNIST, "train")
    held_x, held_y = load_mnist(MNIST, "heldout")
    assert (len(train_x), len(held_x)) == (10000 - HELD_OUT, HELD_OUT)
    assert train_x.shape[1:] == (1, 28, 28) and float(train_x.min()) == -1.0 and float(train_x.max()) == 1.0
    assert set(held_y.tolist()) == set(range(10))


def test_judge_recognises_held_out_digits():
    images, labels = load_mnist(MNIST, "heldout")
    assert judge_scores(load_judge(ASSET / "judge.safetensors"), images, labels)["accuracy"] > 0.96


def test_fp32_dit_generates_digits_of_the_asked_class(fp32_samples):
    # 40 samples with 10 DDIM steps (the benchmark uses 1,000 with 25): most must read as their class
    accuracy = judge_scores(load_judge(ASSET / "judge.safetensors"), fp32_samples, LABELS)["accuracy"]
    assert accuracy >= 0.7
    assert fp32_samples.shape == (40, 1, 28, 28)


def test_int8_samples_match_fp32(fp32_samples, tmp_path):
    recipe = Recipe.from_dict({"calib_images": 20, "sampling_steps": 10}, base=load_recipe("int8"))
    handle = compress(ASSET / "model", recipe, None, tmp_path / "int8")
    samples = generate(handle, LABELS, SETUP)
    assert psnr(fp32_samples, samples) > 25
    # same noise, same numerics: a second run samples identical images
    assert torch.equal(samples, generate(handle, LABELS, SETUP))


def test_cli_compress_and_compare_dit(tmp_path, capsys):
    out = tmp_path / "int8"
    assert main(["compress", str(ASSET / "model"), "--recipe", "int8", "--num-samples", "10",
                 "--output", str(out)]) == 0
    captured = capsys.readouterr()
    assert "no calibration data given" in captured.err and "10 images" in captured.err
    record = json.loads((out / "compression.json").read_text())
    assert record["calibration"]["default"] is True
    assert {r["format"] for r in record["layers"] if r["in_budget"]} == {"int8"}
    assert all(r["format"] == "float" for r in record["layers"] if not r["in_budget"])

    report_dir = tmp_path / "report"
    assert main(["compare", str(ASSET / "model"), str(out), "--report", str(report_dir), "--judge",
                 str(ASSET / "judge.safetensors"), "--eval-data", str(MNIST), "--num-samples", "20", "--steps", "5",
                 "--batch", "4", "--repeats", "2"]) == 0
    report = json.loads((report_dir / "report.json").read_text())
    original, int8 = report["models"]
    assert original["model"] == "original" and int8["model"] == "int8"
    assert int8["psnr_db"] > 20 and 0 < int8["ssim"] <= 1
    assert 0 <= int8["judge_accuracy"] <= 1 and original["frechet_distance"] > 0
    assert int8["size_ratio"] < 1 and int8["latency_ms_per_step"] > 0
    assert (report_dir / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_dit_rejects_bad_eval_data(tmp_path, capsys):
    bad = tmp_path / "not_a_dir.txt"
    bad.write_text("x")
    assert main(["compare", str(ASSET / "model"), str(ASSET / "model"), "--report", str(tmp_path / "r"),
                 "--eval-data", str(bad)]) == 2
    assert "MNIST idx" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_compare_dit_rejects_uncompressed_directory(tmp_path, capsys):
    assert main(["compare", str(ASSET / "model"), str(ASSET / "model"), "--report", str(tmp_path / "r")]) == 2
    assert "not a compressed checkpoint" in capsys.readouterr().err
