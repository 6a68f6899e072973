"""The store's layering: small modules, imports that point down, an explicit composition.

The rules, read from the source (no database needed):

* every module of ``nbjobs/store`` is under 600 lines (``STYLE.md``'s budget);
* ``nbjobs/store`` imports, from nbjobs, only ``store/`` itself, ``dialects/`` and the
  leaves ``schema``, ``codec``, ``clock``, ``errors``, ``validation``,
  ``strategies`` and ``jobs``: never the engine (``app``, ``worker``, ``execution``, ``workflow``,
  ``waits``...), the notebook renderers or the dashboard.  Imports of every kind count:
  module-level, inside functions and under ``if TYPE_CHECKING:``;
* no method of ``Store`` depends on the order of its base classes: no ``super()`` call
  in the store, no method defined by two of its classes except the one declared hook
  (``_run_group``), and a ``Store`` with its bases reversed resolves every name to the
  same function.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from nbjobs.store import Store
from tests.support import ROOT

STORE = Path(ROOT) / "nbjobs" / "store"
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
#: Methods one class declares for a subclass to replace (never through ``super()``).
HOOKS = {"_run_group"}


def _store_modules() -> list[Path]:
    modules = sorted(STORE.glob("*.py"))
    assert len(modules) > 10, modules  # the glob found the package
    return modules


def _imported(path: Path) -> set[str]:
    """The nbjobs modules ``path`` imports, relative imports resolved."""
    package = "nbjobs.store"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
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
