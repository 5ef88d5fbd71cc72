"""A model family written the way any new one is: this adapter file and its registry line (the decorator),
nothing else in the product changes. ``toy-mlp``: residual MLP blocks over token features, saved as a
config.json and a model.safetensors."""
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from compressor.adapters.base import ADAPTERS, Capabilities, ModelAdapter, TokenLayout
from compressor.files import raw_config

MODEL_TYPE = "toy-mlp"


class ToyMlp(nn.Module):
    def __init__(self, hidden: int, blocks: int):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))
                                    for _ in range(blocks))

    def forward(self, features):
        for block in self.blocks:
            features = features + block(features)
        return features


def write_toy_checkpoint(directory: Path, hidden: int = 16, blocks: int = 2, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"model_type": MODEL_TYPE, "hidden": hidden, "blocks": blocks}))
    save_file(ToyMlp(hidden, blocks).state_dict(), str(directory / "model.safetensors"))
    return directory


@ADAPTERS.register(MODEL_TYPE)
class ToyMlpAdapter(ModelAdapter):
    description = "toy MLPs"
    output_names = ("hidden",)

    def __init__(self, directory: Path):
        self.directory, self.config = directory, raw_config(directory)

    @classmethod
    def for_directory(cls, path):
        return cls(Path(path)) if raw_config(Path(path)).get("model_type") == MODEL_TYPE else None

    @property
    def capabilities(self):
        return Capabilities(tokens=TokenLayout())

    def empty_model(self):
        return ToyMlp(self.config["hidden"], self.config["blocks"]).eval()

    def load(self):
        model = self.empty_model()
        model.load_state_dict(load_file(str(self.directory / "model.safetensors")))
        return model

    def save_metadata(self, handle, directory):
        (Path(directory) / "config.json").write_text(json.dumps(self.config))

    def quantizable_layers(self, model):
        return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]

    def blocks(self, model):
        return [f"blocks.{i}" for i in range(len(model.blocks))]

    def input_names(self, tokenizer=None):
        return ("features",)

    def forward(self, model, batch):
        return model(batch["features"])

    def token_mask(self, batch):
        return torch.ones(batch["features"].shape[:2], dtype=torch.bool)

    def dummy_inputs(self, handle):
        return {"features": torch.randn(2, 4, self.config["hidden"], generator=torch.Generator().manual_seed(0))}

    def dynamic_axes(self, input_names):
        return {name: {0: "batch", 1: "tokens"} for name in (*input_names, *self.output_names)}

    def calibration(self, handle, calib_data, settings):
        features = torch.randn(settings.calib_samples, 8, self.config["hidden"],
                               generator=torch.Generator().manual_seed(settings.seed))
        batches = [{"features": chunk} for chunk in features.split(settings.batch_size)]
        return batches, batches[:2], {"data": "random features", "default": True, "samples": len(features),
                                      "description": f"{len(features)} random feature sequences"}
