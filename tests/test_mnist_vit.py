"""The example MNIST ViT (examples/train_mnist_vit.py): the committed model still recognises the 1,000 held-out
images through the adapter's own data path, and the `tome` preset merges tokens on it.
Skips when the shared MNIST files are absent."""
import gzip
from pathlib import Path

import numpy as np
import torch

from compressor.model import load_model

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "mnist_vit" / "model"


def raw_idx(directory: Path, kind: str, header: int) -> np.ndarray:
    """An MNIST IDX file's bytes after its header (16 bytes for images, 8 for labels), read by hand."""
    with gzip.open(sorted(directory.glob(f"*{kind}-idx*-ubyte*"))[0]) as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=header)


def test_example_vit_holds_its_held_out_accuracy(mnist):
    handle = load_model(MODEL)
    assert handle.adapter.forward_tokens(handle.model, {}) == 197  # 14 × 14 patches of 2 × 2, plus CLS
    images, labels = handle.adapter.images(handle, mnist, "evaluation")
    # the adapter's data path against the files decoded here: the last 1,000 images, rescaled to [0, 1] and
    # normalised by the processor's mean and std of 0.5
    expected = torch.from_numpy(raw_idx(mnist, "images", 16).reshape(-1, 1, 28, 28)[-1000:] / 255.0 * 2 - 1).float()
    torch.testing.assert_close(images, expected, atol=1e-6, rtol=0)
    assert labels.tolist() == raw_idx(mnist, "labels", 8)[-1000:].tolist()
    with torch.no_grad():
        predicted = torch.cat([handle.adapter.forward(handle.model, {"pixel_values": chunk}).argmax(1)
                               for chunk in images.split(250)])
    # 97.1% when trained (training_log.json); a bound rather than that figure, because float kernels differ
    # between CPUs and may move an image or two across the decision boundary
    assert (predicted == labels).double().mean().item() >= 0.965


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
