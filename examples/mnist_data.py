"""The MNIST split of the DiT example: the last HELD_OUT images of the file are never trained on; they are the
real images the judge and the Fréchet distance are measured against (`compressor compare --eval-data` uses
the last 1,000 images of the IDX data it is given)."""
from __future__ import annotations

from pathlib import Path

import torch

from calibrators.images import load_idx_images
from compressor.errors import CompressorError

HELD_OUT = 1000


def load_mnist(directory: str | Path, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [-1, 1] of shape (N, 1, 28, 28) and int64 labels: `train` is every image but the last
    HELD_OUT, `heldout` the last HELD_OUT."""
    if split not in ("train", "heldout"):
        raise CompressorError(f"split must be 'train' or 'heldout', got {split!r}")
    images, labels = load_idx_images(directory)
    if labels is None:
        raise CompressorError(f"no IDX labels file (*labels-idx1-ubyte*) in {directory}")
    part = slice(None, -HELD_OUT) if split == "train" else slice(-HELD_OUT, None)
    return images[part], labels[part]
