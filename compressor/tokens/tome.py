"""ToMe patches for transformers encoders: the model's forward is replaced by one that runs the same modules
block by block and merges ``r[i]`` tokens in block ``i``, between attention and the MLP (compressor/tokens/
merge.py). Attention is size-weighted: a merged key counts as the tokens it holds. (Diffusion Transformers
merge around each block's attention and MLP instead: compressor/tokens/dit_merge.py.)

- Vision Transformers (``ViTForImageClassification``/``ViTModel``, pre-norm blocks): CLS is protected, and
  the logits come from it as before. Token counts are fixed per block, so the ONNX graph's shapes are static.
  They may also merge on the patch embeddings, before the first block (``embeddings``), matched on the
  embeddings themselves: the first block's attention is the most expensive one, and on images with large
  uniform areas many of its tokens differ only by their position embedding.
- BERT-family text encoders (post-norm blocks): merging respects the attention mask, and the last hidden
  state is unmerged back to the input length (each token takes its merged token's value), so mean pooling
  over the mask weights every merged token by its size, and ``last_hidden_state`` keeps its shape.

The blocks' Linear modules are called as they are, so a quantized model merges too.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from compressor.errors import CompressorError
from compressor.registry import Registry
from compressor.tokens.merge import (
    bipartite_soft_matching,
    limit_merges,
    merge_mask,
    merge_positions,
    merge_tokens,
    proportional_attention_bias,
    unmerge_tokens,
)

MASKED = -1e9  # attention bias of padding keys

# TokenMerging.patch (what an adapter declares) → patch(model, layout, schedule, protected, embeddings)
TOKEN_MERGING_PATCHES = Registry("token-merging patch")


def _attend(q_proj, k_proj, v_proj, head_dim: int, x: torch.Tensor, bias: torch.Tensor | float,
            size: torch.Tensor | None = None):
    """Multi-head attention of ``x`` with an additive key ``bias``, and with each key counted ``size``
    [batch, tokens, 1] times when given. Returns (context, the keys of all heads side by side: the matching
    metric, with no reduction over heads, which loses less accuracy than their mean;
    benchmarks/minilm_tome.py)."""
    batch, tokens = x.shape[:2]
    shape = (batch, tokens, -1, head_dim)
    keys = k_proj(x)
    q, k, v = q_proj(x).view(shape), keys.view(shape), v_proj(x).view(shape)
    if size is not None:
        # softmax(s + log size) without a pass over every score: each head's queries gain a column of ones
        # and its keys a column of log size (times sqrt(head_dim), which the score scaling divides out).
        column = (size.log() * head_dim ** 0.5)[:, :, None, :].expand(-1, -1, k.shape[2], -1)
        q, k = torch.cat([q, torch.ones_like(column)], dim=-1), torch.cat([k, column], dim=-1)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) * head_dim ** -0.5 + bias, dim=-1)
    context = (weights @ v).transpose(1, 2).reshape(batch, tokens, -1)
    return context, keys


# --- Vision Transformers --------------------------------------------------------------------------


def _vit_block(layer: nn.Module, x, size, r: int, protected: int, merged_before: bool):
    attention = layer.attention
    h = layer.layernorm_before(x)
    # Until a block has merged, every size is 1: plain attention.
    context, metric = _attend(attention.q_proj, attention.k_proj, attention.v_proj, attention.head_dim, h, 0.0,
                              size if merged_before else None)
    x = x + attention.o_proj(context)
    if r > 0:
        x, size = merge_tokens(bipartite_soft_matching(metric, r, protected), x, size)
    return x + layer.mlp(layer.layernorm_after(x)), size


def _vit_forward(vit: nn.Module, classifier: nn.Module | None, schedule: list[int], protected: int,
                 embeddings: int = 0):
    """The forward of ``vit`` (embeddings, blocks, final norm) with merging, then ``classifier`` on CLS
    (None: the encoder's output is the model's)."""
    # The token count is fixed by the image size: r is a plain number in every block (static ONNX shapes).
    tokens = vit.embeddings.position_embeddings.shape[1]
    embeddings = limit_merges(embeddings, tokens, protected)
    tokens, limited = tokens - embeddings, []
    for r in schedule:
        limited.append(limit_merges(r, tokens, protected))
        tokens -= limited[-1]
    schedule = limited

    def forward(pixel_values: torch.Tensor, **_ignored):
        x = vit.embeddings(pixel_values.to(vit.embeddings.patch_embeddings.projection.weight.dtype))
        size = torch.ones_like(x[..., :1])
        if embeddings:
            x, size = merge_tokens(bipartite_soft_matching(x, embeddings, protected), x, size)
        for index, (layer, r) in enumerate(zip(vit.layers, schedule)):
            x, size = _vit_block(layer, x, size, r, protected, bool(embeddings) or any(schedule[:index]))
        hidden = vit.layernorm(x)
        if classifier is None:
            return SimpleNamespace(last_hidden_state=hidden, pooler_output=None)
        return SimpleNamespace(logits=classifier(hidden[:, 0, :]))

    return forward


# --- BERT-family text encoders --------------------------------------------------------------------


def _bert_block(layer: nn.Module, x, size, mask, source, r: int, protected: int):
    attention, output = layer.attention, layer.output
    bias = torch.where(mask[:, None, None, :], proportional_attention_bias(size),
                       torch.full_like(proportional_attention_bias(size), MASKED))
    context, metric = _attend(attention.self.query, attention.self.key, attention.self.value,
                              attention.self.attention_head_size, x, bias)
    h = attention.output.LayerNorm(attention.output.dense(context) + x)
    tokens = h.shape[1]
    r = limit_merges(r, tokens, protected)
    if not isinstance(r, int) or r > 0:
        plan = bipartite_soft_matching(metric, r, protected, mask)
        h, size = merge_tokens(plan, h, size)
        source = merge_positions(plan, tokens, source)
        mask = merge_mask(plan, mask)
    return output.LayerNorm(output.dense(layer.intermediate(h)) + h), size, mask, source


def _bert_forward(model: nn.Module, projection: nn.Module | None, schedule: list[int], protected: int):
    """The forward of a BERT-family encoder with merging; ``projection`` maps the embeddings to the hidden
    size first (ELECTRA)."""
    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, **_ignored):
        x = model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        if projection is not None:
            x = projection(x)
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        size = torch.ones_like(x[..., :1])
        source = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        for layer, r in zip(model.encoder.layer, schedule):
            x, size, mask, source = _bert_block(layer, x, size, mask, source, r, protected)
        return SimpleNamespace(last_hidden_state=unmerge_tokens(x, source), pooler_output=None)

    return forward


# --- applying a schedule -------------------------------------------------------------------------


def _restore_forward(model: nn.Module) -> None:
    if "forward" in model.__dict__:
        del model.forward  # back to the class's forward


@TOKEN_MERGING_PATCHES.register("vit")
def _patch_vit(model: nn.Module, layout, schedule: list[int], protected: int, embeddings: int) -> None:
    _restore_forward(model)
    if any(schedule) or embeddings:
        encoder = model.get_submodule(layout.encoder)
        classifier = model.get_submodule(layout.head) if layout.head else None
        model.forward = _vit_forward(encoder, classifier, list(schedule), protected, embeddings)


@TOKEN_MERGING_PATCHES.register("bert")
def _patch_bert(model: nn.Module, layout, schedule: list[int], protected: int, embeddings: int) -> None:
    _restore_forward(model)
    if any(schedule):
        projection = model.get_submodule(layout.projection) if layout.projection else None
        model.forward = _bert_forward(model, projection, list(schedule), protected)


@TOKEN_MERGING_PATCHES.register("dit")
def _patch_dit(model: nn.Module, layout, schedule: list[int], protected: int, embeddings: int) -> None:
    from compressor.tokens.dit_merge import patch_dit_token_merging

    patch_dit_token_merging(model, schedule)


def patch_token_merging(model: nn.Module, adapter, schedule: list[int], protected: int = 1, embeddings: int = 0) -> None:
    """Make ``model`` merge ``schedule[i]`` tokens in block i (0 = none), and ``embeddings`` tokens on the
    patch embeddings before the first block (where the adapter says its patch embeddings may merge); an
    empty schedule restores it. ``adapter`` declares which patch fits the model and where its modules are."""
    layout = adapter.require("token_merging", by="token merging (tome)")
    blocks = len(adapter.blocks(model))
    if len(schedule) != blocks:
        raise CompressorError(f"a ToMe schedule needs one r per block ({blocks}), got {len(schedule)}")
    if embeddings and not layout.patch_embeddings:
        raise CompressorError("merging on the embeddings is for Vision Transformers only "
                              f"({type(model).__name__} merges inside its blocks)")
    TOKEN_MERGING_PATCHES.lookup(layout.patch)(model, layout, schedule, protected, embeddings)


def tome_schedule(r: float, blocks: int, kind: str = "constant") -> list[int]:
    """Tokens merged per block: ``constant`` merges r in every block; ``decreasing`` goes linearly from 2r
    in the first block to 0 in the last (the same total), merging early where tokens are most redundant
    (r may be a half: 2r is whole)."""
    if kind == "constant":
        return [int(r)] * blocks
    if kind == "decreasing":
        if blocks == 1:
            return [round(r)]
        return [round(2 * r * (blocks - 1 - i) / (blocks - 1)) for i in range(blocks)]
    raise CompressorError(f"unknown ToMe schedule {kind!r}; choose constant or decreasing")
