"""Text encoders: STS Spearman where the eval file has labelled pairs, and always the cosine and relative
error of each model's sentence embeddings against the original's, computed on the ONNX exports."""
from __future__ import annotations

from pathlib import Path

from calibrators.data import SentencePairs, read_sentence_pairs, read_sentences
from compressor.errors import CompressorError
from compressor.evaluation.base import Candidate, Column, CompareOptions, TaskEvaluator
from compressor.evaluation.metrics import embedding_fidelity, relative_error, sts_spearman
from compressor.evaluation.onnx_runner import latency_feeds, onnx_embed

FIDELITY_SENTENCES = 512
TASK = "STS Spearman x100 (cosine of mean-pooled embeddings)"


def _is_labelled_row(line: str) -> bool:
    """An STS Benchmark row (score in column 5, sentences in 6 and 7) or 'sentence1<TAB>sentence2<TAB>score'."""
    fields = line.split("\t")
    if len(fields) >= 7:
        score = fields[4]
    elif len(fields) == 3:
        score = fields[2]
    else:
        return False
    try:
        float(score)
    except ValueError:
        return False
    return True


def read_eval_data(path: str | Path) -> tuple[SentencePairs | None, list[str]]:
    """(labelled pairs or None, the sentences fidelity is measured on).

    A file with no labelled row is plain sentences (fidelity only). A file with labelled rows must be
    labelled throughout: a malformed line is an error naming it, not a silent switch to fidelity only."""
    sentences = read_sentences(path)  # checks the file exists, is readable and not empty
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    labelled = sum(_is_labelled_row(line) for line in lines)
    if labelled == 0:
        return None, sentences
    try:
        pairs = read_sentence_pairs(path)
    except CompressorError as exc:
        raise CompressorError(f"{exc}; the other {labelled} lines are labelled pairs, so every line must be one "
                              "(or give plain sentences, one per line, for fidelity only)") from None
    return pairs, pairs.first + pairs.second


class SentenceSimilarity(TaskEvaluator):
    kind = "encoder"
    figures = ("report.png",)

    def __init__(self, eval_data: str | Path, batch: int = 32, length: int = 128):
        self.eval_data = eval_data
        self.pairs, sentences = read_eval_data(eval_data)
        self.probe = sentences[:FIDELITY_SENTENCES]
        self.batch, self.length = batch, length
        self._reference = None  # the original's probe embeddings
        self._reference_spearman = None

    @classmethod
    def from_options(cls, options: CompareOptions) -> SentenceSimilarity:
        if options.eval_data is None:
            raise CompressorError("--eval-data is required for text models (an STS TSV or a sentence file)")
        return cls(options.eval_data, options.batch, options.length)

    def evaluate(self, model: Candidate) -> dict:
        metrics = {}
        if self.pairs is not None:
            first = onnx_embed(model.session, model.handle, self.pairs.first)
            second = onnx_embed(model.session, model.handle, self.pairs.second)
            metrics["spearman"] = sts_spearman(first, second, self.pairs.scores)
        embeddings = onnx_embed(model.session, model.handle, self.probe)
        if model.is_original:
            self._reference, self._reference_spearman = embeddings, metrics.get("spearman")
        metrics.update(embedding_fidelity(self._reference, embeddings))
        metrics["embedding_rel_error"] = relative_error(self._reference, embeddings)
        if self.pairs is not None:
            metrics["spearman_delta"] = metrics["spearman"] - self._reference_spearman
        return metrics

    def latency_feeds(self, model: Candidate) -> dict:
        return latency_feeds([i.name for i in model.session.get_inputs()], self.batch, self.length)

    def latency_setup(self) -> dict:
        return {"batch": self.batch, "length": self.length}

    def describe(self) -> dict:
        return {"eval_data": str(self.eval_data), "task": TASK if self.pairs is not None else None,
                "fidelity_sentences": len(self.probe)}

    @classmethod
    def columns(cls, report: dict) -> list[Column]:
        task = [Column("Spearman", "spearman", lambda v: f"{v:.2f}"),
                Column("Δ", "spearman_delta", lambda v: f"{v:+.2f}")] if report["task"] is not None else []
        return task + [Column("cos to original", "cosine_mean", lambda v: f"{v:.5f}")]

    @classmethod
    def notes(cls, report: dict) -> list[str]:
        return [f"Accuracy: {report['task'] or 'no labels in the eval data; fidelity only'} on "
                f"`{report['eval_data']}`, and cosine to the original's embeddings of "
                f"{report['fidelity_sentences']} sentences, computed with each model's ONNX export in ONNX Runtime."]

    def write_figures(self, report: dict, out: Path) -> None:
        plot_report(report, out / "report.png")


MARKERS = {"dense": "o", "structured pruning": "^", "sparse": "s"}


def model_kind(row: dict) -> str:
    """How a model was pruned, for its marker: heads/channels removed, zeros kept dense, or neither."""
    return "structured pruning" if row.get("pruned") else "sparse" if row.get("sparsity_pattern") else "dense"


def plot_report(report: dict, path: Path) -> None:
    """Accuracy against size and against latency, with the Pareto frontier of each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["models"]
    has_task = report["task"] is not None
    accuracy = [row["spearman"] if has_task else row["cosine_mean"] for row in rows]
    fig, (size_ax, latency_ax) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    for ax, key in ((size_ax, "weights_bytes"), (latency_ax, "latency_ratio")):
        xs = [row[key] / 1e6 if key == "weights_bytes" else row[key] for row in rows]
        labelled = set()
        for row, x, y in zip(rows, xs, accuracy):
            kind = model_kind(row)
            ax.scatter(x, y, s=40, marker=MARKERS[kind], label=None if kind in labelled else kind)
            labelled.add(kind)
            ax.annotate(row["model"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        frontier = pareto_frontier(xs, accuracy)
        ax.plot([xs[i] for i in frontier], [accuracy[i] for i in frontier], "--", color="gray", lw=1, label="frontier")
        ax.set_ylabel("STS Spearman ×100" if has_task else "cosine to original")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    size_ax.set_xlabel("weights on disk (MB)")
    size_ax.set_title("accuracy against size")
    latency_ax.set_xlabel(f"latency vs original (batch {report['latency_setup']['batch']}, "
                          f"length {report['latency_setup']['length']}, ONNX Runtime CPU)")
    latency_ax.set_title("accuracy against latency")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def pareto_frontier(cost: list[float], accuracy: list[float]) -> list[int]:
    """Indices of the points no other point beats on both lower cost and higher accuracy, by cost."""
    order = sorted(range(len(cost)), key=lambda i: (cost[i], -accuracy[i]))
    frontier, best = [], float("-inf")
    for i in order:
        if accuracy[i] > best:
            frontier.append(i)
            best = accuracy[i]
    return frontier
