"""Run an exported encoder in ONNX Runtime: embeddings for evaluation, and timed runs for latency."""
from __future__ import annotations

import time

import numpy as np
import torch

from calibrators.data import batches


def onnx_embed(session, handle, sentences: list[str], batch_size: int = 64, max_length: int = 128) -> np.ndarray:
    """Mean-pooled, normalised embeddings computed by the ONNX model (tokenised by ``handle``)."""
    out = []
    for chunk in batches(sentences, batch_size):
        batch = handle.tokenize(chunk, max_length)
        hidden = session.run(None, {k: v.numpy() for k, v in batch.items()})[0]
        out.append(handle.adapter.pool(torch.from_numpy(hidden), batch).numpy())
    return np.concatenate(out)


def latency_feeds(input_names: list[str], batch: int, length: int, vocab: int = 30000, seed: int = 0) -> dict:
    """Full-length inputs of real token ids: no padding, so every model does the same work."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name in input_names:
        if name == "input_ids":
            feeds[name] = rng.integers(1000, vocab, (batch, length)).astype(np.int64)
        elif name == "attention_mask":
            feeds[name] = np.ones((batch, length), np.int64)
        else:
            feeds[name] = np.zeros((batch, length), np.int64)
    return feeds


def median_latencies(sessions: dict, feeds: dict, warmup: int = 3, repeats: int = 15) -> dict[str, float]:
    """Median seconds per run for each session, interleaving models so drift hits all alike."""
    for session in sessions.values():
        for _ in range(warmup):
            session.run(None, feeds)
    times = {name: [] for name in sessions}
    for _ in range(repeats):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds)
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in times.items()}
