"""Image data in the IDX layout (the format MNIST and its relatives ship in): an images file
``*images-idx3-ubyte`` and optionally a labels file ``*labels-idx1-ubyte``, either gzipped or not."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from compressor.errors import CompressorError

IMAGES_PATTERN, LABELS_PATTERN = "*images-idx3-ubyte*", "*labels-idx1-ubyte*"
# IDX type codes (third byte of the magic number) to numpy dtypes, stored big-endian
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """The array an IDX file holds: magic (0, 0, type, dims), one big-endian uint32 per dimension, then data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise CompressorError(f"cannot read IDX file {path}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise CompressorError(f"{path} is not an IDX file (bad magic number)")
    dims, dtype = data[3], np.dtype(IDX_DTYPES[data[2]])
    header = 4 + 4 * dims
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    if len(data) != header + dtype.itemsize * int(np.prod(shape)):
        raise CompressorError(f"{path}: {len(data) - header} data bytes do not hold an array of shape {shape}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def find_idx_files(path: str | Path) -> tuple[Path, Path | None]:
    """(images file, labels file or None) in a directory; an images file may also be given directly."""
    path = Path(path)
    if path.is_file():
        return path, None
    if not path.is_dir():
        raise CompressorError(f"image data not found: {path}")
    images = sorted(path.glob(IMAGES_PATTERN))
    labels = sorted(path.glob(LABELS_PATTERN))
    if not images:
        raise CompressorError(f"no IDX images file ({IMAGES_PATTERN}) in {path}")
    return images[0], labels[0] if labels else None


def load_idx_images(path: str | Path, last: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images as float32 in [-1, 1], shape (N, 1, H, W) (or (N, C, H, W) for a 4-D file of channel-first
    images), and int64 labels when a labels file sits beside them. ``last`` keeps only the last images."""
    images_file, labels_file = find_idx_files(path)
    images = read_idx(images_file)
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.dtype != np.uint8:
        raise CompressorError(f"{images_file}: expected 8-bit images of shape (N, H, W) or (N, C, H, W), "
                              f"got {images.dtype} {images.shape}")
    labels = read_idx(labels_file) if labels_file is not None else None
    if labels is not None and (labels.ndim != 1 or len(labels) != len(images)):
        raise CompressorError(f"{labels_file}: expected one label per image ({len(images)}), got shape {labels.shape}")
    part = slice(-last, None) if last else slice(None)
    x = torch.from_numpy(images[part].astype(np.float32) / 127.5 - 1.0)
    y = torch.from_numpy(labels[part].astype(np.int64)) if labels is not None else None
    return x, y
