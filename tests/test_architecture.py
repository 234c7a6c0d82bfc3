"""The package's shape: no import cycles between batchmagic modules.

The graph is read from the source with ``ast`` (nothing is imported): an edge A -> B for every
module-level import in A of a batchmagic module B, including imports in class bodies and
``try`` blocks (they run at import time), excluding imports inside functions (lazy on purpose)
and under ``if TYPE_CHECKING:``. Importing ``batchmagic.x.y`` also runs ``batchmagic/x/__init__``,
so that package is an edge too, unless it is an ancestor of the importer (already running).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "batchmagic"

def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(nodes) -> None:
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue  # runs when called, not when imported
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                visit(node.orelse)
            else:
                visit(ast.iter_child_nodes(node))

    visit(tree.body)
    return found


def _absolute(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(importer: str, is_package: bool, node, modules: dict[str, Path]) -> set[str]:
    names: set[str] = set()
    if isinstance(node, ast.Import):
        names = {alias.name for alias in node.names}
    else:
        source = _absolute(importer, is_package, node)
        names.add(source)
        names |= {f"{source}.{alias.name}" for alias in node.names}  # submodules by name
    found = set()
    for name in names:
        parts = name.split(".")
        for end in range(1, len(parts) + 1):  # the module and the packages it runs on the way
            candidate = ".".join(parts[:end])
            if candidate in modules and not importer.startswith(candidate + "."):
                found.add(candidate)
    found.discard(importer)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        graph[name] = set()
        for node in module_level_imports(tree):
            graph[name] |= _targets(name, is_package, node, modules)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of modules that import each other, largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups, key=len, reverse=True)


def a_cycle(graph: dict[str, set[str]], group: list[str]) -> list[str]:
    """One concrete cycle through the first module of ``group`` (for the failure message)."""
    members = set(group)
    start = group[0]
    path = [start]
    seen = {start}
    while True:
        nxt = sorted(n for n in graph[path[-1]] if n in members)
        back = [n for n in nxt if n == start]
        if back and len(path) > 1:
            return path + [start]
        fresh = [n for n in nxt if n not in seen]
        if not fresh:
            return path + [nxt[0]] if nxt else path
        path.append(fresh[0])
        seen.add(fresh[0])


def test_the_walker_skips_lazy_and_type_checking_imports():
    source = """
import a
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    import b
else:
    import c
try:
    import d
except ImportError:
    import e
class K:
    import f
    def method(self):
        import g
def function():
    import h
"""
    names = {alias.name for node in module_level_imports(ast.parse(source))
             for alias in node.names}
    assert names == {"a", "TYPE_CHECKING", "c", "d", "e", "f"}


def test_the_graph_sees_module_level_imports_only():
    graph = import_graph()
    assert "batchmagic._errors" in graph["batchmagic._backend"]
    assert "batchmagic.providers._wire" in graph["batchmagic.providers._openai"]
    # importing a submodule runs its package's __init__ too
    assert "batchmagic.providers" in graph["batchmagic.batchapi._client"]
    # engines load lazily: batchmagic/__init__ imports them inside functions only
    assert not any(m.startswith("batchmagic.engines") for m in graph["batchmagic"])


def test_a_cycle_is_found_and_spelled_out():
    graph = {"m.a": {"m.b"}, "m.b": {"m.c"}, "m.c": {"m.a"}, "m.d": {"m.a"}}
    groups = strongly_connected(graph)
    assert groups == [["m.a", "m.b", "m.c"]]
    assert a_cycle(graph, groups[0]) == ["m.a", "m.b", "m.c", "m.a"]


def maps_to_row_errors() -> list[str]:
    """Every dict literal in batchmagic/ whose values name two or more row error classes."""
    import batchmagic as bm

    row_errors = {name for name in dir(bm) if isinstance(getattr(bm, name), type)
                  and issubclass(getattr(bm, name), bm.RowError)}
    found = []
    for name, path in all_modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Dict):
                named = [v.id for v in node.values if isinstance(v, ast.Name)]
                if len(set(named) & row_errors) >= 2:
                    found.append(name)
    return sorted(found)


def test_error_classes_are_mapped_in_one_table_each():
    # outcome category -> row error, and wire failure -> row error
    assert maps_to_row_errors() == ["batchmagic._backend", "batchmagic.providers._wire"]


def test_no_import_cycles():
    graph = import_graph()
    cycles = [" -> ".join(a_cycle(graph, group)) for group in strongly_connected(graph)]
    assert not cycles, "import cycles in batchmagic/:\n" + "\n".join(cycles)


# --------------------------------------------------------------------------- refused methods


def _classes(tree: ast.Module) -> list[ast.ClassDef]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]


def _base_names(cls: ast.ClassDef) -> list[str]:
    """The names a class's bases go by (``Base`` or ``module.Base``)."""
    names = []
    for base in cls.bases:
        if isinstance(base, ast.Subscript):  # Generic[T], Base[int]
            base = base.value
        if isinstance(base, ast.Name):
            names.append(base.id)
        elif isinstance(base, ast.Attribute):
            names.append(base.attr)
    return names


def _methods(cls: ast.ClassDef) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    return {node.name: node for node in cls.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def only_raises(method: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A body that is a docstring (or none) and one ``raise``."""
    body = list(method.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    return len(body) == 1 and isinstance(body[0], ast.Raise)


def refused_methods(sources: dict[str, str]) -> list[str]:
    """``module.Class.method`` for each public method a class overrides with a body that only
    raises, where a base of it (a class of ``sources``, directly or further up) defines it."""
    classes: dict[str, list[ast.ClassDef]] = {}
    found_in: dict[int, str] = {}
    for module, text in sources.items():
        for cls in _classes(ast.parse(text)):
            classes.setdefault(cls.name, []).append(cls)
            found_in[id(cls)] = module

    def inherited(cls: ast.ClassDef, seen: set[str]) -> set[str]:
        names: set[str] = set()
        for base in _base_names(cls):
            for parent in classes.get(base, []):
                if base not in seen:
                    names |= set(_methods(parent)) | inherited(parent, seen | {base})
        return names

    refused = []
    for group in classes.values():
        for cls in group:
            promised = inherited(cls, {cls.name})
            refused += [f"{found_in[id(cls)]}.{cls.name}.{name}"
                        for name, method in _methods(cls).items()
                        if not name.startswith("_") and name in promised and only_raises(method)]
    return sorted(refused)


def test_the_refusal_check_finds_a_subclass_that_refuses_its_parents_method():
    sources = {"m.base": '''
class Job:
    def resubmit(self):
        return 1
    def _private(self):
        return 2
''', "m.child": '''
from m.base import Job
import m.base
class Adopted(Job):
    def resubmit(self, **kw):
        """Not here."""
        raise ValueError("made elsewhere")
    def _private(self):
        raise ValueError("private: allowed")
    def own(self):
        raise ValueError("not promised by a base: allowed")
class Deeper(m.base.Job):
    pass
class Deepest(Deeper):
    def resubmit(self):
        raise ValueError("refused two levels down")
class Extends(Job):
    def resubmit(self):
        """Checks first, then does the work."""
        check()
        raise ValueError("not only a raise: allowed")
class Unrelated:
    def resubmit(self):
        raise ValueError("no base: allowed")
'''}
    assert refused_methods(sources) == ["m.child.Adopted.resubmit", "m.child.Deepest.resubmit"]


def test_no_class_refuses_a_public_method_its_base_promises():
    sources = {name: path.read_text(encoding="utf-8") for name, path in all_modules().items()}
    assert refused_methods(sources) == [], (
        "a subclass that only raises in a public method its base defines breaks the base's "
        "contract: compose instead, or give the method one precondition on the base")


def test_a_ray_worker_gate_offers_everything_the_dispatcher_asks_of_a_gate():
    """A Ray worker's dispatcher is handed a ``ClusterGate`` in place of a ``RateGate``: a
    method the dispatcher calls that it lacks kills the worker's feeder and hangs the run (the
    way ``free`` once did)."""
    from batchmagic.executors._ray_shared import ClusterGate

    source = (PACKAGE_ROOT / "_dispatch.py").read_text()
    used = set(re.findall(r"\bgate\.([a-z_]+)", source))
    assert {"acquire", "free"} <= used
    missing = sorted(name for name in used if not hasattr(ClusterGate(None, None), name))
    assert not missing, f"ClusterGate lacks {missing}"
