"""The held-out STS-B split every MiniLM benchmark uses: calibrate on one half of the dev pairs,
score on the other, so no figure is measured on the sentences a recipe was calibrated on.

The 1,500 dev pairs are shuffled with a fixed seed (the file is ordered by genre, so a plain cut
would calibrate on captions and score on news); the first 750 pairs give the calibration sentences
(both sides of each pair), the last 750 pairs are the evaluation set.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from calibrators.data import SentencePairs, read_sentence_pairs

ROOT = Path(__file__).resolve().parents[1]
STS_DEV = ROOT.parent / "shared" / "data" / "stsb" / "sts-dev.csv"
SPLIT_SEED = 0


def split_sts(path: str | Path = STS_DEV, seed: int = SPLIT_SEED) -> tuple[list[str], SentencePairs]:
    """(calibration sentences from the calibration half, the held-out evaluation pairs)."""
    pairs = read_sentence_pairs(path)
    order = np.random.default_rng(seed).permutation(len(pairs.scores))
    half = len(order) // 2
    calib_rows, eval_rows = order[:half], order[half:]
    calib = [pairs.first[i] for i in calib_rows] + [pairs.second[i] for i in calib_rows]
    held_out = SentencePairs([pairs.first[i] for i in eval_rows], [pairs.second[i] for i in eval_rows],
                             [pairs.scores[i] for i in eval_rows])
    return calib, held_out


def write_sts_tsv(pairs: SentencePairs, path: str | Path) -> Path:
    """The pairs as an STS Benchmark file (genre, file, year, id, score, sentence 1, sentence 2), for
    tools that read evaluation data from a file (``compressor compare --eval-data``)."""
    path = Path(path)
    rows = [f"held-out\tdev\t-\t{i}\t{score}\t{a}\t{b}" for i, (a, b, score) in
            enumerate(zip(pairs.first, pairs.second, pairs.scores))]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path
