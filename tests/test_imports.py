"""The import rules of docs/map.md, read from the source with ``ast`` (nothing is imported).

* The framework (``bench/``) never imports a plug-in module (``attacks.*``, ``defenses.*``) by name:
  it finds plug-ins through the registries (whose lists of built-in modules are strings).
* Plug-ins (``attacks/``, ``defenses/``) never import the results store, the scheduler (planning,
  dispatch, console) or the reports: a plug-in is handed what it needs, it does not go looking.
* Defenses never import attacks: a defense knows nothing of the attack it faces.
* No import cycles among the framework's modules. Only imports that run when a module is loaded
  count (its top level, classes, ``try``/``if`` blocks); an import inside a function runs when the
  function is called, and one under ``if TYPE_CHECKING:`` never runs, so both are allowed: that is
  how a low-level module may name a higher one.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_PACKAGES = ("attacks", "defenses")
FORBIDDEN_IN_PLUGINS = ("bench.store", "bench.scheduler", "bench.plan", "bench.dispatch", "bench.console",
                        "bench.watchdog", "bench.cli", "bench.reports", "bench.report", "bench.compare")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _resolve(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` statement reads from."""
    if not node.level:
        return node.module or ""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(path: Path, load_time_only: bool = False) -> list[tuple[str, int]]:
    """``(module, line)`` for every module ``path`` imports; with ``load_time_only``, only those
    imported when the module is loaded. ``from pkg import name`` counts as ``pkg.name`` when that
    is a module of this source tree, else as ``pkg``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if load_time_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if load_time_only and isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.orelse:
                    visit_stmt(stmt)
                continue
            visit_stmt(child)

    def visit_stmt(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(path, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if _is_source_module(sub) else base, node.lineno))
        visit(node)

    visit(tree)
    return found


def _is_source_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (ROOT / rel).with_suffix(".py").exists() or (ROOT / rel / "__init__.py").exists()


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(package: str, forbidden) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{line} imports {name}"
            for path in source_files(package) for name, line in imports(path) if _within(name, forbidden)]


def test_framework_never_imports_a_plugin_module_by_name():
    assert violations("bench", PLUGIN_PACKAGES) == []


def test_plugins_never_import_the_store_scheduler_or_reports():
    bad = violations("attacks", FORBIDDEN_IN_PLUGINS) + violations("defenses", FORBIDDEN_IN_PLUGINS)
    assert bad == []


def test_defenses_never_import_attacks():
    assert violations("defenses", ("attacks",)) == []


def import_graph() -> dict[str, set[str]]:
    """Framework module -> the framework modules it imports when loaded."""
    files = {module_name(p): p for p in source_files("bench")}
    return {name: {m for m, _ in imports(path, load_time_only=True) if m in files and m != name}
            for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
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

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_cycle_finder_finds_a_cycle_and_ignores_a_chain():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_import_parser_tells_load_time_imports_from_lazy_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub.py").write_text("")
    mod = tmp_path / "pkg" / "mod.py"
    mod.write_text("from typing import TYPE_CHECKING\nfrom . import sub\nimport os\n"
                   "if TYPE_CHECKING:\n    import pkg.typed\n"
                   "def f():\n    import pkg.lazy\n")
    assert [m for m, _ in imports(mod, load_time_only=True)] == ["typing", "pkg.sub", "os"]
    assert {"pkg.typed", "pkg.lazy"} <= {m for m, _ in imports(mod)}


def test_no_import_cycles_among_framework_modules():
    graph = import_graph()
    assert len(graph) > 10 and any(graph.values())  # the parser sees the framework and its imports
    assert cycles(graph) == []
