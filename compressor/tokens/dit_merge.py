"""Token merging inside Diffusion Transformer blocks (ToMeSD-style): the tokens entering a block's attention
and its MLP are merged (compressor/tokens/merge.py), the module runs on fewer tokens, and its output is
unmerged back, each token taking its merged token's value. The residual stream, the norms and the adaLN
conditioning (shift, scale, gate) stay at full resolution, untouched."""
from __future__ import annotations

import torch
from torch import nn

from compressor.tokens.merge import bipartite_soft_matching, limit_merges, merge_positions, merge_tokens, unmerge_tokens

MERGED_MODULES = ("attn1", "attn2", "ff")  # self-attention, cross-attention (its queries), MLP


def _merged(original, r: int):
    def forward(hidden_states: torch.Tensor, *args, **kwargs):
        batch, tokens = hidden_states.shape[:2]
        plan = bipartite_soft_matching(hidden_states, limit_merges(r, tokens), protected=0)
        merged, _ = merge_tokens(plan, hidden_states, torch.ones_like(hidden_states[..., :1]))
        source = merge_positions(plan, tokens, torch.arange(tokens, device=hidden_states.device).expand(batch, -1))
        return unmerge_tokens(original(merged, *args, **kwargs), source)

    return forward


def patch_dit_token_merging(model: nn.Module, schedule: list[int]) -> None:
    """Merge ``schedule[i]`` of the latent tokens around block i's attention and MLP (0: none)."""
    for block, r in zip(model.transformer_blocks, schedule):
        for name in MERGED_MODULES:
            module = getattr(block, name, None)
            if module is None:
                continue
            if "forward" in module.__dict__:
                del module.forward  # back to the class's forward
            if r:
                module.forward = _merged(module.forward, r)
