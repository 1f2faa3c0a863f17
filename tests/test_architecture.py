"""The package's shape: no import cycles, and no source file grows past 400 lines.

The import graph is read from the source with :mod:`ast` (nothing is imported): every
``import scetm_mnn...`` and ``from ... import ...`` of the package, absolute or relative,
at module level, inside functions or under ``TYPE_CHECKING``, is an edge from the
importing module to the module it names: ``from .pkg import name`` is an edge to
``pkg.name`` when that is a module, else to ``pkg``. A package's ``__init__`` is the
package's node; the implicit import of a parent package is not an edge, and neither is
reading a package's metadata (``from .. import __version__``: a dunder, not code).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"
PACKAGE = "scetm_mnn"
MAX_LINES = 400
MODEL_MAX_LINES = 300
OVER_THE_LIMIT: dict[str, int] = {}
"""Files still longer than ``MAX_LINES``, each with its line count as a ceiling: they may
only shrink (lower the number when they do, remove the entry once under the limit). Empty
since every file was split by concept (#31); a new entry needs a reason in its commit."""


def _modules() -> dict[str, Path]:
    """``{dotted module name: file}`` for every module of the package."""
    modules = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imported(node: ast.AST, module: str, is_package: bool) -> list[tuple[str, str | None]]:
    """``(module named, name imported from it or None)`` of an import statement."""
    if isinstance(node, ast.Import):
        return [(alias.name, None) for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = module.split(".")
        if not is_package:
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [(target, alias.name) for alias in node.names]


def _module_of(name: str, modules: dict[str, Path]) -> str:
    """The longest prefix of the dotted ``name`` that is a module of the package."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def import_graph() -> dict[str, set[str]]:
    """``{module: the package's modules it imports}``."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for target, name in _imported(node, module, is_package):
                if name is not None and name.startswith("__") and name.endswith("__"):
                    continue  # metadata, e.g. __version__
                if name is not None and f"{target}.{name}" in modules:
                    target = f"{target}.{name}"  # a submodule
                target = _module_of(target, modules)
                if target.startswith(PACKAGE) and target != module:
                    edges.add(target)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle ``[a, b, ..., a]``, or ``None`` when the graph has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_sees_relative_function_level_and_type_checking_imports():
    graph = import_graph()
    assert "scetm_mnn.pp._corrected" in graph["scetm_mnn.model._setup"]  # from ..pp._corrected
    assert "scetm_mnn.pp" in graph["scetm_mnn"]  # from . import pp
    assert "scetm_mnn._rows" in graph["scetm_mnn.pp._latent"]  # from .._rows
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert "scetm_mnn.tl" in graph["scetm_mnn.pl._report_sections"]  # from .. import tl
    assert "scetm_mnn" not in graph["scetm_mnn.pl._report_sections"]  # not the package itself
    source = "def f():\n    from .x import y\nif TYPE_CHECKING:\n    import p.q\n"
    names = sorted(
        found
        for node in ast.walk(ast.parse(source))
        for found in _imported(node, "p.m", is_package=False)
    )
    assert names == [("p.q", None), ("p.x", "y")]


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "Import cycle: " + " -> ".join(cycle)


def test_no_file_over_the_line_limit():
    too_long, grown, stale = [], [], []
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        name = path.relative_to(SRC).as_posix()
        n_lines = len(path.read_text().splitlines())
        ceiling = OVER_THE_LIMIT.get(name)
        if ceiling is None and n_lines > MAX_LINES:
            too_long.append(f"{name}: {n_lines} lines")
        elif ceiling is not None and n_lines > ceiling:
            grown.append(f"{name}: {n_lines} lines, more than its ceiling {ceiling}")
    for name in OVER_THE_LIMIT:
        if not (SRC / name).is_file():
            stale.append(f"{name} no longer exists")
    assert not too_long, f"Files over {MAX_LINES} lines (split them by concept): " + "; ".join(
        too_long
    )
    assert not grown, "Files that were to shrink have grown: " + "; ".join(grown)
    assert not stale, "Remove from OVER_THE_LIMIT: " + "; ".join(stale)


def test_the_model_class_stays_short():
    # The user class holds its constructor, setup_anndata, train and the latent; every
    # other concept is a mixin in a file of its own (#31). Move new methods to a mixin.
    path = SRC / PACKAGE / "model" / "_scetm.py"
    n_lines = len(path.read_text().splitlines())
    assert n_lines <= MODEL_MAX_LINES, f"model/_scetm.py has {n_lines} lines"
