"""The package's modules import each other without a cycle (issue 9: one CLI, no import cycles)."""

from __future__ import annotations

import ast

from tests.conftest import REPO

PACKAGE = REPO / "connectivity"


def _imports() -> dict[str, set[str]]:
    """``{module: package modules it imports}``, counting imports inside functions too (a
    deferred import hides a cycle, it does not remove it)."""
    modules = {f"connectivity.{file.stem}": file for file in PACKAGE.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, file in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from connectivity import x` names a module x or something of __init__.
                found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
        graph[name] = (found & set(modules)) - {name, "connectivity.__init__"}
    return graph


def test_no_import_cycles() -> None:
    graph = _imports()
    assert graph["connectivity.cli"] >= {"connectivity.quickstart", "connectivity.commands"}
    done: set[str] = set()

    def visit(module: str, stack: list[str]) -> None:
        if module in stack:
            raise AssertionError("import cycle: " + " -> ".join([*stack, module]))
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, [*stack, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
