"""What a task evaluator gives the compare harness: metrics for one model, and the columns, notes and figures
those metrics contribute to the report.

The harness (compressor/compare.py) loads the original and each compressed model, exports each to ONNX,
measures size and latency, and hands every model to the evaluator of its kind, original first. An
evaluator keeps what it needs of the original (its outputs, its score) to compare the others with it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar


@dataclass
class CompareOptions:
    """The `compressor compare` settings an evaluator may read (each uses the ones its task needs)."""

    eval_data: str | Path | None = None
    model_dir: str | Path | None = None  # the original checkpoint (an image classifier's processor and labels)
    judge: str | Path | None = None
    samples: int = 1000
    steps: int = 25
    guidance: float = 1.5
    seed: int = 0
    batch: int = 32
    length: int = 128
    save_samples: bool = False  # DiTs: write samples/<model>.npz with the images as sampled


@dataclass
class Candidate:
    """One model under comparison: its name in the report, its loaded handle and its ONNX Runtime session."""

    name: str
    handle: Any
    session: Any

    @property
    def is_original(self) -> bool:
        return self.name == "original"


@dataclass(frozen=True)
class Column:
    """A column of the markdown table: a header and how to write one row's cell ("-" when the row lacks it)."""

    header: str
    key: str
    cell: Callable[[Any], str]

    def render(self, row: dict) -> str:
        return self.cell(row[self.key]) if self.key in row else "-"


class TaskEvaluator:
    """Base class of the task evaluators. A subclass sets ``kind`` and implements ``evaluate``; the rest has
    defaults. ``columns`` and ``notes`` read only the report, so a written report.json can be rendered again."""

    kind: ClassVar[str]  # the adapter kind it scores ("encoder", "diffusion", ...)
    figures: ClassVar[tuple[str, ...]] = ()  # files write_figures adds beside report.json and report.md
    latency_key: ClassVar[str] = "latency_ms"  # row field of the median latency in milliseconds
    latency_header: ClassVar[str] = "latency ms"

    @classmethod
    def from_options(cls, options: CompareOptions) -> TaskEvaluator:
        raise NotImplementedError

    def evaluate(self, model: Candidate) -> dict:
        """Metrics for one model (called for the original first)."""
        raise NotImplementedError

    def latency_feeds(self, model: Candidate) -> dict:
        """ONNX Runtime inputs to time every model on (taken from the original)."""
        raise NotImplementedError

    def latency_metrics(self, seconds: float) -> dict:
        """Row fields derived from a model's median latency in seconds (e.g. throughput)."""
        return {}

    def latency_setup(self) -> dict:
        """Input shape of the timed runs, for the report (batch, length, ...)."""
        return {}

    def describe(self) -> dict:
        """Top-level report fields: the task, the data, the settings."""
        return {}

    @classmethod
    def columns(cls, report: dict) -> list[Column]:
        return []

    @classmethod
    def notes(cls, report: dict) -> list[str]:
        return []

    def write_figures(self, report: dict, out: Path) -> None:
        """Write the files named in ``figures`` into ``out``."""
