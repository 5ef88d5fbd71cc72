"""Train the example Vision Transformer on MNIST: a transformers `ViTForImageClassification` with 2×2 patches,
so a 28×28 digit is 196 patch tokens plus CLS (token reduction needs tokens to reduce).

    python examples/train_mnist_vit.py --data ../shared/data/mnist --output examples/mnist_vit

Trains on all but the last 1,000 images of the MNIST file given; those 1,000 are held out and only scored.
Writes OUTPUT/model/ (config.json with id2label "0".."9", model.safetensors, and preprocessor_config.json: a
ViT image processor that maps 8-bit grey pixels to [-1, 1], the scale the IDX reader also uses) and
OUTPUT/training_log.json (held-out top-1 after every epoch).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mnist_data import load_mnist


def build_model(hidden: int, layers: int, heads: int, mlp: int):
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=28, patch_size=2, num_channels=1, hidden_size=hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, intermediate_size=mlp, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0, num_labels=10,
                       id2label={i: str(i) for i in range(10)}, label2id={str(i): i for i in range(10)})
    return ViTForImageClassification(config)


def image_processor():
    from transformers import ViTImageProcessor

    # 8-bit pixels → /255 → (x - 0.5) / 0.5: the [-1, 1] scale of the training tensors
    return ViTImageProcessor(do_resize=True, size={"height": 28, "width": 28}, do_rescale=True,
                             rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5], image_std=[0.5])


def augment(x: torch.Tensor) -> torch.Tensor:
    """Random shifts of up to 2 pixels per image (padding with the background value -1)."""
    padded = F.pad(x, (2, 2, 2, 2), value=-1.0)
    dx, dy = torch.randint(0, 5, (2, len(x)))
    rows = (dy[:, None] + torch.arange(28)[None]).clamp(max=31)
    cols = (dx[:, None] + torch.arange(28)[None]).clamp(max=31)
    index = torch.arange(len(x))[:, None, None]
    return padded[:, 0][index, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    hits = sum((model(pixel_values=x[i:i + 250]).logits.argmax(1) == y[i:i + 250]).sum().item() for i in range(0, len(x), 250))
    return hits / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/mnist")
    parser.add_argument("--output", default="examples/mnist_vit")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--mlp", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    x, y = load_mnist(args.data, "train")
    xv, yv = load_mnist(args.data, "heldout")
    model = build_model(args.hidden, args.layers, args.heads, args.mlp)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps_per_epoch = math.ceil(len(x) / args.batch)
    total, warmup = args.epochs * steps_per_epoch, steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0))))
    log, start = [], time.time()
    for epoch in range(args.epochs):
        model.train()
        for idx in torch.randperm(len(x)).split(args.batch):
            loss = F.cross_entropy(model(pixel_values=augment(x[idx])).logits, y[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            schedule.step()
        acc = accuracy(model, xv, yv)
        log.append({"epoch": epoch + 1, "seconds": round(time.time() - start), "loss": loss.item(), "heldout_top1": acc})
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}, held-out top-1 {acc:.4f} ({time.time() - start:.0f} s)", flush=True)

    out = Path(args.output)
    model.save_pretrained(out / "model")
    image_processor().save_pretrained(out / "model")
    (out / "training_log.json").write_text(json.dumps({"args": vars(args), "epochs": log}, indent=1), encoding="utf-8")
    print(f"held-out top-1 {log[-1]['heldout_top1']:.4f}; wrote {out / 'model'}")


if __name__ == "__main__":
    main()
