"""The public surface: what ``import nbjobs`` pulls in, and what it exports."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys

import nbjobs
import nbjobs.errors
from tests.support import ROOT

HEAVY = ("panel", "pandas", "ipywidgets", "bokeh")


def _modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return {name.split(".")[0] for name in done.stdout.split()}


def test_import_does_not_pull_in_ui_or_dataframe_libraries():
    assert not set(HEAVY) & _modules_after("import nbjobs")


def test_the_command_line_library_loads_only_with_the_command():
    """click is imported by ``nbjobs.cli``, which only the ``nbjobs`` command imports."""
    assert "click" not in _modules_after("import nbjobs")
    assert "click" in _modules_after("import nbjobs.cli")


def test_running_a_worker_does_not_pull_them_in_either(tmp_path):
    code = f"""
import nbjobs
app = nbjobs.App("sqlite:///{tmp_path / "x.db"}", poll_seconds=0.05)
@app.workflow
def hello(cs, name):
    return cs.checkpoint("greet", lambda: "hi " + name)
with app.running(concurrency=1):
    assert hello.submit("x").result(timeout=60) == "hi x"
    assert hello.run("y") == "hi y"
app.close()
"""
    assert not set(HEAVY) & _modules_after(code)


def test_public_names_are_exported_once():
    exported = nbjobs.__all__
    assert len(exported) == len(set(exported))
    for name in exported:
        assert hasattr(nbjobs, name), name
    tree = ast.parse(inspect.getsource(nbjobs))
    imported = [
        a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names
    ]
    assert len(imported) == len(set(imported)), "a name is imported twice"
    public = {
        n
        for n in vars(nbjobs)
        if not n.startswith("_") and not inspect.ismodule(getattr(nbjobs, n))
    }
    assert public <= set(exported), public - set(exported)


def test_contract_names_live_where_they_should():
    homes = {
        "App": "nbjobs.app",
        "CallState": "nbjobs.runtime.callstate",
        "JobHandle": "nbjobs.handle",
        "Status": "nbjobs.jobs",
    }
    for name, module in homes.items():
        assert getattr(nbjobs, name).__module__ == module, name
    for name in (
        "NbjobsError", "JobFailed", "JobCancelled", "FanOutError", "DuplicateCheckpoint",
        "SignalTimeout", "SerializationError", "ConfigurationError",
    ):  # fmt: skip
        assert getattr(nbjobs, name).__module__ == "nbjobs.errors", name
    assert isinstance(nbjobs.__version__, str) and nbjobs.__version__


def test_every_exception_derives_from_nbjobs_error():
    exported = [getattr(nbjobs, n) for n in nbjobs.__all__]
    errors = [e for e in exported if isinstance(e, type) and issubclass(e, BaseException)]
    assert len(errors) >= 9
    for error in errors:
        assert issubclass(error, nbjobs.NbjobsError), error
    assert issubclass(nbjobs.ResultTimeout, TimeoutError)
    # Every public exception of nbjobs.errors is exported; the internal ones are not
    # catchable by a user's `except Exception` (control flow must not be swallowed).
    for name, obj in vars(nbjobs.errors).items():
        if isinstance(obj, type) and issubclass(obj, BaseException):
            if name.startswith("_"):
                assert not issubclass(obj, Exception), name
            else:
                assert name in nbjobs.__all__, name
