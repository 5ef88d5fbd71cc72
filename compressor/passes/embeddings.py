"""Quantize the embedding tables an adapter names (vocabulary and position tables dominate the size
of small encoders: 47 of MiniLM's 91 MB)."""
from __future__ import annotations

import torch
from torch import nn

from compressor.numerics.formats import make_weight_format
from compressor.passes.plan import set_module
from compressor.quant_embedding import QuantEmbedding

MIN_ROWS = 16  # tiny tables (token types) are not worth their scales


def quantize_embeddings(model: nn.Module, names: list[str], fmt: str, group_size: int = 128, symmetric: bool = True) -> list[dict]:
    records = []
    for name in names:
        embedding = model.get_submodule(name)
        if not isinstance(embedding, nn.Embedding) or embedding.num_embeddings < MIN_ROWS:
            continue
        block = make_weight_format(fmt, group_size, symmetric).group_size or 1
        if embedding.embedding_dim % block:
            continue  # the row length must split into whole blocks
        layer = QuantEmbedding.from_embedding(embedding, fmt, group_size, symmetric)
        with torch.no_grad():
            reference = embedding.weight.float()
            error = float((layer.weight - reference).pow(2).sum() / reference.pow(2).sum().clamp_min(1e-12))
        set_module(model, name, layer)
        bits = 8 * layer.storage_bytes() / embedding.weight.numel()
        records.append({"name": name, "format": fmt, "rows": embedding.num_embeddings, "bits": bits, "error": error})
    return records
