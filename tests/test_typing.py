"""The type checker is part of the test command: ``mypy nbjobs`` (configured in
``pyproject.toml``) must report no error.

mypy runs in a subprocess with its cache in the temporary directory, one per checkout, so
that a rerun checks only what changed (a few seconds instead of half a minute) and two
work trees never share, nor race on, a cache.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support import ROOT


def _cache_dir() -> Path:
    checkout = hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"nbjobs-mypy-{checkout}"


@pytest.mark.slow
def test_mypy_finds_no_error():
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(_cache_dir()), "nbjobs"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, f"mypy nbjobs failed:\n{done.stdout}{done.stderr}"
    assert "Success: no issues found" in done.stdout, done.stdout
