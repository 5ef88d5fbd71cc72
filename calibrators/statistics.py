"""Per-layer input statistics, accumulated batch by batch from [tokens, features] inputs."""
from __future__ import annotations

import torch


class TokenSampler:
    """Keeps per-channel |x| maxima over all tokens and a uniform random sample of token rows."""

    def __init__(self, limit: int, seed: int):
        self.limit, self.generator = limit, torch.Generator().manual_seed(seed)
        self.amax: dict[str, torch.Tensor] = {}
        self.rows: dict[str, list[torch.Tensor]] = {}
        self.seen: dict[str, int] = {}

    def __call__(self, name: str, x: torch.Tensor) -> None:
        amax = x.abs().amax(dim=0)
        self.amax[name] = torch.maximum(self.amax[name], amax) if name in self.amax else amax
        self.rows.setdefault(name, []).append(x[torch.rand(len(x), generator=self.generator) < 0.5])
        self.seen[name] = self.seen.get(name, 0) + len(x)

    def sample(self, name: str) -> torch.Tensor:
        rows = torch.cat(self.rows[name])
        if len(rows) > self.limit:
            rows = rows[torch.randperm(len(rows), generator=self.generator)[: self.limit]]
            self.rows[name] = [rows]  # later calls see the same sample
        return rows

    def forget(self, name: str) -> None:
        for table in (self.amax, self.rows, self.seen):
            table.pop(name, None)


class HessianAccumulator:
    """H = 2/n · Σ xᵀx over the tokens seen (float64 [in, in]), the second moment GPTQ weighs errors by."""

    def __init__(self):
        self.hessians: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def __call__(self, name: str, x: torch.Tensor) -> None:
        if len(x) == 0:
            return
        x = x.double()
        seen = self.counts.get(name, 0)
        total = seen + len(x)
        h = self.hessians.get(name)
        if h is None:
            h = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
        # A running mean rather than a running sum: the magnitude stays that of one token's xᵀx.
        h.mul_(seen / total).addmm_(x.T, x, alpha=2.0 / total)
        self.hessians[name], self.counts[name] = h, total

    def forget(self, name: str) -> None:
        self.hessians.pop(name, None)
        self.counts.pop(name, None)
