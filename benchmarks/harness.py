"""What every benchmark shares: the held-out STS-B split, scoring, timing, and results files that say where
they came from.

Benchmarks run as ``python benchmarks/NAME.py``, so this file's folder is on the import path and they import
it as ``harness``. Importing it loads only the standard library: numpy, scipy, torch and the engine are
imported by the functions that need them, so the scripts meant for another machine (``onnx_sts.py``,
``onnx_latency.py``) need no more there than they did.

* The held-out split (``split_sts``): calibrate on one half of the STS-B dev pairs, score on the other, so
  no figure is measured on the sentences a recipe was calibrated on. The 1,500 dev pairs are shuffled with
  a fixed seed (the file is ordered by genre, so a plain cut would calibrate on captions and score on
  news); the first 750 pairs give the calibration sentences (both sides of each pair), the last 750 pairs
  are the evaluation set. ``held_out_calibration`` also draws the calibration sample from its half.
* Scoring: Spearman ×100 of cosine similarity against the gold scores (``cosine_spearman``, and for a
  PyTorch or ONNX model ``embedding_spearman`` / ``onnx_spearman``), the MNIST judge's class accuracy
  (``judge_accuracy``), layer formats of a compression record (``format_counts``).
* Sampling the example DiT the same way in every DiT benchmark (``draw``), and the flags several
  benchmarks share (``add_sts_arguments``, ``add_dit_arguments``; defaults are the paths below).
* Timing: one measurement (``timed``), repeats after warm-up (``time_call``), several callables
  interleaved so drift hits all alike (``time_calls``), and their medians (``median``, ``medians``,
  ``latency_summary``).
* Results: ``write_results`` writes a results JSON atomically with ``provenance()`` (commit, date,
  package versions, CPU, threads) in it.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

if TYPE_CHECKING:
    from calibrators.data import SentencePairs

ROOT = Path(__file__).resolve().parents[1]  # the repository
RESULTS = ROOT / "benchmarks" / "results"
SHARED = ROOT.parent / "shared"  # data sets kept next to the repository
STS_DEV = SHARED / "data" / "stsb" / "sts-dev.csv"
MNIST = SHARED / "data" / "mnist"
DIT_MODEL = ROOT / "examples" / "mnist_dit" / "model"
DIT_JUDGE = ROOT / "examples" / "mnist_dit" / "judge.pt"
SPLIT_SEED = 0


# --- command-line flags several benchmarks share ----------------------------------------------


def add_sts_arguments(parser, calib_samples: int = 256) -> None:
    """``--stsb`` (the STS-B dev file the held-out split cuts) and ``--calib-samples``."""
    parser.add_argument("--stsb", default=str(STS_DEV))
    parser.add_argument("--calib-samples", type=int, default=calib_samples)


def add_dit_arguments(parser, mnist: bool = False) -> None:
    """``--model`` (the example MNIST DiT), ``--judge`` (its judge), and with ``mnist`` the MNIST folder."""
    parser.add_argument("--model", default=str(DIT_MODEL))
    parser.add_argument("--judge", default=str(DIT_JUDGE))
    if mnist:
        parser.add_argument("--mnist", default=str(MNIST))


# --- the held-out STS-B split ------------------------------------------------------------------


def split_sts(path: str | Path = STS_DEV, seed: int = SPLIT_SEED) -> tuple[list[str], SentencePairs]:
    """(calibration sentences from the calibration half, the held-out evaluation pairs)."""
    import numpy as np

    from calibrators.data import SentencePairs, read_sentence_pairs

    pairs = read_sentence_pairs(path)
    order = np.random.default_rng(seed).permutation(len(pairs.scores))
    half = len(order) // 2
    calib_rows, eval_rows = order[:half], order[half:]
    calib = [pairs.first[i] for i in calib_rows] + [pairs.second[i] for i in calib_rows]
    held_out = SentencePairs([pairs.first[i] for i in eval_rows], [pairs.second[i] for i in eval_rows],
                             [pairs.scores[i] for i in eval_rows])
    return calib, held_out


def held_out_calibration(samples: int, path: str | Path = STS_DEV, seed: int = 0) -> tuple[list[str], SentencePairs]:
    """(``samples`` calibration sentences drawn with ``seed`` from the calibration half, the held-out pairs)."""
    from calibrators.data import sample_sentences

    pool, held_out = split_sts(path)
    return sample_sentences(pool, samples, seed), held_out


def write_sts_tsv(pairs: SentencePairs, path: str | Path) -> Path:
    """The pairs as an STS Benchmark file (genre, file, year, id, score, sentence 1, sentence 2), for
    tools that read evaluation data from a file (``compressor compare --eval-data``)."""
    path = Path(path)
    rows = [f"held-out\tdev\t-\t{i}\t{score}\t{a}\t{b}" for i, (a, b, score) in
            enumerate(zip(pairs.first, pairs.second, pairs.scores))]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


# --- scoring -----------------------------------------------------------------------------------


def spearman_x100(predicted, gold) -> float:
    """Spearman rank correlation ×100 (scipy's, ties ranked by their mean)."""
    import numpy as np
    from scipy.stats import spearmanr

    return float(spearmanr(np.asarray(predicted), np.asarray(gold)).correlation * 100.0)


def cosine_spearman(first, second, gold) -> float:
    """Spearman ×100 between gold scores and the cosine similarity of L2-normalised embedding pairs (rows)."""
    import numpy as np

    return spearman_x100((np.asarray(first) * np.asarray(second)).sum(axis=1), gold)


def embedding_spearman(handle, pairs: SentencePairs) -> float:
    """STS Spearman ×100 of a loaded (or compressed) model in PyTorch."""
    return cosine_spearman(handle.embed(pairs.first).numpy(), handle.embed(pairs.second).numpy(), pairs.scores)


def onnx_spearman(graph, handle, pairs: SentencePairs, threads: int = 2) -> float:
    """STS Spearman ×100 of an ONNX graph (a path, or a session already made) in ONNX Runtime; ``handle``
    tokenizes and pools."""
    from compressor.evaluation.onnx_runner import onnx_embed
    from exporters.onnx_export import onnx_session

    session = onnx_session(graph, threads) if isinstance(graph, (str, Path)) else graph
    return cosine_spearman(onnx_embed(session, handle, pairs.first), onnx_embed(session, handle, pairs.second),
                           pairs.scores)


def judge_accuracy(judge, images, batch: int = 200) -> float:
    """Share of images (drawn for the classes in turn, as ``draw`` does) the judge classifies as asked."""
    import torch

    labels = torch.arange(len(images)) % 10
    with torch.no_grad():
        logits = torch.cat([judge(images[i : i + batch])[0] for i in range(0, len(images), batch)])
    return float((logits.argmax(1) == labels).float().mean())


def format_counts(layers: Iterable[Mapping]) -> dict[str, int]:
    """How many layers of a compression record hold each format."""
    from compressor.passes.plan import scheme_counts

    return scheme_counts(layers)


# --- sampling the example DiT ------------------------------------------------------------------


def draw(handle, count: int, seed: int, steps: int = 25, guidance: float = 1.5, chunk: int = 100):
    """``count`` class-conditional images (classes in turn), sampled in chunks of ``chunk`` with seeds
    ``seed``, ``seed + 1``, ... per chunk: DDIM ``steps`` steps, classifier-free ``guidance``. Uses only the
    sampling loop and the adapter, so it measures any version of the engine alike."""
    import torch

    from calibrators.sampling import sample

    adapter, model = handle.adapter, handle.model
    labels = torch.arange(count) % 10
    out = []
    for index, start in enumerate(range(0, count, chunk)):
        part = labels[start : start + chunk]
        out.append(sample(adapter.denoiser(model), adapter.scheduler(), part, shape=adapter.latent_shape(model),
                          steps=steps, guidance=guidance, seed=seed + index,
                          null_conditioning=adapter.null_conditioning(model, part)))
    return torch.cat(out)


# --- timing ------------------------------------------------------------------------------------

Clock = Callable[[], float]


def timed(fn: Callable[[], Any], clock: Clock = time.perf_counter) -> tuple[Any, float]:
    """(what ``fn()`` returns, the seconds it took): one measurement."""
    start = clock()
    value = fn()
    return value, clock() - start


def time_call(fn: Callable[[], Any], repeats: int, warmup: int = 0, clock: Clock = time.perf_counter) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``, after ``warmup`` calls that are not timed."""
    return time_calls({None: fn}, repeats, warmup, clock=clock)[None]


def time_calls(calls: Mapping[Any, Callable[[], Any]], repeats: int, warmup: int = 0,
               prepare: Callable[[Any], Any] | None = None, clock: Clock = time.perf_counter) -> dict[Any, list[float]]:
    """Seconds of each call, by name: ``warmup`` untimed calls of each, then ``repeats`` rounds that call each
    in turn (interleaved, so drift hits every one alike). ``prepare(name)``, when given, runs untimed before
    each of that name's calls (e.g. to switch a model into that setting)."""
    for name, fn in calls.items():
        for _ in range(warmup):
            if prepare is not None:
                prepare(name)
            fn()
    times: dict[Any, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            if prepare is not None:
                prepare(name)
            start = clock()
            fn()
            times[name].append(clock() - start)
    return times


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def medians(times: Mapping[Any, Iterable[float]]) -> dict[Any, float]:
    return {name: median(values) for name, values in times.items()}


def latency_summary(latency: Mapping[str, float], setup: str) -> dict:
    """Median seconds by model as the results files record them: the setup, milliseconds, and the ratio to
    the model named ``fp32`` (None where there is none)."""
    base = latency.get("fp32")
    return {"setup": setup, "ms": {k: round(v * 1000, 1) for k, v in latency.items()},
            "ratio_to_fp32": {k: round(v / base, 3) for k, v in latency.items()} if base else None}


# --- provenance and results files --------------------------------------------------------------

REQUIRED_PACKAGES = ("torch", "onnxruntime", "transformers")
OPTIONAL_PACKAGES = ("numpy", "diffusers", "onnx")


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's "model name" from /proc/cpuinfo, else what ``platform.processor()`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _torch_threads() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.get_num_threads()


def _code_state() -> tuple[str | None, str | None]:
    commit = _git("rev-parse", "HEAD")
    # results files are outputs, not the code that made them
    return commit, _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results") if commit else None


# The code a run measures is the code it started with: later commits in the same checkout must not be
# credited with its figures.
_STARTED = (*_code_state(), datetime.now(timezone.utc).isoformat(timespec="seconds"))


def provenance() -> dict:
    """Where a result came from: the repository's commit when the run started (None outside a git checkout)
    and whether its tracked files differed from it, the UTC times the run started and this was written, the
    Python and package versions, the CPU and the threads."""
    commit, status, started = _STARTED
    versions = {name: _version(name) for name in REQUIRED_PACKAGES}
    versions.update({name: v for name in OPTIONAL_PACKAGES if (v := _version(name)) is not None})
    return {
        "commit": commit.strip() if commit else None,
        "dirty": bool(status.strip()) if status is not None else None,
        "started_utc": started,
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "versions": versions,
        "cpu": cpu_model(),
        "torch_threads": _torch_threads(),
        "cpu_count": os.cpu_count(),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else None,
    }


def write_results(path: str | Path, data: Mapping) -> Path:
    """Write ``data`` with ``"provenance": provenance()`` as indented JSON at ``path``: parent folders
    created, written to a temporary file in the same folder and renamed over ``path`` (a reader never sees
    half a file), mode 0644."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({**data, "provenance": provenance()}, indent=2) + "\n"
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path
