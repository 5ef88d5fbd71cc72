"""The example MNIST DiT (examples/train_mnist_dit.py): it generates digits its judge recognises, its
W8A8 version samples nearly the same images, and `compressor compress` / `compare` run on it end to end.

Tests that read the MNIST files in ../shared/data/mnist skip when they are absent; the others build what
they need (IDX files are written by the test itself)."""
import gzip
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from compressor.cli import main
from compressor.diffusion.quality import frechet_distance, psnr, ssim
from compressor.evaluation.generated_images import SamplingSetup, generate, load_judge
from compressor.model import load_model
from compressor.pipeline import compress
from compressor.recipe import load_recipe
from compressor.checkpoint import load_any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from mnist_data import HELD_OUT, load_mnist  # noqa: E402
from mnist_judge import load_weights  # noqa: E402

ASSET = ROOT / "examples" / "mnist_dit"
JUDGE = ASSET / "judge.pt"
SETUP = SamplingSetup(samples=40, steps=10, guidance=1.5, seed=0, chunk=40)
LABELS = torch.arange(40) % 10


@pytest.fixture(scope="module")
def judge():
    return load_judge(JUDGE)


@pytest.fixture(scope="module")
def fp32_samples():
    return generate(load_model(ASSET / "model"), LABELS, SETUP)


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX as specified: two zero bytes, type 0x08 (uint8), the number of dimensions, big-endian sizes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as f:
        f.write(data)


def top1(judge, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return judge(images)[0].argmax(1)


def test_torchscript_judge_gives_the_logits_of_the_cnn_weights(judge):
    # judge.pt is examples/mnist_judge.py's CNN with judge.safetensors' weights, scripted: same numbers
    cnn = load_weights(ASSET / "judge.safetensors")
    generator = torch.Generator().manual_seed(0)
    for shape in ((6, 1, 28, 28), (3, 1, 32, 32)):  # the second goes through the judge's resize
        images = torch.rand(shape, generator=generator) * 2 - 1
        with torch.no_grad():
            logits, features = judge(images)
            assert torch.equal(logits, cnn.logits(images))
            assert torch.equal(features, cnn.features(images))
        assert logits.shape == (shape[0], 10) and features.shape == (shape[0], 128)


def test_mnist_split(mnist):
    train_x, train_y = load_mnist(mnist, "train")
    held_x, held_y = load_mnist(mnist, "heldout")
    assert (len(train_x), len(held_x)) == (10000 - HELD_OUT, HELD_OUT)
    assert train_x.shape[1:] == (1, 28, 28) and float(train_x.min()) == -1.0 and float(train_x.max()) == 1.0
    assert set(held_y.tolist()) == set(range(10))
    # the split is the file's order: the held-out images are its last ones, decoded as x / 127.5 - 1
    with gzip.open(sorted(mnist.glob("*images-idx3-ubyte*"))[0]) as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    np.testing.assert_array_equal(held_x[:, 0].numpy(), raw[-HELD_OUT:].astype(np.float32) / 127.5 - 1)
    np.testing.assert_array_equal(train_x[-1, 0].numpy(), raw[-HELD_OUT - 1].astype(np.float32) / 127.5 - 1)


def test_judge_recognises_held_out_digits(mnist, judge):
    images, labels = load_mnist(mnist, "heldout")
    # 97.8% when the judge was trained (README); a bound rather than that figure, because float kernels
    # differ between CPUs and may move an image or two across the decision boundary
    assert (top1(judge, images) == labels).double().mean().item() >= 0.97


def test_fp32_dit_generates_digits_of_the_asked_class(fp32_samples, judge):
    # 40 samples with 10 DDIM steps (the benchmark uses 1,000 with 25): most must read as their class
    assert fp32_samples.shape == (40, 1, 28, 28)
    assert (top1(judge, fp32_samples) == LABELS).double().mean().item() >= 0.7


def test_int8_samples_match_fp32(fp32_samples, tmp_path):
    recipe_file = tmp_path / "int8-fast.yaml"
    recipe_file.write_text("preset: int8\ncalib_images: 20\nsampling_steps: 10\n")
    recipe = load_recipe(str(recipe_file))
    handle = compress(ASSET / "model", recipe, None, tmp_path / "int8")
    samples = generate(handle, LABELS, SETUP)
    assert psnr(fp32_samples, samples) > 25
    # same noise, same numerics: a second run samples identical images
    assert torch.equal(samples, generate(handle, LABELS, SETUP))


def numpy_psnr(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    mse = ((reference.double().numpy() - candidate.double().numpy()) ** 2).reshape(len(reference), -1).mean(1)
    return float(np.mean(np.minimum(10 * np.log10(4.0 / mse), 100.0)))


def test_cli_compress_and_compare_dit(tmp_path, capsys, judge):
    out = tmp_path / "int8"
    assert main(["compress", str(ASSET / "model"), "--recipe", "int8", "--num-samples", "10",
                 "--output", str(out)]) == 0
    captured = capsys.readouterr()
    assert "no calibration data given" in captured.err and "10 images" in captured.err
    record = json.loads((out / "compression.json").read_text())
    assert record["calibration"]["default"] is True
    assert {r["format"] for r in record["layers"] if r["in_budget"]} == {"int8"}
    assert all(r["format"] == "float" for r in record["layers"] if not r["in_budget"])

    # real images: 30 digits in an IDX directory of the test's own (the fp32 model's samples, stored as bytes)
    reference = generate(load_model(ASSET / "model"), torch.arange(30) % 10, SamplingSetup(30, 5, 1.5, seed=7))
    pixels = ((reference[:, 0].numpy() + 1) * 127.5).round().astype(np.uint8)
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    write_idx(real_dir / "t10k-images-idx3-ubyte.gz", pixels)
    real = torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1)[:, None]

    report_dir = tmp_path / "report"
    assert main(["compare", str(ASSET / "model"), str(out), "--report", str(report_dir), "--judge", str(JUDGE),
                 "--eval-data", str(real_dir), "--num-samples", "20", "--steps", "5", "--batch", "4",
                 "--repeats", "2"]) == 0
    assert "wrote" in capsys.readouterr().out and "samples.png" in sorted(p.name for p in report_dir.iterdir())
    report = json.loads((report_dir / "report.json").read_text())
    assert report["kind"] == "diffusion" and report["real_images"] == 30
    assert report["sampling"]["samples"] == 20 and report["latency_setup"]["batch"] == 4
    original, int8 = report["models"]
    assert original["model"] == "original" and int8["model"] == "int8"

    # every quality figure again, from samples drawn here with the same setup
    setup, labels = SamplingSetup(20, 5, 1.5, seed=0), torch.arange(20) % 10
    samples = {"original": generate(load_model(ASSET / "model"), labels, setup), "int8": generate(load_any(out), labels, setup)}
    assert int8["psnr_db"] == pytest.approx(numpy_psnr(samples["original"], samples["int8"]), abs=1e-9)
    assert int8["psnr_db"] > 20
    assert int8["ssim"] == pytest.approx(ssim(samples["original"], samples["int8"]), abs=1e-12)
    with torch.no_grad():
        real_features = judge(real)[1].double().numpy()
        for row in (original, int8):
            logits, features = judge(samples[row["model"]])
            assert row["judge_accuracy"] == (logits.argmax(1) == labels).double().mean().item()
            assert row["frechet_distance"] == pytest.approx(
                frechet_distance(features.double().numpy(), real_features), rel=1e-9)
    assert "psnr_db" not in original
    assert int8["size_ratio"] == int8["weights_bytes"] / original["weights_bytes"] < 1
    assert int8["latency_ms_per_step"] > 0 and original["latency_ratio"] == 1.0

    md = (report_dir / "report.md").read_text()
    assert md.startswith("| model | recipe | bits/weight | MACs × | sparsity | PSNR dB | SSIM | blocks/image | sampling s | judge acc % | Fréchet | ms/step |")
    assert f"| int8 | int8 | {int8['bits_per_weight']:.2f} | 1.00 | – | {int8['psnr_db']:.2f} |" in md
    assert (report_dir / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_dit_rejects_bad_eval_data(tmp_path, capsys):
    bad = tmp_path / "not_idx.txt"
    bad.write_text("x")
    assert main(["compare", str(ASSET / "model"), str(ASSET / "model"), "--report", str(tmp_path / "r"),
                 "--eval-data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("compressor: error:") == 1 and "must be IDX images" in err and "not an IDX file" in err
    assert not (tmp_path / "r").exists()


def test_compare_dit_rejects_a_judge_that_is_not_torchscript(tmp_path, capsys):
    assert main(["compare", str(ASSET / "model"), str(ASSET / "model"), "--report", str(tmp_path / "r"),
                 "--judge", str(ASSET / "judge.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("compressor: error:") == 1 and "is not a TorchScript judge" in err
    assert not (tmp_path / "r").exists()


def test_compare_dit_rejects_uncompressed_directory(tmp_path, capsys):
    assert main(["compare", str(ASSET / "model"), str(ASSET / "model"), "--report", str(tmp_path / "r")]) == 2
    assert "not a compressed checkpoint" in capsys.readouterr().err
