"""An embedding table stored in a low-precision weight format, one row per token.

Rows are quantized like Linear weight rows (per-row INT8 scales, or 4-bit blocks along the hidden
dimension). INT8 tables look up int8 rows and their scales, so an exported graph keeps the table
in int8; 4-bit tables are expanded to float once and cached.
"""
from __future__ import annotations

import torch
from torch import nn

from compressor.numerics.formats import make_weight_format

PREFIX = "weight_"


class QuantEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, fmt: str, padding_idx: int | None = None,
                 group_size: int = 128, symmetric: bool = True):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.format_name = fmt
        self.format = make_weight_format(fmt, group_size, symmetric)
        for key, value in self.format.quantize(torch.zeros(num_embeddings, embedding_dim)).items():
            self.register_buffer(PREFIX + key, value)
        self._table: torch.Tensor | None = None

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, fmt: str, group_size: int = 128, symmetric: bool = True):
        layer = cls(embedding.num_embeddings, embedding.embedding_dim, fmt, embedding.padding_idx, group_size, symmetric)
        for key, value in layer.format.quantize(embedding.weight.detach().float()).items():
            getattr(layer, PREFIX + key).copy_(value)
        return layer

    def stored(self) -> dict[str, torch.Tensor]:
        n = len(PREFIX)
        return {k[n:]: v for k, v in self.named_buffers(recurse=False) if k.startswith(PREFIX)}

    def _load_from_state_dict(self, *args, **kwargs):
        self._table = None
        super()._load_from_state_dict(*args, **kwargs)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized table (transformers reads ``.weight`` of input embeddings for dtype/device)."""
        if self._table is None:
            self._table = self.format.dequantize(self.stored())
        return self._table

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.format_name == "int8":
            return self.weight_values[ids].float() * self.weight_scale[ids].unsqueeze(-1)
        return nn.functional.embedding(ids, self.weight)

    def storage_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.stored().values())

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.format_name}"
