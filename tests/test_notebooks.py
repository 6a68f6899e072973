"""Every notebook in notebooks/ runs top to bottom in a real kernel (nbval, lax mode).

Each notebook runs in its own pytest process, ``pytest --nbval-lax <name>.ipynb``, on a
copy in a temporary folder (the notebooks check their own results with asserts).
A notebook must also be saved clean: no outputs and no execution counts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    names = {p.stem for p in NOTEBOOKS}
    assert {"quickstart", "crash-recovery", "data-pipeline", "history-analysis"} <= names


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_saved_without_outputs(notebook: Path):
    cells = json.loads(notebook.read_text())["cells"]
    for cell in cells:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(notebook: Path, tmp_path):
    # A copy in a temporary folder: the files a notebook makes (its database, data) stay
    # out of the checkout, and two test sessions never share them.
    shutil.copy(notebook, tmp_path)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval-lax",
            "-p",
            "no:cacheprovider",
            "-q",
            "--timeout=240",
            notebook.name,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYDEVD_DISABLE_FILE_VALIDATION": "1"},
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.timeout(900)  # a fresh virtual environment, then every notebook
def test_binder_environment_runs_every_notebook(tmp_path):
    """A fresh virtual environment made from binder/ (requirements, then postBuild)."""
    venv = tmp_path / "binder-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)

    # The test tools are not part of Binder's environment; install them beside it.
    for step in (
        run(python, "-m", "pip", "install", "-q", "-r", "binder/requirements.txt"),
        run("bash", "binder/postBuild"),
        run(python, "-m", "pip", "install", "-q", "nbval", "pytest"),
    ):
        assert step.returncode == 0, step.stdout[-3000:] + step.stderr[-3000:]
    check = run(python, "-c", "import nbjobs, sys; print(nbjobs.__file__)")
    assert check.stdout.strip() == str(ROOT / "nbjobs" / "__init__.py"), check.stderr
    copies = tmp_path / "notebooks"
    copies.mkdir()
    for notebook in NOTEBOOKS:
        shutil.copy(notebook, copies)
    result = subprocess.run(
        [python, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q", "."],
        cwd=copies,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
