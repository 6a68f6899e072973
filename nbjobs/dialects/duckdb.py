"""DuckDB: one process at a time, its threads serialized; a documented fallback.

DuckDB has no row locks and lets only one process open a database file for writing.
nbjobs makes that explicit instead of leaving it to chance: the first process to open a
database takes an exclusive lock on ``<file>.nbjobs.lock`` for as long as it uses it, and
any other process gets a :class:`~nbjobs.errors.ConfigurationError` at ``App(...)`` (never
silent double execution).  Inside the process, write transactions (claims, checkpoints,
results) take a process-wide lock per database file, because DuckDB's optimistic
concurrency would abort one of two concurrent writers of the same row.  For several
processes or machines, use PostgreSQL.
"""

from __future__ import annotations

import fcntl
import functools
import os
import threading
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError

from ..errors import ConfigurationError
from .base import Dialect, safe_url

# Per database file in this process: the open lock file, how many dialects use it, and
# the lock that serializes write transactions.
_files: dict[str, tuple[int, int, threading.RLock]] = {}
_files_lock = threading.Lock()
#: Rows per multi-row ``INSERT`` of ``copy_rows``: 100 rows of the jobs table bind 3,600
#: parameters, and longer statements got slower.
COPY_ROWS = 100


class DuckDBDialect(Dialect):
    name = "duckdb"
    snapshot_reads = True
    multi_process = False
    claim_batch = 64

    def __init__(self, url: URL, **options: Any) -> None:
        super().__init__(url, **options)
        if not url.database or url.database == ":memory:":
            raise ConfigurationError(
                "nbjobs needs a DuckDB file shared by its threads, not an in-memory "
                "database; use e.g. duckdb:///nbjobs.duckdb"
            )
        self.path = os.path.realpath(url.database)
        # Held by the store around every write transaction of this process.
        self.write_lock = _acquire(self.path, safe_url(url))
        self._closed = False

    def engine_kwargs(self) -> dict[str, Any]:
        return {"pool_size": 8, "max_overflow": 32}

    def configure(self, engine: Engine) -> None:
        # duckdb_engine quotes identifiers by PostgreSQL's reserved words; DuckDB reserves
        # more (nbjobs_logs has a column named "at").  A copy, not the shared class set.
        preparer = engine.dialect.identifier_preparer
        preparer.reserved_words = set(preparer.reserved_words) | _reserved_words()
        engine.dialect.ddl_compiler = _full_indexes(engine.dialect.ddl_compiler)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _release(self.path)

    def copy_rows(self, conn: Connection, table: Any, rows: Sequence[dict[str, Any]]) -> bool:
        """Multi-row ``INSERT ... VALUES``, ``COPY_ROWS`` rows a statement: DuckDB runs an
        ``executemany`` one statement per row, five times slower."""
        quote = conn.dialect.identifier_preparer.quote
        names = [c.name for c in table.c]
        head = f"INSERT INTO {table.name} ({', '.join(quote(n) for n in names)}) VALUES "
        one = "(" + ", ".join("?" * len(names)) + ")"
        driver: Any = conn.connection.driver_connection
        for start in range(0, len(rows), COPY_ROWS):
            chunk = rows[start : start + COPY_ROWS]
            sql = head + ", ".join([one] * len(chunk))
            try:
                driver.execute(sql, [row.get(n) for row in chunk for n in names])
            except conn.dialect.loaded_dbapi.Error as exc:
                raise DBAPIError.instance(
                    head, None, exc, conn.dialect.loaded_dbapi.Error, dialect=conn.dialect
                ) from exc
        return True

    def add_column(self, conn: Connection, column: Any) -> None:
        # duckdb-engine cannot reflect columns (it asks for PostgreSQL's catalog);
        # DuckDB has ADD COLUMN IF NOT EXISTS.
        kind = column.type.compile(dialect=conn.dialect)
        conn.exec_driver_sql(
            f"ALTER TABLE {column.table.name} ADD COLUMN IF NOT EXISTS {column.name} {kind}"
        )

    def is_transient(self, exc: BaseException) -> bool:
        if isinstance(exc, DBAPIError) and "conflict" in str(exc.orig).lower():
            return True
        return super().is_transient(exc)


def _full_indexes(base: type) -> type:
    """duckdb_engine renders ``postgresql_where`` (partial indexes), which DuckDB refuses;
    a full index serves the same queries, so drop the WHERE here (this engine only)."""

    class DDLCompiler(base):
        def visit_create_index(self, create: Any, **kw: Any) -> str:
            text = super().visit_create_index(create, **kw)
            if create.element.dialect_options["postgresql"].get("where") is not None:
                text = text.partition(" WHERE ")[0]
            return text

    return DDLCompiler


@functools.cache
def _reserved_words() -> frozenset[str]:
    import duckdb

    with duckdb.connect() as conn:  # a private in-memory connection, not the global one
        rows = conn.execute(
            "SELECT keyword_name FROM duckdb_keywords() "
            "WHERE keyword_category IN ('reserved', 'type_function')"
        ).fetchall()
    return frozenset(k for (k,) in rows)


def _acquire(path: str, shown: str) -> threading.RLock:
    with _files_lock:
        if path in _files:
            fd, users, writes = _files[path]
            _files[path] = (fd, users + 1, writes)
            return writes
        lock_path = path + ".nbjobs.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigurationError(
                f"another process is using the DuckDB database {shown}: DuckDB runs nbjobs in "
                "one process at a time (no row locks). Stop the other process, or use "
                "PostgreSQL for several worker processes"
            ) from None
        writes = threading.RLock()
        _files[path] = (fd, 1, writes)
        return writes


def _release(path: str) -> None:
    with _files_lock:
        fd, users, writes = _files[path]
        if users > 1:
            _files[path] = (fd, users - 1, writes)
            return
        del _files[path]
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
