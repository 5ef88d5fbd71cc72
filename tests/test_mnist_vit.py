"""The example MNIST ViT (examples/train_mnist_vit.py): the committed model scores what its training log says
on the 1,000 held-out images, through the adapter's own data path, and the `tome` preset merges tokens on it.
Skips when the shared MNIST files are absent."""
import json
from pathlib import Path

import pytest
import torch

from compressor.model import load_model

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "mnist_vit" / "model"
MNIST = ROOT.parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="module")
def mnist() -> Path:
    if not any(MNIST.glob("*images-idx3-ubyte*")):
        pytest.skip(f"shared MNIST data not found at {MNIST}")
    return MNIST


def test_example_vit_holds_its_held_out_accuracy(mnist):
    handle = load_model(MODEL)
    assert handle.adapter.forward_tokens(handle.model, {}) == 197  # 14 × 14 patches of 2 × 2, plus CLS
    images, labels = handle.adapter.images(handle, mnist, "evaluation")
    with torch.no_grad():
        predicted = torch.cat([handle.adapter.forward(handle.model, {"pixel_values": chunk}).argmax(1)
                               for chunk in images.split(250)])
    accuracy = (predicted == labels).double().mean().item()
    logged = json.loads((MODEL.parent / "training_log.json").read_text())["epochs"][-1]["heldout_top1"]
    assert accuracy == pytest.approx(logged, abs=1e-9) and accuracy >= 0.97


def test_tome_on_the_example_vit(mnist, tmp_path):
    from compressor.pipeline import compress
    from compressor.recipe import load_recipe

    handle = compress(MODEL, load_recipe("tome").with_calibration(calib_samples=64, sensitivity_samples=64), mnist,
                      tmp_path / "tome")
    schedule = handle.info["token_reduction"]["schedule"]
    assert len(schedule) == 6 and schedule[0] > 0 and schedule == sorted(schedule, reverse=True)
    images, labels = handle.adapter.images(handle, mnist, "evaluation")
    with torch.no_grad():
        accuracy = (handle.adapter.forward(handle.model, {"pixel_values": images[:500]}).argmax(1) == labels[:500])
    assert accuracy.double().mean().item() >= 0.95
