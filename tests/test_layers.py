"""The store's layering: small modules, imports that point down, an explicit composition.

The rules, read from the source (no database needed):

* every module of ``nbjobs/store`` is under 600 lines (``STYLE.md``'s budget);
* ``nbjobs/store`` imports, from nbjobs, only ``store/`` itself, ``dialects/`` and the
  leaves ``schema``, ``codec``, ``clock``, ``errors``, ``validation``,
  ``strategies`` and ``jobs``: never the engine (``app``, ``worker``, ``execution``, ``workflow``,
  ``waits``...), the notebook renderers or the dashboard.  Imports of every kind count:
  module-level, inside functions and under ``if TYPE_CHECKING:``;
* ``nbjobs/jobs.py`` (statuses, colours, the progress rule) is a leaf: no SQLAlchemy, and
  from nbjobs at most the other leaves;
* the notebook presentation (``nbjobs/notebook``) and the dashboard views
  (``nbjobs/views``) never import the App (``nbjobs.app``, nor the ``nbjobs`` package,
  which imports it): they are handed an app, a store or rows;
* no method of ``Store`` depends on the order of its base classes: no ``super()`` call
  in the store, no method defined by two of its classes except the one declared hook
  (``_run_group``), and a ``Store`` with its bases reversed resolves every name to the
  same function;
* the engine (``nbjobs/runtime``) never imports the App, the workflow and handle facade,
  the notebook renderers or the dashboard; ``import nbjobs`` loads no Panel;
* no import circle inside ``nbjobs`` but through type-only imports, and none of more
  than two files even counting those.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

from nbjobs.store import Store
from tests.support import ROOT

ROOT = Path(ROOT)
NBJOBS = ROOT / "nbjobs"
STORE = NBJOBS / "store"
MAX_LINES = 600
#: What nbjobs/store may import from nbjobs (a package name covers its modules).
ALLOWED = {
    "nbjobs.store",
    "nbjobs.dialects",
    "nbjobs.schema",
    "nbjobs.codec",
    "nbjobs.clock",
    "nbjobs.errors",
    "nbjobs.validation",
    "nbjobs.strategies",
    "nbjobs.jobs",
}
#: The modules without nbjobs imports of their own, which ``nbjobs/jobs.py`` may import.
LEAVES = {"nbjobs.errors", "nbjobs.clock", "nbjobs.validation"}
#: What the notebook presentation and the dashboard views must not import.
THE_APP = {"nbjobs", "nbjobs.app"}
#: Methods one class declares for a subclass to replace (never through ``super()``).
HOOKS = {"_run_group"}


def _store_modules() -> list[Path]:
    modules = sorted(STORE.glob("*.py"))
    assert len(modules) > 10, modules  # the glob found the package
    return modules


def _imports(path: Path, package: str | None = None, *, typing_too: bool = True) -> set[str]:
    """Every module ``path`` imports, relative imports resolved against ``package`` (by
    default the package ``path`` is in): module-level, in functions, under
    ``if TYPE_CHECKING:`` (not those with ``typing_too=False``)."""
    if package is None:
        package = ".".join(path.relative_to(ROOT).parent.parts)
    tree = ast.parse(path.read_text(), str(path))
    skip: set[int] = set()
    if not typing_too:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip.update(id(n) for n in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
                # "from . import migrations" names modules, not attributes
                names = [f"{module}.{a.name}" for a in node.names] if not node.module else []
                found.update(names or [module])
            else:
                found.add(node.module or "")
    return found


def _imported(path: Path, package: str | None = None, *, typing_too: bool = True) -> set[str]:
    """The nbjobs modules ``path`` imports (see :func:`_imports`)."""
    if package is None and not path.is_relative_to(ROOT):
        package = "nbjobs.store"  # a file written by a test stands in for a store module
    found = _imports(path, package, typing_too=typing_too)
    return {m for m in found if m == "nbjobs" or m.startswith("nbjobs.")}


def _allowed(module: str) -> bool:
    return any(module == a or module.startswith(a + ".") for a in ALLOWED)


def test_every_store_module_is_under_600_lines():
    sizes = {p.name: len(p.read_text().splitlines()) for p in _store_modules()}
    assert {n: s for n, s in sizes.items() if s >= MAX_LINES} == {}


def test_the_store_imports_only_the_layers_below_it():
    wrong = {
        path.name: sorted(m for m in _imported(path) if not _allowed(m))
        for path in _store_modules()
    }
    assert {n: m for n, m in wrong.items() if m} == {}
    # the check sees imports at all: the store does import the schema and the dialects
    everything = set().union(*(_imported(p) for p in _store_modules()))
    assert {"nbjobs.schema", "nbjobs.dialects", "nbjobs.store.core"} <= everything


def test_the_import_check_catches_an_engine_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ..app import App\n"
        "def f():\n    from .. import worker\n"
    )
    assert {m for m in _imported(bad) if not _allowed(m)} == {"nbjobs.app", "nbjobs.worker"}


def test_no_super_call_in_the_store():
    calls = [
        f"{path.name}:{node.lineno}"
        for path in _store_modules()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "super"
    ]
    assert calls == []


def _own_names(cls: type) -> set[str]:
    return {n for n in vars(cls) if not (n.startswith("__") and n.endswith("__"))}


def test_no_store_method_is_defined_by_two_of_its_classes():
    owners: dict[str, list[str]] = {}
    for cls in Store.__mro__[1:-1]:  # Store itself and object aside
        for name in _own_names(cls):
            owners.setdefault(name, []).append(cls.__name__)
    twice = {n: o for n, o in owners.items() if len(o) > 1}
    assert set(twice) == HOOKS, twice
    # A hook is replaced only by a subclass of the class that declares it, so the
    # replacement wins whatever the order of Store's bases.
    for name in HOOKS:
        classes = [c for c in Store.__mro__ if name in vars(c)]
        assert all(issubclass(classes[0], c) for c in classes[1:]), classes


def test_the_order_of_stores_bases_changes_nothing():
    reversed_store = type("ReversedStore", tuple(reversed(Store.__bases__)), {})
    names = {n for c in Store.__mro__[:-1] for n in _own_names(c)}
    assert "cancel_job" in names and "_after_terminal" in names
    differ = [n for n in sorted(names) if getattr(reversed_store, n) != getattr(Store, n)]
    assert differ == []


def test_every_store_class_inherits_what_it_calls():
    """``self.method(...)`` inside a store class names a method of that class or of its
    bases, never one that only a sibling mixin provides (which made the behaviour
    depend on how ``Store`` happened to be assembled)."""
    missing = []
    for path in _store_modules():
        module = importlib.import_module(f"nbjobs.store.{path.stem}")
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.ClassDef):
                continue
            cls = getattr(module, node.name)
            for call in ast.walk(node):
                if (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Attribute)
                    and isinstance(call.func.value, ast.Name)
                    and call.func.value.id == "self"
                    and not hasattr(cls, call.func.attr)
                ):
                    missing.append(f"{node.name}.{call.func.attr} ({path.name}:{call.lineno})")
    assert missing == []


def test_jobs_module_is_a_leaf():
    path = NBJOBS / "jobs.py"
    imports = _imports(path)
    assert {"enum", "typing"} <= imports  # the check sees its imports at all
    assert {m for m in imports if m.split(".")[0] == "sqlalchemy"} == set()
    assert _imported(path) - LEAVES == set()


def _presentation_modules() -> list[Path]:
    modules = sorted((NBJOBS / "notebook").glob("*.py")) + sorted((NBJOBS / "views").glob("*.py"))
    assert len(modules) > 10, modules  # both globs found their package
    return modules


def test_notebook_and_views_never_import_the_app():
    wrong = {
        f"{path.parent.name}/{path.name}": sorted(_imported(path) & THE_APP)
        for path in _presentation_modules()
    }
    assert {n: m for n, m in wrong.items() if m} == {}
    # the check resolves their relative imports: the views do import the notebook's HTML
    seen = set().union(*(_imported(p) for p in _presentation_modules()))
    assert {"nbjobs.notebook.display", "nbjobs.jobs", "nbjobs.views.base"} <= seen


def test_the_app_check_catches_every_kind_of_import(tmp_path):
    views = tmp_path / "nbjobs" / "views"
    views.mkdir(parents=True)
    for code in (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..app import App\n",
        "def f():\n    from .. import app\n",
        "import nbjobs.app\n",
        "from nbjobs import App\n",
    ):
        bad = views / "bad.py"
        bad.write_text(code)
        assert _imported(bad, "nbjobs.views") & THE_APP, code


# -- the whole package ------------------------------------------------------------------
ENGINE_MAY_NOT_IMPORT = (
    "nbjobs.app",
    "nbjobs.workflow",
    "nbjobs.handle",
    "nbjobs.notebook",
    "nbjobs.views",
    "nbjobs.dashboard",
    "nbjobs.cli",
    "nbjobs.demo",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if path.name == "__init__.py" else parts)


def _graph(*, typing_too: bool) -> dict[str, set[str]]:
    """Module -> the nbjobs modules it imports (a name that is an attribute, not a
    module, counts as its module)."""
    paths = {_module_name(p): p for p in (ROOT / "nbjobs").rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        targets = set()
        for module in _imported(path, typing_too=typing_too):
            while module not in paths and "." in module:
                module = module.rsplit(".", 1)[0]
            if module in paths and module != name and module != "nbjobs":
                targets.add(module)
        graph[name] = targets
    assert len(graph) > 40 and "nbjobs.runtime.worker" in graph  # it found the package
    return graph


def _circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_the_engine_never_imports_the_app_or_the_views():
    engine = sorted((ROOT / "nbjobs" / "runtime").glob("*.py"))
    assert len(engine) > 8, engine
    wrong = {
        path.name: sorted(
            m
            for m in _imported(path)
            if any(m == bad or m.startswith(bad + ".") for bad in ENGINE_MAY_NOT_IMPORT)
        )
        for path in engine
    }
    assert {n: m for n, m in wrong.items() if m} == {}


def test_no_import_circle_but_through_type_only_imports():
    assert _circles(_graph(typing_too=False)) == []
    assert [c for c in _circles(_graph(typing_too=True)) if len(c) > 2] == []


def test_the_circle_check_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(graph) == [{"a", "b", "c"}]


def test_import_nbjobs_loads_no_panel_nor_pandas():
    code = (
        "import sys, nbjobs\n"
        "print(sorted(m for m in ('panel', 'bokeh', 'pandas', 'ipywidgets') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
