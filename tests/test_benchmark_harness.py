"""The benchmarks' shared harness (benchmarks/harness.py): provenance, results files, scoring, timing and the
held-out split, each checked against a reference of its own (git itself, scipy, rank formulas, a fake
clock). Also: every benchmark writes its JSON through the harness (that none patches sys.path is
tests/test_architecture.py's). The split test reads ../shared/data/stsb and skips when it is absent."""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "benchmarks" / "harness.py"


def load_harness():
    spec = importlib.util.spec_from_file_location("benchmark_harness", HARNESS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


h = load_harness()


class FakeClock:
    """A clock that moves only when a timed function moves it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def git_head() -> str:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        pytest.skip("the repository is not a git checkout")
    return done.stdout.strip()


# --- provenance and results files --------------------------------------------------------------


def test_provenance_records_commit_date_versions_cpu_threads():
    import torch

    head = git_head()
    record = h.provenance()
    assert {"commit", "dirty", "date_utc", "python", "versions", "cpu", "torch_threads", "cpu_count"} <= set(record)
    assert record["commit"] == head
    assert isinstance(record["dirty"], bool)
    when = datetime.fromisoformat(record["date_utc"])
    assert when.utcoffset() == timedelta(0)
    assert abs(datetime.now(when.tzinfo) - when) < timedelta(minutes=5)
    assert record["python"] == platform.python_version()
    assert {"torch", "onnxruntime", "transformers"} <= set(record["versions"])
    assert record["versions"]["torch"] == torch.__version__
    assert record["versions"]["numpy"] == np.__version__
    assert isinstance(record["cpu"], str) and record["cpu"]
    assert record["torch_threads"] == torch.get_num_threads()
    assert record["cpu_count"] == os.cpu_count()
    json.dumps(record)  # all of it serialisable


def test_write_results_round_trips_atomically_with_mode_0644(tmp_path):
    target = tmp_path / "new" / "folder" / "result.json"
    data = {"model": "m", "rows": [{"spearman": 85.25, "name": "é"}], "seconds": 1.5}
    assert h.write_results(target, data) == target
    for expected in (data, {"model": "again"}):  # a new file, then one written over an old
        if expected is not data:
            h.write_results(target, expected)
        loaded = json.loads(target.read_text(encoding="utf-8"))
        assert {k: v for k, v in loaded.items() if k != "provenance"} == expected
        assert {"commit", "date_utc", "versions"} <= set(loaded["provenance"])
        assert [p.name for p in target.parent.iterdir()] == ["result.json"]  # no temporary file left
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert "provenance" not in data  # the caller's dict is left as it was


def test_importing_the_harness_loads_no_heavy_packages(tmp_path):
    """onnx_sts.py and onnx_latency.py run on machines with only numpy and ONNX Runtime: importing the
    harness must not need torch or the engine."""
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('harness', {str(HARNESS)!r})\n"
            "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
            "print(sorted(m for m in ('torch', 'numpy', 'scipy', 'compressor', 'calibrators') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# --- scoring -----------------------------------------------------------------------------------


def test_cosine_spearman_matches_scipy_and_the_rank_formula():
    rng = np.random.default_rng(0)
    first, second = rng.standard_normal((2, 300, 16))
    first /= np.linalg.norm(first, axis=1, keepdims=True)
    second /= np.linalg.norm(second, axis=1, keepdims=True)
    cosine = [float(np.dot(a, b)) for a, b in zip(first, second)]
    gold = rng.uniform(0, 5, 300)
    got = h.cosine_spearman(first, second, gold)
    assert got == pytest.approx(100 * spearmanr(cosine, gold).correlation, abs=1e-9)
    # no ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1)), ranks from argsort
    n = len(gold)
    d = np.argsort(np.argsort(cosine)) - np.argsort(np.argsort(gold))
    assert got == pytest.approx(100 * (1 - 6 * float(np.sum(d.astype(float) ** 2)) / (n * (n * n - 1))), abs=1e-9)
    tied = np.round(gold * 2) / 2  # STS scores come in steps: ties take their mean rank
    assert h.cosine_spearman(first, second, tied) == pytest.approx(100 * spearmanr(cosine, tied).correlation, abs=1e-9)


def test_judge_accuracy_and_format_counts():
    import torch

    images = torch.zeros(450, 1, 4, 4)
    labels = torch.arange(450) % 10
    wrong = labels == 3  # a judge that is right except on every 3

    def judge(batch_images):
        index = torch.arange(len(batch_images)) + judge.seen
        judge.seen += len(batch_images)
        answer = torch.where(wrong[index], (labels[index] + 1) % 10, labels[index])
        return torch.nn.functional.one_hot(answer, 10).float(), None

    judge.seen = 0
    assert h.judge_accuracy(judge, images) == pytest.approx(1 - float(wrong.float().mean()))
    layers = [{"format": f} for f in ("int8", "nvfp4", "int8", "fp32")]
    assert h.format_counts(layers) == {"int8": 2, "nvfp4": 1, "fp32": 1}


# --- timing ------------------------------------------------------------------------------------


def test_time_call_times_only_the_repeats_after_warmup():
    clock = FakeClock()
    durations = iter([100.0, 100.0, 3.0, 1.0, 2.0, 5.0, 4.0])  # two warm-ups, then five timed calls

    def work():
        clock.now += next(durations)

    times = h.time_call(work, repeats=5, warmup=2, clock=clock)
    assert times == [3.0, 1.0, 2.0, 5.0, 4.0]
    assert h.median(times) == 3.0
    assert next(durations, None) is None  # seven calls in all

    def answer():
        clock.now += 0.25
        return 7.5

    assert h.timed(answer, clock=clock) == (7.5, 0.25)


def test_time_calls_interleaves_and_prepares_untimed():
    clock, log = FakeClock(), []

    def call(name, seconds):
        def run():
            log.append(name)
            clock.now += seconds
        return run

    def prepare(name):
        log.append(f"prepare {name}")
        clock.now += 1000.0  # never counted

    times = h.time_calls({"a": call("a", 1.0), "b": call("b", 2.0)}, repeats=4, warmup=1, prepare=prepare, clock=clock)
    assert {name: len(values) for name, values in times.items()} == {"a": 4, "b": 4}
    assert h.medians(times) == {"a": 1.0, "b": 2.0}
    assert log == ["prepare a", "a", "prepare b", "b"] * 5  # one warm-up round, then four interleaved rounds
    summary = h.latency_summary({"fp32": 0.2, "int8": 0.1}, "setup")
    assert summary == {"setup": "setup", "ms": {"fp32": 200.0, "int8": 100.0}, "ratio_to_fp32": {"fp32": 1.0, "int8": 0.5}}
    assert h.latency_summary({"int8": 0.1}, "setup")["ratio_to_fp32"] is None


# --- the held-out split ------------------------------------------------------------------------


def test_split_sts_halves_the_dev_pairs():
    if not h.STS_DEV.exists():
        pytest.skip(f"shared STS-B dev file not found at {h.STS_DEV}")
    from calibrators.data import read_sentence_pairs

    pairs = read_sentence_pairs(h.STS_DEV)
    calib, held_out = h.split_sts()
    half = len(pairs.scores) // 2
    assert len(calib) == 2 * half and len(held_out.scores) == len(pairs.scores) - half
    calib_pairs = Counter(zip(calib[:half], calib[half:]))
    held_pairs = Counter(zip(held_out.first, held_out.second))
    assert calib_pairs + held_pairs == Counter(zip(pairs.first, pairs.second))  # a partition of the dev pairs
    again, held_again = h.split_sts()
    assert again == calib and held_again.scores == held_out.scores  # the same split every run


# --- the benchmark and example sources ---------------------------------------------------------


def test_benchmarks_write_results_through_the_harness():
    """A results JSON written any other way would carry no provenance."""
    offenders = []
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        if path.name != "harness.py" and re.search(r"write_text\(\s*json\.dumps|json\.dump\(", text):
            offenders.append(path.name)
    assert offenders == []
