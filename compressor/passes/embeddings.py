"""Quantize the embedding tables an adapter names (vocabulary and position tables dominate the size
of small encoders; see docs/results.md, low-bit formats)."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from compressor.numerics.formats import FLOAT, is_float_scheme, make_weight_format
from compressor.passes.base import PASSES, Pass, PassConfig
from compressor.passes.plan import set_module
from compressor.passes.results import QuantizedEmbeddings
from compressor.quant_embedding import QuantEmbedding

MIN_ROWS = 16  # tiny tables (token types) are not worth their scales


def quantize_embeddings(model: nn.Module, names: list[str], fmt: str, group_size: int = 128, symmetric: bool = True) -> list[dict]:
    records = []
    for name in names:
        embedding = model.get_submodule(name)
        if not isinstance(embedding, nn.Embedding) or embedding.num_embeddings < MIN_ROWS:
            continue
        block = make_weight_format(fmt, group_size, symmetric).group_size or 1
        if embedding.embedding_dim % block:  # the row length must split into whole blocks
            records.append({"name": name, "format": FLOAT, "rows": embedding.num_embeddings, "bits": 32.0,
                            "error": 0.0, "note": f"kept in float: rows of {embedding.embedding_dim} do not split "
                                                  f"into {fmt} blocks of {block}"})
            continue
        layer = QuantEmbedding.from_embedding(embedding, fmt, group_size, symmetric)
        with torch.no_grad():
            reference = embedding.weight.float()
            error = float((layer.weight - reference).pow(2).sum() / reference.pow(2).sum().clamp_min(1e-12))
        set_module(model, name, layer)
        bits = 8 * layer.storage_bytes() / embedding.weight.numel()
        records.append({"name": name, "format": fmt, "rows": embedding.num_embeddings, "bits": bits, "error": error})
    return records


# --- the pass -----------------------------------------------------------------------------------


class EmbeddingsConfig(PassConfig):
    format: Literal["int8", "int4", "nvfp4", "mxfp4"] = "int8"
    group_size: int = Field(128, ge=2, multiple_of=2)  # INT4 groups
    symmetric: bool = True


@PASSES.register("embeddings")
class EmbeddingsPass(Pass):
    """Stores the adapter's embedding tables (vocabulary, positions) row by row in a weight format."""

    Config = EmbeddingsConfig
    stage = "refine"
    produces = (QuantizedEmbeddings,)

    def apply(self, context) -> dict:
        cfg, model = self.config, context.handle.model
        tables = quantize_embeddings(model, context.handle.adapter.embedding_layers(model), cfg.format,
                                     cfg.group_size, cfg.symmetric)
        for table in tables:
            context.calibration.invalidate(table["name"])
        context.results.put(QuantizedEmbeddings([t for t in tables if not is_float_scheme(t["format"])]))
        return {"tables": tables}
