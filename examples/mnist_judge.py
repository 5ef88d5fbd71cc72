"""The MNIST judge: a small CNN that says whether a generated digit looks like its class; its penultimate
features give the Fréchet distance between generated and real images.

`compressor compare --judge FILE` takes any TorchScript module that maps images in [-1, 1] of shape
(N, C, H, W) to a tuple (logits (N, classes), features (N, D)). This file defines the CNN, reads and writes
its weights (safetensors) and writes it in that TorchScript form:

    python examples/mnist_judge.py [--weights examples/mnist_dit/judge.safetensors] [--output examples/mnist_dit/judge.pt]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

HERE = Path(__file__).resolve().parent


class DigitJudge(nn.Module):
    feature_dim: int = 128

    def __init__(self, image_size: int = 28):
        super().__init__()
        self.image_size = image_size
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * (image_size // 4) ** 2, self.feature_dim)
        self.head = nn.Linear(self.feature_dim, 10)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate activations for images in [-1, 1], resized to the judge's resolution."""
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        x = F.max_pool2d(F.relu(self.conv1(images)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc(x.flatten(1)))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, features): the contract of a `--judge` file."""
        features = self.features(images)
        return self.head(features), features


def save_weights(judge: DigitJudge, path: str | Path) -> None:
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(path),
              metadata={"image_size": str(judge.image_size)})


def load_weights(path: str | Path) -> DigitJudge:
    with safe_open(str(path), "pt") as f:
        image_size = int((f.metadata() or {}).get("image_size", 28))
    judge = DigitJudge(image_size)
    judge.load_state_dict(load_file(str(path)))
    return judge.eval()


def export_torchscript(judge: DigitJudge, path: str | Path) -> None:
    """Write the judge as a TorchScript file that `compressor compare --judge` loads without this code."""
    scripted = torch.jit.script(judge.eval())
    torch.jit.save(scripted, str(path))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=str(HERE / "mnist_dit" / "judge.safetensors"))
    p.add_argument("--output", default=str(HERE / "mnist_dit" / "judge.pt"))
    args = p.parse_args()
    export_torchscript(load_weights(args.weights), args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
