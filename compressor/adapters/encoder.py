"""BERT-family text encoders (BERT, RoBERTa, XLM-R, ELECTRA): inputs, eligible layers, outputs."""
from __future__ import annotations

import torch
from torch import nn


class EncoderAdapter:
    kind = "encoder"
    model_types = ("bert", "roberta", "xlm-roberta", "electra", "camembert")
    output_names = ("last_hidden_state",)
    keep_float: tuple[str, ...] = ()

    @classmethod
    def supports(cls, config) -> bool:
        return getattr(config, "model_type", None) in cls.model_types

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
