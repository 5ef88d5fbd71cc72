"""Every module of the product imports on its own, and no module-level import cycle exists among
compressor/, calibrators/ and exporters/."""
import ast
import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("compressor", "calibrators", "exporters")


def module_names() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] != "__main__":  # runs the command when imported
                names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_the_module_list_is_not_empty():
    assert {"compressor.pipeline", "calibrators.service", "exporters.checkpoint"} <= set(module_names())


def test_every_module_imports_on_its_own():
    """Project modules are dropped from sys.modules before each import, so each one is imported first,
    the way a user's ``import`` would meet it (third-party packages stay loaded: they are slow)."""
    import diffusers  # noqa: F401
    import onnx  # noqa: F401
    import transformers  # noqa: F401

    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in PACKAGES}
    failures = []
    try:
        for name in module_names():
            for key in [k for k in sys.modules if k.split(".")[0] in PACKAGES]:
                del sys.modules[key]
            try:
                importlib.import_module(name)
            except Exception as exc:  # report every module that fails, not just the first
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
    finally:
        for key in [k for k in sys.modules if k.split(".")[0] in PACKAGES]:
            del sys.modules[key]
        sys.modules.update(saved)
    assert not failures, failures


def module_level_imports(name: str) -> set[str]:
    """Project modules imported at module level (imports inside functions run later and cannot cycle)."""
    path = ROOT / Path(*name.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    known = set(module_names())
    return {m for m in found if m in known and m != name}


def test_no_module_level_import_cycle():
    graph = {name: module_level_imports(name) for name in module_names()}
    # a package imports its submodules' parents implicitly: importing a.b.c runs a and a.b first
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for child in sorted(graph.get(node, ())):
            if state.get(child) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(child):] + [child]))
            if child not in state:
                visit(child, stack + [child])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])
