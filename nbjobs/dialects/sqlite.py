"""SQLite: WAL, a busy timeout, and ``BEGIN IMMEDIATE`` for the short write transactions.

SQLite has no row locks and no SKIP LOCKED; it has one writer at a time.  Taking the
write lock up front (``BEGIN IMMEDIATE``) makes every claim an atomic conditional
``UPDATE ... RETURNING`` that two processes can never both win, and avoids the
deadlock-prone upgrade from a read lock.  No lock is ever held while user code runs.
"""

from __future__ import annotations

import itertools
import logging
import operator
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from sqlalchemy import Engine, bindparam, event, func, insert
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError, OperationalError

from ..errors import ConfigurationError, DatabaseLost
from ..schema import jobs
from .base import Dialect
from .sqlite_wake import ChangeWatch

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
#: How often the checkpointer copies the WAL into the database while there are writes.
CHECKPOINT_SECONDS = 0.25
#: WAL frames (1 KiB pages) past which a checkpoint also restarts the WAL: see
#: ``SQLiteDialect._checkpoint_loop``.
RESTART_FRAMES = 4096
#: How long a restarting checkpoint may hold up writers, waiting for readers (ms).
RESTART_WAIT_MS = 20
#: Rows per multi-row ``INSERT`` of ``copy_rows`` (fewer when they would bind more
#: parameters than the library allows): past ten rows a statement the gain is flat.
COPY_ROWS = 100

log = logging.getLogger(__name__)


class SQLiteDialect(Dialect):
    name = "sqlite"
    snapshot_reads = True
    claim_batch = 64
    keep_connections = True
    read_fence = True
    rowids = True
    group_commit = True

    def claim_cap(self, limit: int, left: Any) -> Any:
        return func.min(limit, func.max(0, left))

    def __init__(self, url: URL, **options: Any) -> None:
        super().__init__(url, **options)
        if not url.database or url.database == ":memory:" or "mode=memory" in str(url):
            raise ConfigurationError(
                "nbjobs needs a SQLite file shared by its threads and processes, not an "
                "in-memory database; use e.g. sqlite:///nbjobs.db"
            )
        self.synchronous = str(options.get("sqlite_synchronous", "NORMAL")).upper()
        if self.synchronous not in SYNCHRONOUS_MODES:
            raise ConfigurationError(
                f"sqlite_synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, "
                f"got {self.synchronous!r}"
            )
        # NORMAL (the default) syncs at WAL checkpoints only: a power loss may undo the
        # last commits, never corrupt the file.
        self.durable_commits = self.synchronous in ("FULL", "EXTRA")
        self.busy_timeout_ms = int(float(options.get("sqlite_busy_timeout", 30.0)) * 1000)
        # Writers of one process queue here, on a fast mutex, rather than in SQLite's
        # busy handler, which sleeps in growing steps; other processes still use it.
        self.write_lock = threading.RLock()
        self.group_lock = self.write_lock
        self._writes = 0  # write transactions begun, for the checkpointer
        self._closed = threading.Event()
        self._checkpointer: threading.Thread | None = None
        self._engine: Engine | None = None
        #: The file as the first connection found it, (st_dev, st_ino); see ``check_file``.
        self.path = os.path.abspath(url.database)
        self._file: tuple[int, int] | None = None
        #: ``copy_rows``' statements: (table, columns, rows) -> SQL.
        self._inserts: dict[tuple[str, tuple[str, ...], int], str] = {}

    def engine_kwargs(self) -> dict[str, Any]:
        return {
            "connect_args": {"check_same_thread": False, "timeout": self.busy_timeout_ms / 1000},
            "pool_size": 8,
            "max_overflow": -1,
        }

    def configure(self, engine: Engine) -> None:
        synchronous = self.synchronous
        busy = self.busy_timeout_ms

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy's begin event, not pysqlite, decide when transactions start.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {busy}")
            # Small pages halve the bytes each commit writes to the WAL (a status change
            # dirties a page in each of a few indexes); only takes effect on a new file.
            cursor.execute("PRAGMA page_size = 1024")
            _switch_to_wal(cursor)
            cursor.execute(f"PRAGMA synchronous = {synchronous}")
            cursor.execute("PRAGMA foreign_keys = OFF")
            # No checkpoint inside a commit: the checkpointer thread copies the WAL into
            # the database (see ``_checkpoint_loop``).
            cursor.execute("PRAGMA wal_autocheckpoint = 0")
            cursor.execute("PRAGMA cache_size = -32768")
            cursor.execute("PRAGMA mmap_size = 268435456")
            cursor.close()
            # A new connection after the file was deleted made a new, empty one.
            if not self.check_file():
                dbapi_conn.close()
                raise DatabaseLost(self.gone)

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            driver = cast(sqlite3.Connection, conn.connection.driver_connection)
            # Open already: the store began it on the driver (a kept connection) and a
            # Core statement inside it made SQLAlchemy begin its view of it.
            if not driver.in_transaction:
                write = conn.get_execution_options().get("nbjobs_write", False)
                driver.execute(self.begin_sql(write))

        self._engine = engine
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, args=(engine,), name="nbjobs-wal", daemon=True
        )
        self._checkpointer.start()

    def _checkpoint_loop(self, engine: Engine) -> None:
        """Copy the WAL into the database file a few times a second while there are writes.

        SQLite's automatic checkpoint runs inside the commit that crosses its threshold,
        so one submit or claim in a thousand pays for copying the pages of the thousand
        before it, and the WAL grows large in between: in ``bench_core`` that halved the
        submit rate.  Here a ``PASSIVE`` checkpoint, which never waits for readers or
        writers, does that work off the hot path.  Every process using the file runs
        one; whichever comes first does the copying.

        The WAL starts again from its beginning only when a writer finds it copied
        whole, and under a steady stream of commits a ``PASSIVE`` checkpoint never
        catches up with the last one: the WAL grew without end (65 MB after 5,000
        submits, 13 KB each), and appending to a growing file costs each ``FULL``
        commit's ``fdatasync`` a metadata flush of its own.  So once the WAL holds
        ``RESTART_FRAMES``, a ``RESTART`` checkpoint follows the ``PASSIVE`` one: it
        copies the few frames committed meanwhile, holding up writers while it does
        (this process's at its write lock, so that they cannot starve it), and waits at
        most ``RESTART_WAIT_MS`` for other processes' writers and for readers of older
        frames (it gives up after that, and the next pass tries again).  The next
        writer then reuses the WAL from its start.
        """
        seen = 0
        while not self._closed.wait(CHECKPOINT_SECONDS):
            if not self.check_file():
                return
            if self._writes == seen:
                continue
            seen = self._writes
            try:
                raw = engine.raw_connection()
                try:
                    cursor = raw.cursor()
                    _, frames, _ = cursor.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if frames >= RESTART_FRAMES:
                        # This process's writers wait their turn here rather than race
                        # the checkpoint for SQLite's write lock.
                        with self.write_lock:
                            cursor.execute(f"PRAGMA busy_timeout = {RESTART_WAIT_MS}")
                            try:
                                cursor.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
                            finally:
                                cursor.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
                    cursor.close()
                finally:
                    raw.close()
            except Exception:  # the next pass tries again; a closed engine ends the loop
                log.debug("WAL checkpoint failed", exc_info=True)

    def check_file(self) -> bool:
        """Whether the database file is still the one this App opened; else say so, loudly
        and once, and set ``gone`` (the store then refuses every use, the worker stops).

        Deleting the file (``rm nbjobs.db`` to start over, with a kernel still running)
        leaves open connections on the unlinked file, whose writes vanish with the
        process, while new connections and other Apps make a new empty file at the path:
        two databases, and nobody told.  The checkpointer thread looks four times a second.
        """
        if self.gone is not None:
            return False
        try:
            st = os.stat(self.path)
            found: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            found = None
        except OSError:
            return True  # cannot tell (permissions, a flaky mount): assume unchanged
        if self._file is None:
            self._file = found
            return True
        if found == self._file:
            return True
        what = "deleted" if found is None else "replaced"
        self.gone = (
            f"the SQLite database file {self.path} was {what} while this App was using it; "
            "what the App wrote since went to the old file and is lost with it. The worker "
            "was stopped: open a new App to use the file now at that path"
        )
        log.error("%s", self.gone)
        return False

    def stop(self) -> None:
        self._closed.set()
        if self._checkpointer is not None and self._checkpointer is not threading.current_thread():
            self._checkpointer.join(timeout=5)

    def listen(
        self,
        callback: Callable[[str], None],
        idle: threading.Event | None = None,
        queues: Callable[[], Sequence[str]] | None = None,
        workflows: Callable[[], Sequence[str]] | None = None,
    ) -> Callable[[], None] | None:
        """Wake-ups for an idle worker from other processes' commits (see
        :mod:`.sqlite_wake`); needs the worker's idle event, queues and workflows."""
        if idle is None or queues is None or workflows is None or self._engine is None:
            return None
        watch = ChangeWatch(
            self._engine,
            self.ready_time(),
            callback,
            idle,
            queues,
            workflows,
            lambda: self.gone is not None,
        )
        watch.start()
        return watch.stop

    def begin_sql(self, write: bool) -> str:
        # Writers take the write lock up front: no deadlock-prone upgrade from a read lock.
        # Every write transaction, raw or through SQLAlchemy's begin event, begins here,
        # so this is where the checkpointer learns that there is WAL to copy.
        if write:
            self._writes += 1
            return "BEGIN IMMEDIATE"
        return "BEGIN"

    def ready_time(self) -> Any:
        # ``run_at + 0`` hides run_at from SQLite's planner, which (having no statistics)
        # would otherwise pick the (status, run_at) index and sort every ready job; this
        # way it walks the claim index in claim order and stops at the LIMIT.
        return jobs.c.run_at + 0

    def write_options(self) -> dict[str, Any]:
        return {"nbjobs_write": True}

    def copy_rows(self, conn: Connection, table: Any, rows: Sequence[dict[str, Any]]) -> bool:
        """Multi-row ``INSERT ... VALUES`` of the columns that hold a value, on the
        driver's cursor: half the time of a one-row ``executemany`` of every column.

        A statement run once per row pays its start and end every row (the driver's
        reset and bind, opening the table and each of its indexes); one of ``COPY_ROWS``
        rows pays them once.  And ``sqlite3`` binds ``None`` slowly (it looks for an
        adapter first, about 0.4 us each): a column that is NULL in every row is left
        out of the statement, which stores NULL there all the same.  A column with a
        Core default is always bound, so a row that lacks one is refused as before.
        A database error raises what SQLAlchemy would (``IntegrityError``...).
        """
        if not rows:
            return True
        names, values = _columns_and_values(table, rows)
        if not names:  # every value NULL: executemany raises what the database says
            return False
        driver: Any = conn.connection.driver_connection
        limit = _variable_limit(driver)
        per = max(1, min(COPY_ROWS, limit // len(names)))
        full = len(values) - len(values) % per
        cursor = driver.cursor()
        try:
            if full:
                chain = itertools.chain.from_iterable
                cursor.executemany(
                    self._insert_sql(conn, table, names, per),
                    (tuple(chain(values[i : i + per])) for i in range(0, full, per)),
                )
            if full < len(values):
                cursor.executemany(self._insert_sql(conn, table, names, 1), values[full:])
        except sqlite3.Error as exc:
            # What SQLAlchemy raises (IntegrityError...), showing one row's statement.
            sql = self._insert_sql(conn, table, names, 1)
            raise DBAPIError.instance(sql, None, exc, sqlite3.Error, dialect=conn.dialect) from exc
        finally:
            cursor.close()
        return True

    def _insert_sql(self, conn: Connection, table: Any, names: tuple[str, ...], rows: int) -> str:
        """``_insert_sql``, compiled once per shape (a few: the jobs of a submit, of a
        fan-out, the members of a group)."""
        key = (table.name, names, rows)
        sql = self._inserts.get(key)
        if sql is None:
            if len(self._inserts) >= 64:
                self._inserts.clear()
            sql = self._inserts[key] = _insert_sql(conn.dialect, table, names, rows)
        return sql

    def is_transient(self, exc: BaseException) -> bool:
        if isinstance(exc, OperationalError) and "locked" in str(exc.orig).lower():
            return True
        return super().is_transient(exc)


def _columns_and_values(
    table: Any, rows: Sequence[dict[str, Any]]
) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
    """The columns ``copy_rows`` binds (in the table's order) and each row's values in
    that order: the columns some row names, less those NULL in every row, plus every
    column with a default (so that a row without one is refused, as by ``executemany``).
    Built with C loops: a Python loop per value costs more than SQLite takes to insert."""
    present = set().union(*rows)
    same = set(map(len, rows)) == {len(present)}  # then every row has every key
    names = []
    for column in table.c:
        name = column.name
        if column.default is None:
            if name not in present:
                continue
            # Only a column NULL in the first row can be NULL in all of them.
            if rows[0].get(name) is None:
                pick = operator.itemgetter(name) if same else operator.methodcaller("get", name)
                if list(map(pick, rows)).count(None) == len(rows):
                    continue
        names.append(name)
    if same and len(names) > 1 and present.issuperset(names):
        values = list(map(operator.itemgetter(*names), rows))
    else:
        values = [tuple(row.get(name) for name in names) for row in rows]
    return tuple(names), values


def _insert_sql(dialect: Any, table: Any, names: tuple[str, ...], rows: int) -> str:
    """``INSERT INTO table (names) VALUES (?, ...), ...`` of ``rows`` rows: Core compiles
    the one-row statement, whose ``VALUES`` group is repeated (compiling 100 rows' worth
    of bound parameters would cost more than inserting them)."""
    one = insert(table).values({n: bindparam(n) for n in names}).compile(dialect=dialect)
    head, _, group = one.string.partition(" VALUES ")
    if list(one.positiontup or ()) != list(names) or group != f"({', '.join('?' * len(names))})":
        raise AssertionError(f"unexpected INSERT: {one.string}")  # pragma: no cover
    return f"{head} VALUES {', '.join([group] * rows)}"


def _variable_limit(driver: sqlite3.Connection) -> int:
    """The most parameters one statement may bind (999 before SQLite 3.32)."""
    try:
        return int(driver.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    except AttributeError:  # Python < 3.11
        return 999


def _switch_to_wal(cursor: Any, seconds: float = 10.0) -> None:
    """``PRAGMA journal_mode = WAL``, retried while another connection holds the lock.

    Switching the journal mode takes an exclusive lock and SQLite can report "database
    is locked" at once, without its busy handler, when several processes or threads open
    a new database file at the same moment.
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
