"""The package's modules import each other without a cycle, and its subpackages in layers."""

from __future__ import annotations

import ast

from tests.conftest import REPO

PACKAGE = REPO / "connectivity"


def import_graph() -> dict[str, set[str]]:
    """``{module: package modules it imports}``, counting imports inside functions too (a
    deferred import hides a cycle, it does not remove it)."""
    modules = {
        ".".join(file.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): file
        for file in PACKAGE.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, file in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from connectivity import x` names a module x or something of __init__.
                found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
        graph[name] = (found & set(modules)) - {name, "connectivity"}
    return graph


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert graph["connectivity.cli.main"] >= {
        "connectivity.cli.quickstart",
        "connectivity.cli.commands",
    }
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


# Each subpackage may import only the layers listed (and the top-level modules: errors, data,
# classifier, decoder, checkpoints, api). The engine is plain torch: no Lightning, no files.
LAYERS = {
    "engine": set(),
    "store": {"engine"},
    "lightning": {"engine", "store"},
    "reporting": {"engine", "store", "lightning"},
    "runs": {"engine", "store", "lightning", "reporting"},
    "cli": {"engine", "store", "lightning", "reporting", "runs"},
}


def _third_party(file) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
    return names


def test_subpackages_import_only_lower_layers() -> None:
    graph = import_graph()
    for module, imported in graph.items():
        parts = module.split(".")
        if len(parts) < 3 or parts[1] not in LAYERS:
            continue
        for target in imported:
            layer = target.split(".")[1]
            assert layer not in LAYERS or layer == parts[1] or layer in LAYERS[parts[1]], (
                f"{module} imports {target}: {parts[1]} may import only {sorted(LAYERS[parts[1]])}"
            )


def test_engine_is_plain_torch() -> None:
    for file in (PACKAGE / "engine").rglob("*.py"):
        assert not _third_party(file) & {"lightning", "wandb", "matplotlib", "jsonargparse"}, file
