"""Calibration and evaluation text: read sentences from plain-text or TSV files and batch them."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from compressor.errors import CompressorError

# STS Benchmark layout: genre, file, year, id, score, sentence 1, sentence 2 (extra columns follow).
STS_SCORE_COLUMN, STS_SENTENCE_COLUMNS = 4, (5, 6)


@dataclass(frozen=True)
class SentencePairs:
    """Sentence pairs with gold similarity scores (STS-style evaluation data)."""

    first: list[str]
    second: list[str]
    scores: list[float]


def _read_numbered_lines(path: str | Path) -> list[tuple[int, str]]:
    """Non-blank lines with their 1-based physical line numbers (for error messages)."""
    path = Path(path)
    if not path.is_file():
        raise CompressorError(f"data file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CompressorError(f"cannot read data file {path}: {exc}") from exc
    lines = [(n, line.rstrip("\r\n")) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise CompressorError(f"data file is empty: {path}")
    return lines


def _read_lines(path: str | Path) -> list[str]:
    return [line for _, line in _read_numbered_lines(path)]


def _is_sts_row(fields: list[str]) -> bool:
    if len(fields) < 7:
        return False
    try:
        float(fields[STS_SCORE_COLUMN])
    except ValueError:
        return False
    return True


def read_sentences(path: str | Path) -> list[str]:
    """Sentences for calibration.

    A ``.tsv``/``.csv`` file in STS layout gives both sentence columns of every row; any other
    tab-separated file gives its last column (the usual "label<TAB>text" shape); a plain file
    gives one sentence per line.
    """
    lines = _read_lines(path)
    rows = [line.split("\t") for line in lines]
    if all(_is_sts_row(r) for r in rows):
        return [r[c].strip() for r in rows for c in STS_SENTENCE_COLUMNS if r[c].strip()]
    if all(len(r) > 1 for r in rows):
        return [r[-1].strip() for r in rows if r[-1].strip()]
    return [line.strip() for line in lines]


def read_sentence_pairs(path: str | Path) -> SentencePairs:
    """STS-style labelled pairs: the STS Benchmark layout, or three columns ``sentence1, sentence2, score``."""
    first, second, scores = [], [], []
    for number, line in _read_numbered_lines(path):
        fields = line.split("\t")
        if _is_sts_row(fields):
            a, b, score = fields[5], fields[6], fields[4]
        elif len(fields) == 3:
            a, b, score = fields
        else:
            raise CompressorError(
                f"{path}:{number}: expected an STS Benchmark row or 'sentence1<TAB>sentence2<TAB>score'"
            )
        try:
            scores.append(float(score))
        except ValueError:
            raise CompressorError(f"{path}:{number}: score {score!r} is not a number") from None
        first.append(a.strip())
        second.append(b.strip())
    return SentencePairs(first, second, scores)


def sample_sentences(sentences: list[str], num_samples: int, seed: int = 0) -> list[str]:
    """A reproducible subset of distinct sentences, in file order."""
    unique = list(dict.fromkeys(sentences))
    if num_samples >= len(unique):
        return unique
    keep = sorted(random.Random(seed).sample(range(len(unique)), num_samples))
    return [unique[i] for i in keep]


def batches(items: list, batch_size: int):
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]
