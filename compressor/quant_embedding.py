"""An embedding table stored in a low-precision weight format, one row per token.

Rows are quantized like Linear weight rows (per-row INT8 scales, or 4-bit blocks along the hidden
dimension). INT8 tables look up int8 rows and their scales, so an exported graph keeps the table
in int8; 4-bit tables are expanded to float once and cached.
"""
from __future__ import annotations

import torch
from torch import nn

from compressor.numerics.formats import make_weight_format
from compressor.quant_linear import MODULE_KINDS, PackedWeight


@MODULE_KINDS.register("quant_embedding")
class QuantEmbedding(PackedWeight):
    def __init__(self, num_embeddings: int, embedding_dim: int, fmt: str, padding_idx: int | None = None,
                 group_size: int = 128, symmetric: bool = True):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.format_name = fmt
        self.register_packed_weight(make_weight_format(fmt, group_size, symmetric), num_embeddings, embedding_dim)

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, fmt: str, group_size: int = 128, symmetric: bool = True):
        layer = cls(embedding.num_embeddings, embedding.embedding_dim, fmt, embedding.padding_idx, group_size, symmetric)
        layer.store_weight(embedding.weight.detach().float())
        return layer

    def checkpoint_entry(self) -> dict:
        fmt = self.format.describe()
        return {"module": self.registered_name, "num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                "format": self.format_name, "padding_idx": self.padding_idx,
                "group_size": fmt.get("group_size", 128), "symmetric": fmt.get("symmetric", True)}

    @classmethod
    def from_entry(cls, entry: dict) -> "QuantEmbedding":
        return cls(entry["num_embeddings"], entry["embedding_dim"], entry["format"], entry["padding_idx"],
                   entry["group_size"], entry["symmetric"])

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized table (transformers reads ``.weight`` of input embeddings for dtype/device)."""
        return self.dequantized_weight()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.format.gathers_rows:  # e.g. INT8: look up int8 rows and their scales, no float table
            return self.format.gather_rows(self.stored_weight(), ids)
        return nn.functional.embedding(ids, self.weight)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.format_name}"
