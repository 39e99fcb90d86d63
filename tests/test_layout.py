"""The package layout the README describes: no import cycles (function-level imports included)
and the FeLIF equations importing nothing else from the project."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("bruno", "calibration", "pipelines")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """module -> project modules it imports anywhere in its body (``from a import b`` counts as
    importing ``a.b`` when that is a module, else ``a``)."""
    modules = {
        _module_name(path): path for package in PACKAGES for path in (REPO / package).rglob("*.py")
    }
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for other in sorted(graph[node]):
            if state.get(other) == "open":
                found.append([*stack[stack.index(other) :], other])
            elif other not in state:
                visit(other)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_no_import_cycles():
    graph = import_graph()
    # a package's own __init__ importing its submodules is not a cycle when they do not import
    # the package back; everything else must be acyclic
    assert _cycles(graph) == []


def test_the_cycle_check_sees_function_level_imports(tmp_path):
    assert _cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]
    graph = import_graph()
    # calibration.felif.fit imports bruno.device inside a function: it must be in the graph
    assert "bruno.device" in graph["calibration.felif.fit"]


def test_felif_equations_import_nothing_from_the_project():
    assert import_graph()["bruno.felif"] == set()
