"""BERT-family text encoders (BERT, RoBERTa, XLM-R, ELECTRA): inputs, eligible layers, outputs."""
from __future__ import annotations

import torch
from torch import nn


class EncoderAdapter:
    model_types = ("bert", "roberta", "xlm-roberta", "electra", "camembert")
    output_names = ("last_hidden_state",)

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

    def dummy_inputs(self, tokenizer) -> dict[str, torch.Tensor]:
        return self.tokenize(tokenizer, ["a short example", "and a second, slightly longer example sentence"], 32)
