"""MNIST in its original IDX files: the images the DiT example trains on and the held-out set it is judged against."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from ..errors import CompressorError

HELD_OUT = 1000  # the last images of the file never take part in training


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_mnist(directory: str | Path, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float tensors in [-1, 1] of shape (N, 1, 28, 28) and int64 labels.

    `train` is every image but the last HELD_OUT, `heldout` the last HELD_OUT."""
    directory = Path(directory)
    images_file = next(iter(sorted(directory.glob("*images-idx3-ubyte*"))), None)
    labels_file = next(iter(sorted(directory.glob("*labels-idx1-ubyte*"))), None)
    if images_file is None or labels_file is None:
        raise CompressorError(f"no MNIST idx files (*images-idx3-ubyte*, *labels-idx1-ubyte*) in {directory}")
    if split not in ("train", "heldout"):
        raise CompressorError(f"split must be 'train' or 'heldout', got {split!r}")
    images = _read_idx(images_file)
    labels = _read_idx(labels_file)
    part = slice(None, -HELD_OUT) if split == "train" else slice(-HELD_OUT, None)
    x = torch.from_numpy(images[part].astype(np.float32) / 127.5 - 1.0).unsqueeze(1)
    return x, torch.from_numpy(labels[part].astype(np.int64))
