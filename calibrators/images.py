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


# --- labelled images for classifiers: an ImageFolder directory or IDX files ------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# IDX data holds both parts: its last HELD_OUT_IMAGES images are the evaluation part, and calibration never
# reads them (the same split the MNIST examples train and evaluate on).
HELD_OUT_IMAGES = 1000
PARTS = ("calibration", "evaluation")


def is_image_folder(path: str | Path) -> bool:
    """A directory of class subfolders holding PNG or JPEG files (rather than IDX files)."""
    path = Path(path)
    return path.is_dir() and not any(path.glob(IMAGES_PATTERN)) and any(p.is_dir() for p in path.iterdir())


def read_image_folder(path: str | Path, label2id: dict[str, int], channels: int) -> tuple[list[np.ndarray], list[int]]:
    """Every image of an ImageFolder directory as [H, W, channels] uint8, with the label id its folder names.
    Folder names must be label names of the model (its ``id2label``)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    mode = "L" if channels == 1 else "RGB"
    images, labels = [], []
    for folder in sorted(p for p in path.iterdir() if p.is_dir()):
        if folder.name not in label2id:
            known = ", ".join(sorted(label2id, key=lambda name: label2id[name])[:20])
            raise CompressorError(f"{folder}: folder name {folder.name!r} is not a class of the model (its id2label "
                                  f"names: {known})")
        for file in sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES):
            try:
                with Image.open(file) as image:
                    pixels = np.asarray(image.convert(mode))
            except (OSError, UnidentifiedImageError) as exc:
                raise CompressorError(f"cannot read image {file}: {exc}") from None
            images.append(pixels.reshape(*pixels.shape[:2], channels))
            labels.append(label2id[folder.name])
    if not images:
        raise CompressorError(f"no PNG or JPEG images in the class folders of {path}")
    return images, labels


def _idx_part(path: str | Path, part: str) -> tuple[list[np.ndarray], list[int] | None]:
    images_file, labels_file = find_idx_files(path)
    images = read_idx(images_file)
    labels = read_idx(labels_file) if labels_file is not None else None
    if images.ndim == 3:
        images = images[..., None]
    elif images.ndim == 4:  # channel-first files: [N, C, H, W] → [N, H, W, C]
        images = images.transpose(0, 2, 3, 1)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise CompressorError(f"{images_file}: expected 8-bit images of shape (N, H, W) or (N, C, H, W)")
    if labels is not None and len(labels) != len(images):
        raise CompressorError(f"{labels_file}: expected one label per image ({len(images)}), got {len(labels)}")
    if part == "calibration":
        if len(images) <= HELD_OUT_IMAGES:
            raise CompressorError(f"{images_file} has {len(images)} images; calibration reads IDX data up to its last "
                                  f"{HELD_OUT_IMAGES}, which are the evaluation part")
        part_slice = slice(None, -HELD_OUT_IMAGES)
    else:
        part_slice = slice(-HELD_OUT_IMAGES, None)
    return list(images[part_slice]), None if labels is None else [int(v) for v in labels[part_slice]]


def load_labelled_images(path: str | Path, processor, channels: int, label2id: dict[str, int],
                         part: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``pixel_values`` (float32 [N, C, H, W], made by the model's own image processor) and int64 labels.

    An ImageFolder directory is read whole for either part (give calibration and evaluation folders of
    their own). IDX data is split: "evaluation" is its last HELD_OUT_IMAGES images, "calibration" the rest."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    path = Path(path)
    if not path.exists():
        raise CompressorError(f"image data not found: {path}")
    if is_image_folder(path):
        images, labels = read_image_folder(path, label2id, channels)
    else:
        images, labels = _idx_part(path, part)
    if images[0].shape[-1] != channels:
        raise CompressorError(f"{path}: images have {images[0].shape[-1]} channels, the model takes {channels}")
    pixels = processor(images=images, return_tensors="pt", input_data_format="channels_last")["pixel_values"]
    return pixels.float(), None if labels is None else torch.tensor(labels, dtype=torch.int64)
