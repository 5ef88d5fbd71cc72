"""A small CNN that classifies MNIST-like images: it judges whether generated digits look like their class,
and its penultimate features give the Fréchet distance between generated and real images."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CompressorError


class DigitJudge(nn.Module):
    feature_dim = 128

    def __init__(self, image_size: int = 28):
        super().__init__()
        self.image_size = image_size
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * (image_size // 4) ** 2, self.feature_dim)
        self.head = nn.Linear(self.feature_dim, 10)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate activations for images in [-1, 1], resized to the judge's resolution."""
        if images.shape[-1] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        x = F.max_pool2d(F.relu(self.conv1(images)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def save_judge(judge: DigitJudge, path: str | Path) -> None:
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(path),
              metadata={"image_size": str(judge.image_size)})


def load_judge(path: str | Path) -> DigitJudge:
    path = Path(path)
    if not path.is_file():
        raise CompressorError(f"judge classifier not found: {path}")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        image_size = int((f.metadata() or {}).get("image_size", 28))
    judge = DigitJudge(image_size)
    judge.load_state_dict(load_file(str(path)))
    return judge.eval()
