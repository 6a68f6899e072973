"""Throwaway databases for tests, one per test, on every backend.

SQLite and DuckDB get a file in the test's tmp_path.  PostgreSQL and MariaDB get a fresh
database on the local server (started by :mod:`tests.services` when it is down), named
``nbjobs_t_<pid>_<n>`` and dropped after the test: creating one costs a few milliseconds
on these servers, and a database per test isolates even a worker a test forgot to stop
(and PostgreSQL's NOTIFY channel, which is per database).  Databases left behind by a
killed test session are dropped when the next session first needs its server.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

from tests import services

AVAILABLE = ("sqlite", "postgres", "mysql", "duckdb")


def selected(*among: str) -> list[str]:
    """The backends under test (``NBJOBS_TEST_BACKENDS``, else all), limited to ``among``."""
    chosen = os.environ.get("NBJOBS_TEST_BACKENDS", ",".join(AVAILABLE)).split(",")
    return [b.strip() for b in chosen if b.strip() and (not among or b.strip() in among)]


PREFIX = "nbjobs_t_"
_counter = itertools.count()
_ready: dict[str, sa.Engine] = {}


def _admin(backend: str) -> sa.Engine:
    """An autocommit engine on the server's admin database; starts the server if needed."""
    if backend not in _ready:
        services.ensure(backend)
        engine = sa.create_engine(
            services.ADMIN_URL[backend], isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool
        )
        _drop_leftovers(backend, engine)
        _ready[backend] = engine
    return _ready[backend]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _list_databases(backend: str, conn: sa.Connection) -> list[str]:
    if backend == "postgres":
        names = conn.exec_driver_sql("SELECT datname FROM pg_database").scalars()
    else:
        names = conn.exec_driver_sql("SHOW DATABASES").scalars()
    return [n for n in names if n.startswith(PREFIX)]


def _drop(backend: str, conn: sa.Connection, name: str) -> None:
    if backend == "postgres":
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return
    # A connection a test leaked may hold a metadata lock that would block the drop.
    for (pid,) in conn.exec_driver_sql(
        "SELECT id FROM information_schema.processlist WHERE db = %s AND id <> CONNECTION_ID()",
        (name,),
    ):
        with contextlib.suppress(sa.exc.DBAPIError):
            conn.exec_driver_sql(f"KILL {int(pid)}")
    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")


def _drop_leftovers(backend: str, engine: sa.Engine) -> None:
    with engine.connect() as conn:
        for name in _list_databases(backend, conn):
            match = re.match(rf"{PREFIX}(\d+)_", name)
            if match and not _pid_alive(int(match.group(1))):
                _drop(backend, conn, name)


def server_url(backend: str, database: str) -> str:
    """The URL of ``database`` on the test server of ``backend``."""
    base = sa.make_url(services.ADMIN_URL[backend])
    return base.set(database=database).render_as_string(hide_password=False)


@contextlib.contextmanager
def server_database(backend: str) -> Iterator[str]:
    """A fresh empty database on the PostgreSQL or MariaDB test server; dropped after."""
    engine = _admin(backend)
    name = f"{PREFIX}{os.getpid()}_{next(_counter)}"
    with engine.connect() as conn:
        conn.exec_driver_sql(
            f'CREATE DATABASE "{name}"' if backend == "postgres" else f"CREATE DATABASE `{name}`"
        )
    try:
        yield server_url(backend, name)
    finally:
        with engine.connect() as conn:
            _drop(backend, conn, name)


@contextlib.contextmanager
def fresh_database(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'nbjobs.db'}"
    elif backend == "duckdb":
        yield f"duckdb:///{tmp_path / 'nbjobs.duckdb'}"
    elif backend in ("postgres", "mysql"):
        with server_database(backend) as url:
            yield url
    else:
        raise ValueError(f"unknown test backend {backend!r}; expected one of {AVAILABLE}")
