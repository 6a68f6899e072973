"""Throwaway databases for tests, one per test, on every backend.

SQLite and DuckDB get a file in the test's tmp_path; PostgreSQL and MariaDB get a fresh
database on the local server (see ``fresh_database``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

AVAILABLE = ("sqlite",)


@contextlib.contextmanager
def fresh_database(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'nbjobs.db'}"
        return
    raise ValueError(f"unknown test backend {backend!r}")
