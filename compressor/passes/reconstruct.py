"""Regularized least-squares reconstruction of a Linear after the units feeding it were removed.

The pruned layer sees fewer input features. Refit its weight and bias so that, on calibration tokens,
it reproduces what the original layer computed from the original inputs. A plain least-squares fit
on a few hundred sentences overfits (it learns the calibration set), so the fit is pulled towards the
pruned weight (ridge, strength ``alpha`` times the mean input energy) and ``alpha`` is chosen on
tokens the fit did not see; when no ``alpha`` beats leaving the layer as it is there (by 0.1%), it is
left so.
Everything works on Gram statistics, so no token is kept in memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


MIN_GAIN = 1e-3  # a refit must lower the check error by this share to be used (not rounding noise)


@dataclass
class GramStats:
    """Σ x̃ x̃ᵀ, Σ x̃ yᵀ and Σ ‖y‖² over tokens, with x̃ = [x, 1] (the 1 fits the bias)."""

    xx: torch.Tensor | None = None
    xy: torch.Tensor | None = None
    yy: float = 0.0
    tokens: int = field(default=0)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
        y = y.double()
        if self.xx is None:
            self.xx, self.xy = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64), torch.zeros(
                x.shape[1], y.shape[1], dtype=torch.float64)
        self.xx += x.T @ x
        self.xy += x.T @ y
        self.yy += float(y.pow(2).sum())
        self.tokens += len(x)

    def __add__(self, other: "GramStats") -> "GramStats":
        return GramStats(self.xx + other.xx, self.xy + other.xy, self.yy + other.yy, self.tokens + other.tokens)


def relative_error(stats: GramStats, weight: torch.Tensor) -> float:
    """‖Y − X̃ Wᵀ‖² / ‖Y‖² for ``weight`` = [W, b] ([out, in + 1])."""
    w = weight.double()
    residual = (w @ stats.xx * w).sum() - 2 * (w * stats.xy.T).sum() + stats.yy
    return float(residual / max(stats.yy, 1e-30))


def ridge_fit(stats: GramStats, start: torch.Tensor, alpha: float) -> torch.Tensor:
    """argmin ‖Y − X̃ Wᵀ‖² + λ‖W − W₀‖² over the weight columns (the bias is not pulled), with
    λ = ``alpha`` × the mean input energy Σx²/features."""
    features = stats.xx.shape[0] - 1
    lam = alpha * float(stats.xx.diagonal()[:features].mean())
    pull = torch.full((features + 1,), lam, dtype=torch.float64)
    pull[-1] = 0.0
    lhs = stats.xx + torch.diag(pull)
    rhs = stats.xy + pull[:, None] * start.double().T
    return torch.linalg.solve(lhs, rhs).T.float()


def reconstruct(fit: GramStats, check: GramStats, start: torch.Tensor, alphas: list[float]) -> tuple[torch.Tensor | None, dict]:
    """The refit [W, b] (or None to keep ``start``) and a report. ``alpha`` is chosen by the error on
    ``check``; the chosen fit is then redone on all tokens."""
    before = relative_error(check, start)
    errors = {alpha: relative_error(check, ridge_fit(fit, start, alpha)) for alpha in alphas}
    best = min(errors, key=errors.get) if errors else None
    report = {"check_error_before": before, "check_errors": {str(a): e for a, e in errors.items()}}
    if best is None or errors[best] >= before * (1 - MIN_GAIN):
        report["alpha"] = None
        return None, report
    report["alpha"], report["check_error_after"] = best, errors[best]
    return ridge_fit(fit + check, start, best), report
