"""Vision Transformers in transformers (``ViTForImageClassification``, ``ViTModel``): loading with the
checkpoint's image processor, ``pixel_values`` in and ``logits`` out, the Linears of the encoder blocks,
and image calibration data (an ImageFolder directory or IDX files, calibrators/images.py)."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from compressor.adapters.base import ADAPTERS, AttentionLayout, Capabilities, ModelAdapter, TokenLayout, TokenMerging
from compressor.adapters.encoder import eager_attention
from compressor.errors import CompressorError
from compressor.files import raw_config, read_config


@ADAPTERS.register("image-classification")
class VisionTransformerAdapter(ModelAdapter):
    description = "ViT image classifiers"
    model_types = ("vit",)
    output_names = ("logits",)
    keep_float: tuple[str, ...] = ()

    def __init__(self, directory: Path | None = None, config=None):
        self.directory, self.config = directory, config

    @classmethod
    def for_directory(cls, path: Path) -> "VisionTransformerAdapter | None":
        if raw_config(path).get("model_type") not in cls.model_types:
            return None
        return cls(path, read_config(path))

    def _is_bare_encoder(self) -> bool:
        return "ViTModel" in (getattr(self.config, "architectures", None) or [])

    def _model_class(self):
        from transformers import ViTForImageClassification, ViTModel

        return ViTModel if self._is_bare_encoder() else ViTForImageClassification

    @property
    def capabilities(self) -> Capabilities:
        heads = self.config.num_attention_heads
        bare = self._is_bare_encoder()
        return Capabilities(
            tokens=TokenLayout(protected=1, patches=True),
            attention=AttentionLayout(heads, heads, self.config.hidden_size // heads),
            prunable=True,
            token_merging=TokenMerging("vit", encoder="" if bare else "vit", head=None if bare else "classifier",
                                       patch_embeddings=True),
        )

    def load(self) -> nn.Module:
        from compressor.adapters.encoder import load_pretrained

        return load_pretrained(self._model_class(), self.directory)

    def empty_model(self) -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self._model_class()(self.config).eval()

    def load_tokenizer(self):
        """The checkpoint's image processor (it plays the tokenizer's part: raw input → model input)."""
        from transformers import AutoImageProcessor

        if not (self.directory / "preprocessor_config.json").is_file():
            raise CompressorError(f"{self.directory} has no preprocessor_config.json (the image processor the "
                                  "model was trained with)")
        return AutoImageProcessor.from_pretrained(self.directory, local_files_only=True)

    def save_metadata(self, handle, directory) -> None:
        handle.model.config.save_pretrained(directory)
        handle.tokenizer.save_pretrained(directory)

    def export_attention(self, model: nn.Module):
        return eager_attention(model)

    # --- structure ---------------------------------------------------------------------------------
    def _encoder_prefix(self, model: nn.Module) -> str:
        return "vit." if hasattr(model, "vit") else ""

    def blocks(self, model: nn.Module) -> list[str]:
        prefix = self._encoder_prefix(model)
        return [f"{prefix}layers.{i}" for i in range(len(model.get_submodule(f"{prefix}layers")))]

    def prunable_groups(self, model: nn.Module) -> list:
        """Each block's attention heads and MLP channels (see compressor.structure)."""
        from compressor.structure import UnitGroup

        groups = []
        for block in self.blocks(model):
            attention = model.get_submodule(f"{block}.attention")
            groups.append(UnitGroup(f"{block}.attention", "heads",
                                    tuple(f"{block}.attention.{p}" for p in ("q_proj", "k_proj", "v_proj")),
                                    f"{block}.attention.o_proj", attention.head_dim, f"{block}.attention",
                                    (("num_attention_heads", 1),)))
            groups.append(UnitGroup(f"{block}.mlp", "channels", (f"{block}.mlp.fc1",), f"{block}.mlp.fc2", 1))
        return groups

    def quantizable_layers(self, model: nn.Module) -> list[str]:
        """Linears of the encoder blocks; the patch embedding (a convolution) and the classifier stay float."""
        blocks = tuple(f"{b}." for b in self.blocks(model))
        return [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and name.startswith(blocks)]

    def embedding_layers(self, model: nn.Module) -> list[str]:
        return []

    # --- inputs and outputs ------------------------------------------------------------------------
    def input_names(self, tokenizer=None) -> tuple[str, ...]:
        return ("pixel_values",)

    def image_shape(self) -> tuple[int, int, int]:
        size = self.config.image_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return self.config.num_channels, height, width

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = model(pixel_values=batch["pixel_values"])
        return out.logits if hasattr(out, "logits") else out.last_hidden_state

    def forward_tokens(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> int:
        """Tokens entering the first block: the patches plus CLS."""
        vit = model.vit if hasattr(model, "vit") else model
        return vit.embeddings.position_embeddings.shape[1]

    def token_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Every patch is real: one flag per image."""
        return torch.ones(len(batch["pixel_values"]), dtype=torch.bool)

    def dummy_inputs(self, handle, batch: int = 2) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.randn(batch, *self.image_shape(), generator=torch.Generator().manual_seed(0))}

    def dynamic_axes(self, input_names) -> dict[str, dict[int, str]]:
        return {name: {0: "batch"} for name in (*input_names, *self.output_names)}

    # --- data ----------------------------------------------------------------------------------------
    def images(self, handle_or_processor, path, part: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Preprocessed ``pixel_values`` and labels of an ImageFolder directory or IDX data (``part``:
        "calibration" or "evaluation"; see calibrators.images.load_labelled_images)."""
        from calibrators.images import load_labelled_images

        processor = getattr(handle_or_processor, "tokenizer", handle_or_processor)
        return load_labelled_images(path, processor, self.config.num_channels, self.config.label2id, part)

    def calibration(self, handle, calib_data, recipe) -> tuple[list[dict], list[dict], dict]:
        """Batches of calibration images, the batches the output error is measured on, and a record."""
        if calib_data is None:
            raise CompressorError("a Vision Transformer needs --calib-data: an ImageFolder directory (one folder "
                                  "per class) or IDX image files")
        images, _ = self.images(handle, calib_data, "calibration")
        if recipe.calib_samples < len(images):
            keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(recipe.seed))[: recipe.calib_samples]
            images = images[keep.sort().values]
        batches = [{"pixel_values": chunk} for chunk in images.split(recipe.batch_size)]
        sensitivity = [{"pixel_values": chunk} for chunk in images[: recipe.sensitivity_samples].split(recipe.batch_size)]
        info = {"data": str(calib_data), "default": False, "samples": len(images),
                "description": f"{len(images)} images from `{calib_data}`"}
        return batches, sensitivity, info
