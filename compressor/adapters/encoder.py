"""BERT-family text encoders (BERT, RoBERTa, XLM-R, ELECTRA): loading, inputs, eligible layers, outputs."""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
from torch import nn

from compressor.adapters.base import ADAPTERS, AttentionLayout, Capabilities, ModelAdapter, TokenLayout, TokenMerging
from compressor.errors import CompressorError
from compressor.files import check_safetensors, first_line, load_tokenizer, raw_config, read_config

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


def load_pretrained(model_class, path: Path, **options) -> nn.Module:
    """``model_class.from_pretrained(path)`` offline, with one-line errors for a missing, damaged or
    incomplete weight file (a missing pooler is fine: nothing here uses it)."""
    weights = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
    if not weights:
        raise CompressorError(f"{path} has no weight file (looked for {', '.join(WEIGHT_FILES)})")
    if weights[0].suffix == ".safetensors":
        check_safetensors(weights[0])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, loading = model_class.from_pretrained(path, local_files_only=True, output_loading_info=True, **options)
    except Exception as exc:
        raise CompressorError(f"cannot load weights from {path}: {first_line(exc)}") from None
    missing = [k for k in loading.get("missing_keys", []) if "pooler" not in k]
    if missing:
        raise CompressorError(f"{weights[0]} lacks {len(missing)} weights the architecture needs, e.g. {missing[0]}")
    return model.eval()


@contextlib.contextmanager
def eager_attention(model: nn.Module):
    """transformers' eager attention while tracing: plain MatMul/Softmax, no mask-fixing Where ops."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


@ADAPTERS.register("encoder")
class EncoderAdapter(ModelAdapter):
    description = "bert-family encoders"
    model_types = ("bert", "roberta", "xlm-roberta", "electra", "camembert")
    output_names = ("last_hidden_state",)
    keep_float: tuple[str, ...] = ()

    def __init__(self, directory: Path | None = None, config=None):
        self.directory, self.config = directory, config

    @property
    def capabilities(self) -> Capabilities:
        config = self.config
        heads = config.num_attention_heads
        # ELECTRA projects embeddings narrower than the hidden size up to it before the first block
        projects = getattr(config, "embedding_size", config.hidden_size) != config.hidden_size
        return Capabilities(
            tokens=TokenLayout(protected=1, padded=True),
            attention=AttentionLayout(heads, heads, config.hidden_size // heads),
            prunable=True, pooling=True,
            token_merging=TokenMerging("bert", projection="embeddings_project" if projects else None),
        )

    @classmethod
    def for_directory(cls, path: Path) -> "EncoderAdapter | None":
        if raw_config(path).get("model_type") not in cls.model_types:
            return None
        return cls(path, read_config(path))

    def load(self) -> nn.Module:
        from transformers import AutoModel

        return load_pretrained(AutoModel, self.directory, attn_implementation="sdpa")

    def empty_model(self) -> nn.Module:
        """The architecture with no weights loaded (a compressed checkpoint brings its own)."""
        from transformers import AutoModel

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoModel.from_config(self.config, attn_implementation="sdpa").eval()

    def load_tokenizer(self):
        return load_tokenizer(self.directory)

    # --- the blocks a patching pass (token reduction) rewrites -------------------------------------
    def blocks(self, model: nn.Module) -> list[str]:
        """The transformer blocks in order (module names)."""
        return [name for name, _ in model.named_modules() if name.count(".") == 2 and ".layer." in f".{name}"
                and name.startswith("encoder.")]

    def prunable_groups(self, model: nn.Module) -> list:
        """Each block's attention heads and FFN channels (see compressor.structure)."""
        from compressor.structure import UnitGroup

        groups = []
        for block in self.blocks(model):
            attention = model.get_submodule(f"{block}.attention.self")
            size = attention.attention_head_size
            groups.append(UnitGroup(f"{block}.attention", "heads",
                                    tuple(f"{block}.attention.self.{p}" for p in ("query", "key", "value")),
                                    f"{block}.attention.output.dense", size, f"{block}.attention.self",
                                    (("num_attention_heads", 1), ("all_head_size", size))))
            groups.append(UnitGroup(f"{block}.ffn", "channels", (f"{block}.intermediate.dense",),
                                    f"{block}.output.dense", 1))
        return groups

    def input_names(self, tokenizer) -> tuple[str, ...]:
        names = ["input_ids", "attention_mask"]
        if "token_type_ids" in tokenizer.model_input_names:
            names.append("token_type_ids")
        return tuple(names)

    def tokenize(self, tokenizer, sentences: list[str], max_length: int) -> dict[str, torch.Tensor]:
        encoded = tokenizer(
            sentences, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        return {name: encoded[name] for name in self.input_names(tokenizer)}

    def quantizable_layers(self, model: nn.Module) -> list[str]:
        """Linear layers inside the encoder stack; the pooler and task heads do not feed last_hidden_state."""
        return [
            name
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and ".layer." in f".{name}" and "encoder" in name
        ]

    def embedding_layers(self, model: nn.Module) -> list[str]:
        return [name for name, module in model.named_modules() if isinstance(module, nn.Embedding)]

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch).last_hidden_state

    def forward_tokens(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> int:
        """Tokens entering the first block (padding included)."""
        return batch["input_ids"].shape[1]

    def token_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Which positions are real tokens: padding never reaches a pooled output, so it is not calibrated on."""
        return batch["attention_mask"].bool()

    def pool(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean over real tokens, L2-normalised: the sentence embedding."""
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return torch.nn.functional.normalize(mean, dim=-1)

    def dummy_inputs(self, handle) -> dict[str, torch.Tensor]:
        return self.tokenize(handle.tokenizer, ["a short example", "and a second, slightly longer example sentence"], 32)

    def dynamic_axes(self, input_names) -> dict[str, dict[int, str]]:
        return {name: {0: "batch", 1: "sequence"} for name in (*input_names, *self.output_names)}

    def save_metadata(self, handle, directory) -> None:
        handle.model.config.save_pretrained(directory)
        handle.tokenizer.save_pretrained(directory)

    def export_attention(self, model: nn.Module):
        return eager_attention(model)

    def calibration(self, handle, calib_data, recipe) -> tuple[list[dict], list[dict], dict]:
        """Tokenized calibration batches, the batches the output error is measured on, and a record."""
        from calibrators.data import read_sentences, sample_sentences
        from compressor.data import default_calibration_file

        source = calib_data if calib_data is not None else default_calibration_file()
        sentences = sample_sentences(read_sentences(source), recipe.calib_samples, recipe.seed)
        info = {"data": str(source), "default": calib_data is None, "samples": len(sentences),
                "max_length": recipe.max_length, "description": f"{len(sentences)} sentences from `{source}`"}
        return (self.batches(handle, sentences, recipe),
                self.batches(handle, sentences[: recipe.sensitivity_samples], recipe), info)

    def batches(self, handle, sentences: list[str], recipe) -> list[dict]:
        from calibrators.data import batches

        # Sorting by length keeps padding (wasted compute) low; order does not matter for statistics.
        ordered = sorted(sentences, key=len)
        return [handle.tokenize(chunk, recipe.max_length) for chunk in batches(ordered, recipe.batch_size)]
