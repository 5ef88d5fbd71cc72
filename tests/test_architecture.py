"""The architecture holds in the code (benchmarks/architecture_counts.py reads it with ``ast``): formats and
models answer for themselves, passes exchange typed results, and imports follow the one-way layer order of
docs/architecture.md."""
import ast
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def counts():
    spec = importlib.util.spec_from_file_location("architecture_counts", ROOT / "benchmarks" / "architecture_counts.py",
                                                  submodule_search_locations=[])
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))  # the script imports its harness as a sibling
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module


def test_the_counters_find_what_they_look_for(counts):
    """Each counter against a hand-written snippet, so a zero below means absence, not a blind counter."""
    tree = ast.parse('if fmt == "nvfp4" or x.activation in ("int8", "fp8") or y != 3:\n'
                     '    pass\nif hasattr(model, "vit") or adapter.kind == "diffusion" or hasattr(obj, "x"):\n    pass\n'
                     'from compressor.passes.gptq import _helper, public\n')
    assert counts.format_comparisons(tree) == [1, 1]  # the == and the in, on line 1
    assert sorted(counts.structure_probes(tree)) == [3, 3]
    assert counts.private_imports(tree, "compressor.passes.sparsegpt") == ["compressor.passes.gptq._helper"]
    assert counts.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert counts.touches_sys_path(ast.parse("import sys\nsys.path.insert(0, 'x')\n"))
    assert not counts.touches_sys_path(ast.parse("import os\nos.path.join('a', 'b')\n"))
    assert counts.layering_violations({"calibrators.data": {"exporters.onnx_export"},
                                       "exporters.onnx_export": {"compressor.errors"}}) == [
        "calibrators.data -> exporters.onnx_export"]


def test_the_code_follows_the_architecture(counts):
    found = counts.measure()
    assert found["format_name_comparisons"] <= 8, found["where"]
    assert found["structure_probes_outside_adapters"] <= 2, found["where"]
    assert found["context_shared"] == 0
    assert found["private_imports"] == 0, found["where"]
    assert found["sys_path_files"] == []
    assert found["import_cycles_module_level"] == [] and found["import_cycles_with_function_imports"] == []
    assert found["layering_violations"] == []
    assert found["readme_lines"] <= 250 and len(found["docs_files"]) >= 2
