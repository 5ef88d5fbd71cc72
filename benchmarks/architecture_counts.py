"""Counts that say whether the code follows its architecture, read from the source with ``ast`` (no grep
heuristics): format names compared as strings, model-structure probes outside the adapters, the old
shared dict, private names imported from another module, ``sys.path`` patches, file import cycles,
imports against the layer order (docs/architecture.md), README length, and results JSONs that record
where they came from.

    python benchmarks/architecture_counts.py [--output benchmarks/results/architecture_counts.json]
"""
from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

from harness import RESULTS, ROOT, write_results

PACKAGES = ("compressor", "calibrators", "exporters")
# Every name a weight format, input format or scheme goes by, and the float "scheme".
FORMAT_NAMES = {
    "int8", "fp8", "nvfp4", "mxfp4", "int4", "int3", "vq", "vq2", "vq3", "float", "none",
    "w4a16-nvfp4", "w4a16-mxfp4", "w4a16-int4", "w8a16-int8", "w3a16-int3", "w4a8-int4", "w4a8-nvfp4",
    "vq3-int8", "vq2-int8", "vq3-fp8", "uint8",
}
PROBED = ("model", "adapter", "handle")
PROVENANCE_KEYS = ("commit", "date_utc", "versions")
# The layer order, lowest first: a module may import from its own layer and the ones below it.
FOUNDATION = ("compressor.errors", "compressor.registry")
ENTRY_POINTS = ("compressor", "compressor.__main__", "compressor.cli", "compressor.compare",
                "compressor.pipeline")


def source_files(packages=PACKAGES) -> list[Path]:
    return [p for package in packages for p in sorted((ROOT / package).rglob("*.py"))]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _strings(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for element in node.elts for s in _strings(element)]
    return []


def format_comparisons(tree: ast.AST) -> list[int]:
    """Lines comparing something with a format name literal (==, !=, in, not in)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            literals = [s for side in (node.left, *node.comparators) for s in _strings(side)]
            if any(s in FORMAT_NAMES for s in literals):
                lines.append(node.lineno)
    return lines


def _names_probed(node: ast.AST) -> bool:
    text = ast.unparse(node)
    return any(word in text for word in PROBED)


def structure_probes(tree: ast.AST) -> list[int]:
    """Lines with ``.kind ==``/``!=`` or ``hasattr(<model, adapter or handle>, ...)``."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and isinstance(node.ops[0], (ast.Eq, ast.NotEq)) and any(
                isinstance(side, ast.Attribute) and side.attr == "kind" for side in (node.left, *node.comparators)):
            lines.append(node.lineno)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "hasattr" \
                and node.args and _names_probed(node.args[0]):
            lines.append(node.lineno)
    return lines


def shared_dict_uses(text: str) -> int:
    return text.count("context.shared")


def imports(tree: ast.AST, name: str, top_level_only: bool) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) of each project import; relative imports resolved."""
    found = []
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    package = name if name.count(".") == 0 else name.rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None or isinstance(node, ast.ImportFrom) and node.level:
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            found.append((module, [alias.name for alias in node.names], node.lineno))
    return found


def private_imports(tree: ast.AST, name: str) -> list[str]:
    """``from X import _name`` where X is another module (ours or a library's)."""
    return [f"{module}.{n}" for module, names, _ in imports(tree, name, False) for n in names
            if n.startswith("_") and not n.startswith("__") and module != name]


def import_graph(top_level_only: bool) -> dict[str, set[str]]:
    files = {module_name(p): p for p in source_files()}
    graph = {}
    for name, path in files.items():
        edges = set()
        for module, names, _ in imports(ast.parse(path.read_text(encoding="utf-8")), name, top_level_only):
            for candidate in (module, *(f"{module}.{n}" for n in names)):
                if candidate in files and candidate != name:
                    edges.add(candidate)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for child in graph.get(node, ()):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer_of(module: str) -> int:
    """0: the errors and registries everything shares; 1: calibrators; 2: the compressor core; 3: exporters;
    4: the entry points (the package API, cli, compare, pipeline)."""
    if module in FOUNDATION:
        return 0
    if module in ENTRY_POINTS:
        return 4
    return {"calibrators": 1, "compressor": 2, "exporters": 3}[module.split(".")[0]]


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    return [f"{a} -> {b}" for a, edges in sorted(graph.items()) for b in sorted(edges) if layer_of(b) > layer_of(a)]


def touches_sys_path(tree: ast.AST) -> bool:
    return any(isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
               and node.value.id == "sys" for node in ast.walk(tree))


def sys_path_files() -> list[str]:
    files = [p for folder in ("benchmarks", "examples") for p in sorted((ROOT / folder).rglob("*.py"))]
    return [str(p.relative_to(ROOT)) for p in files if touches_sys_path(ast.parse(p.read_text(encoding="utf-8")))]


def results_provenance() -> tuple[int, list[str]]:
    """(results JSONs, those without commit, date and versions in their provenance)."""
    files = sorted(RESULTS.rglob("*.json"))
    missing = []
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        provenance = data.get("provenance", {}) if isinstance(data, dict) else {}
        if not all(provenance.get(key) for key in PROVENANCE_KEYS):
            missing.append(str(path.relative_to(ROOT)))
    return len(files), missing


def measure() -> dict:
    per_file = {}
    totals = {"format_name_comparisons": 0, "structure_probes_outside_adapters": 0, "context_shared": 0,
              "private_imports": 0}
    for path in source_files():
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        name = module_name(path)
        found = {"format_name_comparisons": format_comparisons(tree),
                 "structure_probes_outside_adapters": [] if ".adapters" in name else structure_probes(tree),
                 "context_shared": shared_dict_uses(text), "private_imports": private_imports(tree, name)}
        for key, value in found.items():
            totals[key] += value if isinstance(value, int) else len(value)
        found = {k: v for k, v in found.items() if v}
        if found:
            per_file[str(path.relative_to(ROOT))] = found
    full, top_level = import_graph(False), import_graph(True)
    results, missing = results_provenance()
    readme = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    return {
        **totals,
        "sys_path_files": sys_path_files(),
        "readme_lines": readme,
        "docs_files": sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")),
        "results_jsons": results, "results_without_provenance": missing,
        "import_cycles_module_level": cycles(top_level),
        "import_cycles_with_function_imports": cycles(full),
        "layering_violations": layering_violations(full),
        "where": per_file,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(RESULTS / "architecture_counts.json"))
    args = parser.parse_args()
    counts = measure()
    for key, value in counts.items():
        if key != "where":
            print(f"{key}: {value if not isinstance(value, list) or len(value) < 6 else f'{len(value)} items'}")
    write_results(args.output, counts)


if __name__ == "__main__":
    main()
