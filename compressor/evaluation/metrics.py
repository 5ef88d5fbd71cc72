"""Accuracy and fidelity metrics on embeddings and hidden states."""
from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr


def sts_spearman(first: np.ndarray, second: np.ndarray, gold: list[float]) -> float:
    """Spearman ×100 between gold scores and cosine similarity of L2-normalised embedding pairs."""
    cosine = (first * second).sum(axis=1)
    return float(spearmanr(cosine, np.asarray(gold)).correlation * 100.0)


def embedding_fidelity(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Cosine between each normalised embedding and the original's: mean and worst case."""
    cosine = (reference * candidate).sum(axis=1) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1) + 1e-12
    )
    return {"cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min())}


def relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    return float(np.linalg.norm(candidate - reference) / max(np.linalg.norm(reference), 1e-12))
