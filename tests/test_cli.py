"""compressor.cli: exit codes, one-line errors, compare reports, compress --overwrite."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from compressor.cli import main

COMPRESSOR = Path(sys.executable).parent / "compressor"


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("compressor: error:")]


def assert_one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_unknown_preset(capsys, minilm_dir, calib_file, tmp_path):
    out = tmp_path / "out"
    code = main(["compress", str(minilm_dir), "--recipe", "int3", "--calib-data", str(calib_file), "--output", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [err.strip()]  # exactly one line on stderr
    assert err.startswith("compressor: error:") and "'int3'" in err
    assert not out.exists()


def test_unknown_preset_exit_code_from_installed_script(minilm_dir, calib_file, tmp_path):
    assert COMPRESSOR.is_file(), f"console script not installed at {COMPRESSOR}"
    out = tmp_path / "out"
    result = subprocess.run(
        [str(COMPRESSOR), "compress", str(minilm_dir), "--recipe", "int3", "--calib-data", str(calib_file),
         "--output", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "unknown recipe preset 'int3'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_yaml_recipe_with_unknown_field(capsys, minilm_dir, calib_file, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("calib_samples: 8\nsmooth_quant: false\n")
    code = main(["compress", str(minilm_dir), "--recipe", str(recipe), "--calib-data", str(calib_file),
                 "--output", str(tmp_path / "out")])
    assert code == 2
    assert_one_line_error(capsys, "unknown field 'smooth_quant'")
    assert not (tmp_path / "out").exists()


def test_nonexistent_model_dir(capsys, calib_file, tmp_path):
    code = main(["compress", str(tmp_path / "nope"), "--calib-data", str(calib_file), "--output", str(tmp_path / "out")])
    assert code == 2
    assert_one_line_error(capsys, "checkpoint not found", "nope")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_existing_output_without_overwrite(capsys, minilm_dir, calib_file, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("keep")
    code = main(["compress", str(minilm_dir), "--calib-data", str(calib_file), "--output", str(out)])
    assert code == 2
    assert_one_line_error(capsys, "already exists", "--overwrite")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_compare_missing_eval_data(capsys, minilm_dir, compressed_dir, tmp_path):
    code = main(["compare", str(minilm_dir), str(compressed_dir), "--eval-data", str(tmp_path / "missing.tsv"),
                 "--report", str(tmp_path / "report")])
    assert code == 2
    assert_one_line_error(capsys, "data file not found", "missing.tsv")
    assert not (tmp_path / "report").exists()


def test_compare_rejects_uncompressed_dir(capsys, minilm_dir, calib_file, tmp_path):
    code = main(["compare", str(minilm_dir), str(minilm_dir), "--eval-data", str(calib_file),
                 "--report", str(tmp_path / "report")])
    assert code == 2
    assert_one_line_error(capsys, "is not a compressed checkpoint")


def test_export_unknown_target_is_an_argparse_error(capsys, minilm_dir, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["export", str(minilm_dir), "--target", "coreml", "--output", str(tmp_path / "m.onnx")])
    assert info.value.code == 2
    assert "invalid choice: 'coreml'" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_export_onnx_via_cli(capsys, compressed_dir, tmp_path):
    import onnx

    out = tmp_path / "m.onnx"
    assert main(["export", str(compressed_dir), "--target", "tensorrt", "--output", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # second time without --overwrite: refused, file untouched
    before = out.read_bytes()
    assert main(["export", str(compressed_dir), "--output", str(out)]) == 2
    assert_one_line_error(capsys, "already exists")
    assert out.read_bytes() == before


def test_export_tensorrt_engine_without_tensorrt(capsys, compressed_dir, tmp_path):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed here")
    out = tmp_path / "model.engine"
    assert main(["export", str(compressed_dir), "--format", "tensorrt", "--output", str(out)]) == 2
    assert_one_line_error(capsys, "TensorRT is not installed")
    assert not out.exists()


def reference_spearman(handle, tiny_sts) -> float:
    """STS Spearman x100 from the model's own PyTorch embeddings, ranked by scipy."""
    from scipy.stats import spearmanr

    rows = [line.split("\t") for line in tiny_sts.read_text(encoding="utf-8").splitlines()]
    first, second = handle.embed([r[0] for r in rows]), handle.embed([r[1] for r in rows])
    cosine = torch.nn.functional.cosine_similarity(first, second).numpy()
    return 100 * spearmanr(cosine, [float(r[2]) for r in rows]).statistic


def ort_embeddings(handle, sentences: list[str], path: Path):
    """Mean-pooled, L2-normalised embeddings of the model's ONNX export run directly in ONNX Runtime."""
    import onnxruntime

    from exporters.onnx_export import export_onnx

    session = onnxruntime.InferenceSession(str(export_onnx(handle, path, "onnxruntime")),
                                           providers=["CPUExecutionProvider"])
    encoded = handle.tokenizer(sentences, padding=True, truncation=True, max_length=128, return_tensors="np")
    hidden = session.run(None, {i.name: encoded[i.name].astype(np.int64) for i in session.get_inputs()})[0]
    mask = encoded["attention_mask"][..., None].astype(np.float64)
    mean = (hidden * mask).sum(1) / mask.sum(1)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def expected_bits_per_weight(fp32_model, record) -> float:
    """Weight-count-weighted bits of the Linear layers: INT8 is 8 bits plus one fp32 scale per output row
    (8 + 32 / in_features per weight), a layer kept in float 16."""
    bits = total = 0
    for layer in record["layers"]:
        linear = fp32_model.get_submodule(layer["name"])
        per_weight = {"int8": 8 + 32 / linear.in_features, "float": 16}[layer["format"]]
        bits += per_weight * linear.weight.numel()
        total += linear.weight.numel()
    return bits / total


def test_compare_writes_report(capsys, minilm_dir, compressed_dir, fp32_handle, compressed_handle, tiny_sts, tmp_path):
    report_dir = tmp_path / "report"
    code = main(["compare", str(minilm_dir), str(compressed_dir), "--eval-data", str(tiny_sts),
                 "--report", str(report_dir), "--repeats", "2", "--batch", "4", "--length", "32"])
    assert code == 0
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in report_dir.iterdir()) == ["report.json", "report.md", "report.png"]
    assert not any(".partial" in p.name for p in tmp_path.iterdir())

    report = json.loads((report_dir / "report.json").read_text())
    assert report["kind"] == "encoder" and report["fidelity_sentences"] == 2 * len(tiny_sts.read_text().splitlines())
    assert report["task"] is not None
    assert report["latency_setup"]["batch"] == 4 and report["latency_setup"]["length"] == 32
    assert report["latency_setup"]["repeats"] == 2
    rows = {row["model"]: row for row in report["models"]}
    assert list(rows) == ["original", compressed_dir.name]
    original, compressed = rows["original"], rows[compressed_dir.name]
    assert original["recipe"] == "fp32" and original["int8_layers"] == 0
    assert compressed["recipe"] == "int8" and compressed["int8_layers"] >= 34
    # the ONNX Runtime figures against the same figures from PyTorch: the original's export computes the same
    # embeddings (identical ranks), the INT8 kernels agree with PyTorch's INT8 numerics to a rank swap or two
    assert original["spearman"] == pytest.approx(reference_spearman(fp32_handle, tiny_sts), abs=1e-6)
    assert compressed["spearman"] == pytest.approx(reference_spearman(compressed_handle, tiny_sts), abs=1.0)
    assert original["spearman_delta"] == 0.0
    assert compressed["spearman_delta"] == pytest.approx(compressed["spearman"] - original["spearman"])
    # fidelity: the cosines between ONNX Runtime embeddings computed here, first sentences then second ones
    pairs = [line.split("\t") for line in tiny_sts.read_text(encoding="utf-8").splitlines()]
    sentences = [r[0] for r in pairs] + [r[1] for r in pairs]
    reference = ort_embeddings(fp32_handle, sentences, tmp_path / "fp32.onnx")
    cosine = (reference * ort_embeddings(compressed_handle, sentences, tmp_path / "int8.onnx")).sum(1)
    assert original["cosine_mean"] == pytest.approx(1.0, abs=1e-6)
    assert 1 - compressed["cosine_mean"] == pytest.approx(1 - cosine.mean(), rel=1e-3)
    assert 1 - compressed["cosine_min"] == pytest.approx(1 - cosine.min(), rel=1e-3)
    for row in rows.values():
        assert row["latency_ms"] > 0 and row["latency_ratio"] > 0
        assert row["onnx_bytes"] > 0
        assert row["weights_bytes"] == sum(p.stat().st_size for p in Path(row["path"]).glob("*.safetensors"))
    assert original["latency_ratio"] == 1.0 and original["size_ratio"] == 1.0
    assert compressed["size_ratio"] == compressed["weights_bytes"] / original["weights_bytes"] < 0.75
    record = json.loads((compressed_dir / "compression.json").read_text())
    bits = expected_bits_per_weight(fp32_handle.model, record)
    assert compressed["bits_per_weight"] == pytest.approx(bits, abs=1e-3)

    md = (report_dir / "report.md").read_text()
    # MiniLM: 6 blocks of query/key/value/output (384 × 384) and two FFN Linears (384 × 1536)
    assert original["linear_macs_per_token"] == compressed["linear_macs_per_token"] == 6 * (4 * 384**2 + 2 * 384 * 1536)
    assert compressed["macs_ratio"] == 1.0 and compressed["sparsity_pattern"] is None
    assert md.startswith("| model | recipe | bits/weight | MACs × | sparsity | Spearman | Δ | cos to original | latency ms |")
    assert f"| {compressed_dir.name} | int8 | {bits:.2f} | 1.00 | – | {compressed['spearman']:.2f} |" in md
    assert "Sparsity does not make a CPU faster" not in md
    assert "MatMulIntegerToFloat INT8 kernel" in md
    png = (report_dir / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


def test_compare_fidelity_only_on_plain_sentences(minilm_dir, compressed_dir, packaged_sentences, tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("\n".join(packaged_sentences[:12]) + "\n")
    report_dir = tmp_path / "report"
    assert main(["compare", str(minilm_dir), str(compressed_dir), "--eval-data", str(plain),
                 "--report", str(report_dir), "--repeats", "1", "--batch", "2", "--length", "16"]) == 0
    report = json.loads((report_dir / "report.json").read_text())
    assert report["task"] is None and report["fidelity_sentences"] == 12
    assert all("spearman" not in row for row in report["models"])
    assert "Spearman" not in (report_dir / "report.md").read_text()
    assert (report_dir / "report.png").stat().st_size > 0


def test_compare_labelled_file_with_a_malformed_line_is_an_error(capsys, minilm_dir, tiny_sts, tmp_path):
    lines = tiny_sts.read_text(encoding="utf-8").splitlines()
    broken = tmp_path / "broken.tsv"
    broken.write_text("\n".join(lines[:4] + ["a sentence with no pair and no score"] + lines[4:]) + "\n")
    code = main(["compare", str(minilm_dir), str(minilm_dir), "--eval-data", str(broken),
                 "--report", str(tmp_path / "report")])
    assert code == 2
    line = assert_one_line_error(capsys, f"{broken}:5:", "expected an STS Benchmark row")
    assert f"other {len(lines)} lines are labelled pairs" in line
    assert not (tmp_path / "report").exists()


def test_compress_overwrite_replaces_directory(capsys, minilm_dir, calib_file, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    code = main(["compress", str(minilm_dir), "--recipe", "int8-minmax", "--num-samples", "8",
                 "--calib-data", str(calib_file), "--output", str(out), "--overwrite"])
    assert code == 0
    captured = capsys.readouterr()
    # int8-minmax quantizes all 36 Linears (6 blocks of query/key/value/output 384 × 384, FFN 1536 × 384 and
    # 384 × 1536) at 8 bits plus a 32-bit scale per output row:
    # 8 + 32 · (4·384 + 1536 + 384) / (4·384² + 2·1536·384) = 8 + 110592 / 1769472 = 8.0625
    assert f"36 layers: 36 int8; {8.0625:.3f} effective bits per weight" in captured.out
    assert f"wrote {out}" in captured.out
    assert "MB on disk" in captured.out and "x the original's" in captured.out
    names = {p.name for p in out.iterdir()}
    assert "stale.txt" not in names
    assert {"model.safetensors", "compression.json", "README.md", "config.json"} <= names
    record = json.loads((out / "compression.json").read_text())
    assert record["recipe"]["name"] == "int8-minmax" and record["recipe"]["calibration"]["calib_samples"] == 8
    assert record["calibration"]["samples"] == 8
    assert record["fallback"] == []
    assert record["bits_per_weight"] == pytest.approx(8.0625)
    assert all(layer["smoothing_alpha"] is None for layer in record["layers"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial or old copies left


def test_plan_table_says_why_no_fallback():
    from compressor.cli import plan_table

    layer = {"name": "l", "format": "int8", "input_amax": 1.0, "smoothing_alpha": None, "note": ""}
    record = {"layers": [layer], "fallback": [],
              "output_error": {"output_error_quantized": 0.005, "output_error_final": 0.005, "tolerance": 0.01}}
    assert "none needed" in plan_table(record)
    record["output_error"]["output_error_quantized"] = 0.05
    assert "above the tolerance" in plan_table(record)
    record["fallback"] = ["l"]
    record["output_error"]["output_error_final"] = 0.02
    assert "with 1 layer(s) in float" in plan_table(record)


def test_num_samples_zero_is_an_error(tmp_path, capsys):
    code = main(["compress", "default", "--num-samples", "0", "--output", str(tmp_path / "out")])
    assert code == 2
    assert_one_line_error(capsys, "--num-samples must be at least 1, got 0")
    assert not (tmp_path / "out").exists()
