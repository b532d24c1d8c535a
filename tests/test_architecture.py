"""The package's import graph, read from the source with ``ast`` (no third-party tool), and its rules.

Every ``import`` of a package module is an edge: module-level ones (including those under ``try``/``if``
and in class bodies, which run at import) and function-level ones (they run on first call, so a circle
hidden behind one is a circle all the same). Imports under ``if TYPE_CHECKING:`` never run; they are
counted separately and kept out of the cycles and chains, but obey the layering (a type hint knows the
module it names). Importing ``a.b.c`` also runs the package ``a.b`` unless it
is an ancestor of the importer (an ancestor always starts first); the root package is the public face
every import starts from, so an edge to it counts only when a module names it (``import
mlflow_lite_plugin``).

Run as a script (``python tests/test_architecture.py``) it prints the layers with what each imports,
the longest chains from the CLI to ``core/errors``, the import counts and any rule broken.
"""

from __future__ import annotations

import ast
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

PACKAGE = "mlflow_lite_plugin"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

# Bottom to top: a folder imports only folders in layers below its own (never a peer in its layer).
# Top-level modules are layers of their own: version.py and heap.py under everything (the flavor and
# the run tags read the version; whatever loads a heavy library freezes the heap), client.py under the
# integrations that build on it, and the package's face (__init__) above every library folder: its
# lazy names are loaded by importlib, which this graph cannot see, so nothing below may import it.
# The flavor sits under the workflows because an A/B test loads saved models; the test stub
# (testing/) sits with the apps, so no library code can come to depend on it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("version", "heap"),
    ("security",),
    ("tracing",),
    ("core",),
    ("storage",),
    ("controls",),
    ("cache",),
    ("prompts", "feedback"),
    ("client",),
    ("flavor", "plugins"),
    ("workflows",),
    ("__init__",),
    ("apps", "testing"),
)

CLI, ERRORS = f"{PACKAGE}.apps.cli", f"{PACKAGE}.core.errors"
# "No circles between folders, and at most 8 layers from the CLI down to errors" (issue 14): layers are
# the folder layers above, counted along the runtime import chain from apps/cli.py to core/errors.py
# that crosses the most of them, both ends included (the intended layering has exactly 8 from apps down
# to core). The chain's length in modules is printed too; it is not bounded, since a folder may layer
# its own modules as deep as its job needs.
MAX_LAYERS = 8


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    kind: str  # "module" (runs at import), "function" (runs on first call) or "typing" (never runs)
    implicit: bool = False  # a package that importing a submodule of it runs first


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module) -> list[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import statement with its kind, found by walking the tree with its context."""
    found: list[tuple[ast.Import | ast.ImportFrom, str]] = []

    def visit(node: ast.AST, kind: str) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append((node, kind))
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, "typing")
            for child in node.orelse:
                visit(child, kind)
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and kind == "module":
            kind = "function"
        for child in ast.iter_child_nodes(node):
            visit(child, kind)

    visit(tree, "module")
    return found


def _resolve(importer: str, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> list[str]:
    """The package modules an import statement names (a ``from`` of a submodule names the submodule)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = importer.split(".")
            if not _is_package(importer, modules):
                anchor = anchor[:-1]
            anchor = anchor[: len(anchor) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    targets = []
    for name in names:
        while name and name not in modules:  # `import a.b.c` where c is an attribute, or outside the package
            name = name.rpartition(".")[0]
        if name.split(".")[0] == PACKAGE and name not in targets:
            targets.append(name)
    return targets


def _parents(target: str, importer: str) -> list[str]:
    """Packages importing ``target`` runs first: not the root, not the importer's own ancestors."""
    parts = target.split(".")
    packages = [".".join(parts[:i]) for i in range(2, len(parts))]
    return [p for p in packages if not (importer == p or importer.startswith(p + "."))]


@cache
def statements() -> tuple[tuple[str, ast.Import | ast.ImportFrom, str], ...]:
    """Every import statement of the package: (module, statement, kind)."""
    found = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text(), filename=str(path))
        found.extend((name, node, kind) for node, kind in _imports(tree))
    return tuple(found)


@cache
def edges() -> tuple[Edge, ...]:
    modules = _modules()
    found = []
    for name, node, kind in statements():
        for target in _resolve(name, node, modules):
            found.extend(Edge(name, p, node.lineno, kind, implicit=True) for p in _parents(target, name))
            if target != name:
                found.append(Edge(name, target, node.lineno, kind))
    return tuple(found)


def graph(kinds: tuple[str, ...] = ("module", "function")) -> dict[str, set[str]]:
    result: dict[str, set[str]] = {name: set() for name in _modules()}
    for e in edges():
        if e.kind in kinds:
            result[e.source].add(e.target)
    return result


def folder(module: str) -> str:
    """The first-level subpackage a module lives in; top-level modules are their own folder."""
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def folder_graph() -> dict[str, set[str]]:
    result: dict[str, set[str]] = {}
    for source, targets in graph().items():
        result.setdefault(folder(source), set()).update(folder(t) for t in targets if folder(t) != folder(source))
    return result


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(g)))
    for v in sorted(g):
        if v not in index:
            strongconnect(v)
    return found


def longest_chain(
    g: dict[str, set[str]], start: str, end: str, step: Callable[[str, str], int] = lambda v, w: 1
) -> tuple[int, list[str]]:
    """The import chain from ``start`` down to ``end`` whose steps add up the most (each edge counts
    ``step(v, w)``; the start counts 1), and that sum. The graph must have no cycle."""
    best: dict[str, tuple[int, list[str]] | None] = {}
    started: set[str] = set()

    def visit(v: str) -> tuple[int, list[str]] | None:
        if v not in best:
            if v in started:
                raise ValueError(f"import cycle through {v}")
            started.add(v)
            found = None
            if v == end:
                found = (1, [v])
            for w in sorted(g.get(v, ())):
                tail = visit(w)
                if tail is not None and (found is None or tail[0] + step(v, w) > found[0]):
                    found = (tail[0] + step(v, w), [v, *tail[1]])
            best[v] = found
        return best[v]

    return visit(start) or (0, [])


def layer_chain() -> tuple[int, list[str]]:
    """The runtime chain from the CLI to errors that crosses the most folder layers, and that count."""
    return longest_chain(graph(), CLI, ERRORS, lambda v, w: int(folder(v) != folder(w)))


def loaded_by_the_package() -> set[str]:
    """The modules ``import mlflow_lite_plugin`` loads. Importing any module of the package runs the
    package first, so a function-level import of one of these defers nothing."""
    g = graph(("module",))
    seen: set[str] = set()
    todo = [PACKAGE]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(g[name])
    return seen


def idle_deferrals() -> list[str]:
    """Function-level imports of modules already loaded: without a cycle to dodge they defer nothing."""
    loaded = loaded_by_the_package()
    return [
        f"{_modules()[e.source].relative_to(PACKAGE_DIR.parent)}:{e.line} imports {_short(e.target)} in a function"
        for e in edges()
        if e.kind == "function" and not e.implicit and e.target in loaded
    ]


def layer_of(name: str) -> int:
    for i, layer in enumerate(LAYERS):
        if name in layer:
            return i
    raise KeyError(f"folder {name!r} is in no layer of LAYERS")


def layering_violations() -> list[str]:
    bad = []
    for e in edges():
        if e.implicit or folder(e.source) == folder(e.target):  # type hints are knowledge too: layered
            continue
        if layer_of(folder(e.source)) <= layer_of(folder(e.target)):
            path = _modules()[e.source].relative_to(PACKAGE_DIR.parent)
            bad.append(f"{path}:{e.line} ({e.kind}) imports {e.target}: {folder(e.source)} is not above "
                       f"{folder(e.target)}")
    return bad


def _short(module: str) -> str:
    return module.removeprefix(PACKAGE + ".") if module != PACKAGE else "__init__"


# --- the rules -------------------------------------------------------------------------------------


def test_imports_are_found_with_the_kind_that_says_when_they_run():
    tree = ast.parse(textwrap.dedent("""
        from typing import TYPE_CHECKING
        import mlflow_lite_plugin.core.errors
        try:
            from mlflow_lite_plugin.core import request
        except ImportError:
            request = None
        if TYPE_CHECKING:
            from mlflow_lite_plugin.core.response import Response
        else:
            import json
        class Holder:
            from mlflow_lite_plugin import client
        def load():
            from mlflow_lite_plugin.cache import stage
    """))
    assert [(ast.unparse(node), kind) for node, kind in _imports(tree)] == [
        ("from typing import TYPE_CHECKING", "module"),
        ("import mlflow_lite_plugin.core.errors", "module"),
        ("from mlflow_lite_plugin.core import request", "module"),
        ("from mlflow_lite_plugin.core.response import Response", "typing"),
        ("import json", "module"),
        ("from mlflow_lite_plugin import client", "module"),  # a class body runs at import
        ("from mlflow_lite_plugin.cache import stage", "function"),
    ]


def test_an_import_names_the_modules_it_runs():
    modules = _modules()
    request, client = f"{PACKAGE}.core.request", f"{PACKAGE}.client"

    def targets(source: str, importer: str = client) -> list[str]:
        (node,) = ast.parse(source).body
        assert isinstance(node, (ast.Import, ast.ImportFrom))
        return [_short(t) for t in _resolve(importer, node, modules)]

    assert targets("from mlflow_lite_plugin.core import errors, request as r") == ["core.errors", "core.request"]
    assert targets("from mlflow_lite_plugin.core.errors import ArgumentError") == ["core.errors"]
    assert targets("import mlflow_lite_plugin.core.errors") == ["core.errors"]
    assert targets("import mlflow_lite_plugin as ml") == ["__init__"]
    assert targets("from .errors import ArgumentError", request) == ["core.errors"]
    assert targets("from ..cache import stage", request) == ["cache.stage"]
    assert targets("import json, mlflow") == []
    # importing cache.stage runs the cache package first, unless the importer is inside it
    assert _parents(f"{PACKAGE}.cache.stage", client) == [f"{PACKAGE}.cache"]
    assert _parents(f"{PACKAGE}.cache.stage", f"{PACKAGE}.cache.keys") == []


def test_the_cycle_finder_finds_a_circle_and_the_chain_is_the_longest():
    g = {"a": {"b"}, "b": {"c", "d"}, "c": {"a"}, "d": set()}
    assert cycles(g) == [["a", "b", "c"]]
    dag = {"a": {"b", "d"}, "b": {"c"}, "c": {"d"}, "d": set()}
    assert longest_chain(dag, "a", "d") == (4, ["a", "b", "c", "d"])
    assert longest_chain(dag, "a", "d", lambda v, w: 5 if (v, w) == ("a", "d") else 1) == (6, ["a", "d"])
    with pytest.raises(ValueError, match="cycle"):
        longest_chain(g, "a", "d")


def test_every_folder_is_in_a_layer():
    for name in folder_graph():
        layer_of(name)


def test_no_circle_between_folders():
    assert cycles(folder_graph()) == []


def test_no_runtime_import_cycle_between_modules():
    found = cycles(graph())
    assert found == [], "\n".join(" <-> ".join(map(_short, c)) for c in found)


def test_folders_import_only_layers_below_them():
    bad = layering_violations()
    assert bad == [], "\n".join(bad)


def test_function_level_imports_defer_something():
    # A function-level import either defers a module (and whatever heavy library it loads: mlflow,
    # litellm, torch...) that `import mlflow_lite_plugin` does not load, or it is a top-level import.
    bad = idle_deferrals()
    assert bad == [], "\n".join(bad)


def test_cli_is_at_most_8_layers_above_errors():
    layers, chain = layer_chain()
    assert chain[0] == CLI and chain[-1] == ERRORS
    assert layers <= MAX_LAYERS, " -> ".join(map(_short, chain))



# What MLflow itself looks up by name: the flavor's loader (MLmodel names its module and MLflow calls
# ``_load_pyfunc`` there), re-exported by the flavor's face from the module that defines it.
PRIVATE_BY_CONTRACT = {"_load_pyfunc"}


def private_imports() -> list[str]:
    """``from <package module> import _name``: a private name crossing into another module."""
    return [
        f"{name}:{node.lineno} imports {alias.name} from {node.module}"
        for name, node, _kind in statements()
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE)
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__") and alias.name not in PRIVATE_BY_CONTRACT
    ]


def test_private_names_do_not_cross_modules():
    bad = private_imports()
    assert bad == [], "\n".join(bad)

def report() -> str:
    lines = ["Layers, bottom to top (a folder imports only layers below it):"]
    fg = folder_graph()
    for i, layer in enumerate(LAYERS):
        for name in layer:
            below = ", ".join(sorted(fg.get(name, ()), key=layer_of)) or "-"
            lines.append(f"  {i:2d} {name:10s} imports {below}")
    try:
        layers, chain = layer_chain()
        lines.append(f"From the CLI to errors: {layers} folder layers at most (the limit is {MAX_LAYERS}):")
        lines.append("  " + " -> ".join(map(_short, chain)))
        modules, chain = longest_chain(graph(), CLI, ERRORS)
        lines.append(f"  and {modules} modules on the longest chain: " + " -> ".join(map(_short, chain)))
    except ValueError as e:
        lines.append(f"From the CLI to errors: undefined, {e}")
    modules = _modules()
    for kind, label in (("module", "at module level"), ("function", "function-level"),
                        ("typing", "TYPE_CHECKING-only (not in the graph)")):
        found = [(name, node) for name, node, k in statements() if k == kind]
        inside = sum(bool(_resolve(name, node, modules)) for name, node in found)
        lines.append(f"Import statements {label}: {len(found)}, {inside} of them of package modules")
    for c in cycles(fg):
        lines.append("Folder circle: " + " <-> ".join(c))
    for c in cycles(graph()):
        lines.append("Module cycle: " + " <-> ".join(map(_short, c)))
    lines.extend("Layering: " + v for v in layering_violations())
    lines.extend("Deferring nothing: " + v for v in idle_deferrals())
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
