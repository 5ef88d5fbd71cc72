"""The factor of a damped inverse Hessian that error-compensating rounding and pruning (GPTQ, GPTVQ,
SparseGPT) move their errors with."""
from __future__ import annotations

import torch

DAMP_RETRIES = 4  # each retry multiplies the damping by 10


def upper_cholesky_of_inverse(h: torch.Tensor, damp: float, report: dict | None = None) -> torch.Tensor:
    """U with H⁻¹ = UᵀU. Damping the diagonal keeps a rank-deficient H (few tokens) invertible."""
    eye = torch.eye(len(h), dtype=h.dtype, device=h.device)
    mean_diag = float(h.diagonal().mean())
    for attempt in range(DAMP_RETRIES + 1):
        try:
            lower = torch.linalg.cholesky(h + eye * (damp * 10**attempt * mean_diag))
            if report is not None:
                report["damp"] = damp * 10**attempt  # what it took: more than asked when H was near singular
            return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)
        except torch.linalg.LinAlgError:
            continue
    raise ValueError(
        f"GPTQ: the Hessian is not positive definite even with damping {damp * 10**DAMP_RETRIES:g} x its mean diagonal"
    )
