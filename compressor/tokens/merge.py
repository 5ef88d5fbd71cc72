"""Token merging by bipartite soft matching (ToMe, Bolya et al. 2023), written with the operators an ONNX
graph has: TopK (argsort), Gather, and a one-hot MatMul that adds each merged token into its
destination. Never a "mean" reduction: a merged token is the size-weighted sum of its parts divided by its
new size. (The one-hot product replaces ScatterElements with ``add``, the same sums: ONNX Runtime's CPU
scatter goes element by element and is the slower of the two; see docs/results.md, ToMe on the MNIST ViT.)

Tokens alternate between two sets, A (even positions) and B (odd). Each A token's most similar B token
(cosine of the metric, usually the attention keys) is its candidate destination; the r A tokens with the
most similar candidates are added into them, the rest of A is kept. The output holds the kept A tokens in
their original order, then every B token, so the first token (CLS) stays first.

Protected tokens (the first ``protected`` positions: CLS, a distillation token) are never merged, neither as
source nor as destination. With a padding mask, a real token and a padding token never meet: padding
merges only into padding, and first, since merging it costs nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

FORBIDDEN = -1e4  # below any cosine: a pair that must not merge
PADDING_FIRST = 2.0  # above any cosine: padding pairs merge before real ones


@dataclass
class MergePlan:
    """Indices into the A tokens ([batch, k, 1] each): which are kept, which merge, and their B destinations."""

    kept: torch.Tensor
    merged: torch.Tensor
    destination: torch.Tensor


def bipartite_soft_matching(metric: torch.Tensor, r: int, protected: int = 1,
                            mask: torch.Tensor | None = None) -> MergePlan:
    """Plan merging ``r`` of the tokens of ``metric`` [batch, tokens, channels]; ``mask`` [batch, tokens]
    marks real tokens (True) against padding. ``r`` is at most the number of unprotected A tokens."""
    metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    if mask is None:
        return _match_unprotected(metric, r, protected)
    a, b = _alternate(metric, 0), _alternate(metric, 1)
    scores = a @ b.transpose(-1, -2)
    tokens = metric.shape[1]
    position_a, position_b = _positions(tokens, 0, metric.device), _positions(tokens, 1, metric.device)
    forbidden = (position_a < protected)[:, None] | (position_b < protected)[None, :]
    scores = scores.masked_fill(forbidden, FORBIDDEN)
    mask_a, mask_b = mask[:, ::2].bool(), mask[:, 1::2].bool()
    scores = torch.where(mask_a[:, :, None] == mask_b[:, None, :], scores, torch.full_like(scores, FORBIDDEN))
    padding = (~mask_a)[:, :, None] & (~mask_b)[:, None, :] & ~forbidden
    scores = torch.where(padding, torch.full_like(scores, PADDING_FIRST), scores)
    return _plan(*scores.max(dim=-1), r)


def _positions(tokens, first: int, device) -> torch.Tensor:
    """The positions ``first``, ``first + 2``, ... below ``tokens``: a Range times 2 plus ``first``, not a
    Range with step 2, which ONNX Runtime's optimizer turns into a strided Slice, slower on these rows than
    a Gather."""
    return torch.arange((tokens - first + 1) // 2, device=device) * 2 + first


def _alternate(x: torch.Tensor, first: int) -> torch.Tensor:
    """Every second token of ``x`` from ``first`` on."""
    return x.index_select(1, _positions(x.shape[1], first, x.device))


def _plan(best: torch.Tensor, best_index: torch.Tensor, r, skip_a: int = 0, skip_b: int = 0) -> MergePlan:
    """The r A tokens with the most similar partners merge; the rest stay, in their original order. ``best``
    and ``best_index`` [batch, A] leave out the first ``skip_a`` A and ``skip_b`` B tokens, which are kept."""
    order = best.argsort(dim=-1, descending=True)[..., None] + skip_a
    merged, kept = order[:, :r], order[:, r:]
    if skip_a:
        fixed = torch.arange(skip_a, device=best.device)[None, :, None].expand(best.shape[0], -1, -1)
        kept = torch.cat([fixed, kept], dim=1)
    kept = kept.sort(dim=1).values  # keep the original order (CLS first)
    return MergePlan(kept, merged, (best_index + skip_b)[..., None].gather(1, merged - skip_a))


def _match_unprotected(metric: torch.Tensor, r: int, protected: int) -> MergePlan:
    """Without padding, protected tokens are simply left out of the matching: the first (protected + 1) // 2
    A tokens and protected // 2 B tokens. (The same plan as forbidding their scores, without a masking
    pass over every score.)"""
    skip_a, skip_b = (protected + 1) // 2, protected // 2
    a, b = _alternate(metric, 2 * skip_a), _alternate(metric, 2 * skip_b + 1)
    return _plan(*(a @ b.transpose(-1, -2)).max(dim=-1), r, skip_a, skip_b)


def limit_merges(r: int, tokens, protected: int = 0):
    """r, at most the unprotected tokens of set A. A count traced in an ONNX export stays dynamic (a
    tensor), so a text graph clamps r to each input's own length."""
    available = (tokens + 1) // 2 - (protected + 1) // 2
    if isinstance(available, int):
        return max(0, min(r, available))
    return torch.clamp(available, min=0, max=r)


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, i]]`` [batch, k, channels] for ``x`` [batch, tokens, channels] and ``index`` [batch, k]:
    one Gather over the flattened rows, where GatherElements would need an index as large as its output."""
    batch, tokens = x.shape[:2]
    offsets = torch.arange(batch, device=x.device)[:, None] * tokens
    return x.reshape(-1, x.shape[-1])[index + offsets]


def merge_tokens(plan: MergePlan, x: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge ``x`` [batch, tokens, channels] whose tokens stand for ``size`` [batch, tokens, 1] original
    tokens each: a merged token is the size-weighted mean of its parts. Returns (x, size) with r fewer tokens."""
    batch, tokens = x.shape[:2]
    kept = plan.kept[..., 0] * 2  # positions in x: A token i is token 2i, B token j is token 2j + 1
    moved = plan.merged[..., 0] * 2
    rows = torch.cat([kept, _positions(tokens, 1, x.device).expand(batch, -1)], dim=1)  # the output: kept A tokens, then every B token
    out, out_size = gather_rows(x, rows), gather_rows(size, rows)
    moved_x, moved_size = gather_rows(x, moved), gather_rows(size, moved)
    slots = torch.arange(rows.shape[1], device=x.device)
    onehot = ((plan.destination[..., 0] + kept.shape[1])[:, None, :] == slots[None, :, None]).to(x.dtype)
    new_size = out_size + onehot @ moved_size
    return (out * out_size + onehot @ (moved_x * moved_size)) / new_size, new_size


def merge_mask(plan: MergePlan, mask: torch.Tensor) -> torch.Tensor:
    """The padding mask after merging (a token only ever merges into one of its own kind)."""
    return torch.cat([mask[:, ::2].gather(1, plan.kept[..., 0]), mask[:, 1::2]], dim=1)


def merge_positions(plan: MergePlan, tokens: int, source: torch.Tensor) -> torch.Tensor:
    """Where each original token is after the merge: ``source`` [batch, original] holds each original token's
    index among the ``tokens`` current ones; returns its index afterwards."""
    batch = source.shape[0]
    count_a = (tokens + 1) // 2
    count_b = tokens // 2
    kept = plan.kept[..., 0]
    r = plan.merged.shape[1]
    # new index of each A token: kept ones in order, merged ones wherever their destination went
    new_a = torch.zeros(batch, count_a, dtype=torch.long, device=source.device)
    new_a = new_a.scatter(1, kept, torch.arange(kept.shape[1], device=source.device).expand(batch, -1))
    new_a = new_a.scatter(1, plan.merged[..., 0], plan.destination[..., 0] + (count_a - r))
    new_b = (torch.arange(count_b, device=source.device) + (count_a - r)).expand(batch, -1)
    new_index = torch.cat([new_a, new_b], dim=1)
    # current token t sits at t // 2 in A (t even) or in B (t odd)
    t = torch.arange(tokens, device=source.device)
    slot = (t % 2) * count_a + t // 2
    return new_index.gather(1, slot.expand(batch, -1)).gather(1, source)


def unmerge_tokens(x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Every original token takes the value of the token it was merged into: [batch, original, channels]."""
    return gather_rows(x, source)


def proportional_attention_bias(size: torch.Tensor) -> torch.Tensor:
    """log(size) per key, [batch, 1, 1, tokens]: a merged key counts as many times as the tokens it holds."""
    return size[..., 0].log()[:, None, None, :]
