"""Modules import one way: no import cycle in tcore/ (tcore/io included) or training/, counting the
imports inside functions, and the model layer imports in the order its docstring gives. And no
function in tcore/ is longer than 80 lines of code (its docstring aside) unless its docstring says
why ("Long on purpose: ...").

The import graph is read with `ast` from the source files; an edge goes to the module an import
names (`from .x import y` -> `x`, or `x.y` when that is a module). Imports under
`if TYPE_CHECKING:` never run and are left out.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

# the model layer, bottom first: each module may import only modules before it (and _version)
MODEL_LAYER = ["constants", "errors", "files", "devices", "architecture", "checkpoint", "weights", "hub", "backbone", "models",
               "timm_registry"]


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at module level or in functions, except under `if TYPE_CHECKING:`."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the modules of the same top-level package it imports (anywhere in its source)."""
    files = {_module_name(root, p): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            graph[name] |= {t for t in targets if t in files and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_detector_finds_a_cycle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub.b import f\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import g\n    return g\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f\n")
    graph = import_graph(pkg)
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    assert graph["pkg.c"] == set()  # TYPE_CHECKING imports never run


@pytest.mark.parametrize("package", ["tcore", "tcore.io", "training"])
def test_no_import_cycle(package):
    graph = {m: e for m, e in import_graph(REPO / package.split(".")[0]).items()
             if m == package or m.startswith(f"{package}.")}
    cycle = find_cycle({m: e & graph.keys() for m, e in graph.items()})
    assert cycle is None, f"import cycle in {package}: {' -> '.join(cycle)}"


def test_the_model_layer_imports_downwards_only():
    graph = import_graph(REPO / "tcore")
    for i, name in enumerate(MODEL_LAYER):
        allowed = {f"tcore.{m}" for m in MODEL_LAYER[:i]} | {"tcore._version"}
        assert graph[f"tcore.{name}"] <= allowed, (name, sorted(graph[f"tcore.{name}"] - allowed))


def test_errors_and_the_release_registry_import_without_torch():
    """The command line catches tcore's errors, and timm registration reads the registry, without torch."""
    code = "import sys, tcore.errors, tcore.weights; print([m for m in ('torch', 'timm') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_function_in_tcore_is_longer_than_80_lines_without_a_reason():
    too_long = []
    for path in sorted((REPO / "tcore").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=False)
                doc_lines = node.body[0].end_lineno - node.body[0].lineno + 1 if doc else 0
                code = node.end_lineno - node.lineno + 1 - doc_lines
                if code > 80 and "Long on purpose:" not in (doc or ""):
                    too_long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({code} lines)")
    assert not too_long, "split these, or say at their top why not (\"Long on purpose: ...\"): " + ", ".join(too_long)
