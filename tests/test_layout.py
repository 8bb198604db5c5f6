"""The package's import graph: no cycles, and imports flow one way between the layers
core ← data ← bundled ← training ← tools ← commands (docs/architecture.md).

Every module under src/heartlora is parsed with `ast`, so imports inside functions count too.
The facade ``heartlora/__init__.py`` only re-exports, and stays outside the graph. Imports under
``if TYPE_CHECKING:`` never run, but they count for both checks: a cycle that only annotations
close is still two modules that need each other (a core module may not even name a training
type).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "heartlora"
FACADE = PACKAGE

LAYERS = ("core", "data", "bundled", "training", "tools", "commands")
"""Lowest first: a module may import from its own layer and the layers before it."""

ALLOWED_EXCEPTIONS: dict[tuple[str, str], str] = {}
"""(importer, imported) edges that break the layering on purpose, each with its reason."""


def module_files(source: Path = SOURCE, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name → file, for every module of ``package`` (packages by their
    ``__init__``)."""
    modules = {}
    for path in sorted((source / package).rglob("*.py")):
        parts = path.relative_to(source).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST, type_checking: bool) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in ``tree``, at any depth; without ``type_checking``, those under
    ``if TYPE_CHECKING:`` are skipped."""
    nodes, stack = [], [tree]
    while stack:
        node = stack.pop()
        if not type_checking and isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            nodes.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return nodes


def _imports(
    tree: ast.AST, module: str, is_package: bool, known: set[str], type_checking: bool
) -> set[str]:
    """The modules of ``known`` that an ``import`` or ``from … import`` anywhere in ``tree``
    names: ``import a.b`` → ``a.b``; ``from a import b`` → ``a.b`` when that is a module, else
    ``a``. Parent packages that Python also runs on the way are not counted."""
    found: set[str] = set()
    for node in _import_nodes(tree, type_checking):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return found & known


def import_graph(
    modules: dict[str, Path], facade: str = FACADE, type_checking: bool = True
) -> dict[str, set[str]]:
    """Module → the package-internal modules it imports, the facade left out on both ends;
    ``type_checking=False`` leaves out the imports under ``if TYPE_CHECKING:``."""
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        if module == facade:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets = _imports(tree, module, path.name == "__init__.py", set(modules), type_checking)
        graph[module] = targets - {facade, module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, …, a]``, or None when the graph has none."""
    state: dict[str, str] = {}  # "open" while on the DFS path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def layer_of(module: str) -> str:
    """The layer a module belongs to; the CLI entry points count as commands."""
    parts = module.split(".")
    if len(parts) == 2 and parts[1] in ("cli", "__main__"):
        return "commands"
    if len(parts) >= 2 and parts[1] in LAYERS:
        return parts[1]
    return "core"


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every edge from a lower layer to a higher one, except `ALLOWED_EXCEPTIONS`."""
    violations = []
    for module, targets in sorted(graph.items()):
        rank = LAYERS.index(layer_of(module))
        for target in sorted(targets):
            if LAYERS.index(layer_of(target)) > rank and (module, target) not in ALLOWED_EXCEPTIONS:
                violations.append(
                    f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})"
                )
    return violations


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    """Every import, annotation-only ones included."""
    return import_graph(module_files())


@pytest.fixture(scope="module")
def runtime_graph() -> dict[str, set[str]]:
    """The imports that run."""
    return import_graph(module_files(), type_checking=False)


def test_the_graph_holds_every_module_but_the_facade(graph):
    files = list((SOURCE / PACKAGE).rglob("*.py"))
    assert len(graph) == len(files) - 1 and FACADE not in graph
    assert {"heartlora.config", "heartlora.data", "heartlora.cli"} <= set(graph)
    assert "heartlora.config" in graph["heartlora.training.config"]


def test_no_import_cycles(runtime_graph):
    cycle = find_cycle(runtime_graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_no_import_cycles_even_through_type_checking_imports(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle (annotations included): " + " → ".join(cycle)


def test_imports_flow_one_way_between_layers(graph):
    violations = layering_violations(graph)
    assert not violations, "layering broken:\n" + "\n".join(violations)


def test_allowed_exceptions_are_real_edges_with_reasons(graph):
    for (module, target), reason in ALLOWED_EXCEPTIONS.items():
        assert target in graph.get(module, set()), f"stale exception {module} → {target}"
        assert reason.strip(), f"{module} → {target} needs a reason"


def test_cycle_finder_and_layer_checker_on_synthetic_graphs(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    assert find_cycle({"x": {"a"}, "a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert layering_violations({"heartlora.config": {"heartlora.training.trainer"}}) == [
        "heartlora.config (core) imports heartlora.training.trainer (training)"
    ]
    assert not layering_violations({"heartlora.cli": {"heartlora.tools.export"}})
    # a package written to disk: a cycle hidden in a function body is found
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from pkg.a import f\n")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("def g():\n    from pkg.sub.c import h\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nimport pkg.a\nif TYPE_CHECKING:\n    import pkg.b\n"
    )
    synthetic = import_graph(module_files(tmp_path, "pkg"), facade="pkg")
    assert synthetic == {
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.sub.c"},
        "pkg.sub": set(),
        "pkg.sub.c": {"pkg.a", "pkg.b"},
    }
    assert find_cycle(synthetic) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]
    runtime = import_graph(module_files(tmp_path, "pkg"), facade="pkg", type_checking=False)
    assert runtime["pkg.sub.c"] == {"pkg.a"}
