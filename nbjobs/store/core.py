"""The only module that executes SQL: one short transaction per method, verb_noun names.

Every write a worker makes for a job it runs is *fenced* by the job's lease token: the
``WHERE lease_token = :token`` clause makes a write from a worker whose lease was taken
over (a paused "zombie") touch no row, and the caller learns it lost the job.  No
transaction is ever held open while user code runs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from sqlalchemy import (
    Column,
    Index,
    MetaData,
    String,
    Table,
    bindparam,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError

from .. import dialects
from ..clock import Clock
from ..dialects.base import Prepared
from ..errors import ConfigurationError, DatabaseLost
from ..schema import (
    DUE_INDEX,
    SCHEMA_VERSION,
    TERMINAL,
    TREE_INDEX,
    attempts,
    jobs,
    meta,
    metadata,
    new_token,
)
from .autocommit import AutocommitConnections

log = logging.getLogger(__name__)

#: Columns a job handle and the dashboard show (inputs and results are loaded apart).
JOB_SUMMARY = tuple(c for c in jobs.c if c.name not in ("input", "result", "traceback"))

_TERMINAL_VALUES = frozenset(s.value for s in TERMINAL)

#: "The caller does not know": the hook looks the job's parent up itself.
UNKNOWN: Any = object()

# Statements every part of the store shares, built once with bind parameters.
_FENCED = (jobs.c.id == bindparam("f_id"), jobs.c.lease_token == bindparam("f_token"))

_FINISH_ATTEMPT = insert(attempts).from_select(
    [
        attempts.c.job_id,
        attempts.c.attempt,
        attempts.c.worker_id,
        attempts.c.outcome,
        attempts.c.started_at,
        attempts.c.finished_at,
        attempts.c.error,
        attempts.c.traceback,
    ],
    select(
        jobs.c.id,
        bindparam("a_attempt", None),
        jobs.c.worker_id,
        bindparam("a_outcome", None),
        func.coalesce(jobs.c.claimed_at, bindparam("a_now", None)),
        bindparam("a_now", None),
        bindparam("a_error", None),
        bindparam("a_traceback", None),
    ).where(jobs.c.id == bindparam("a_job", None)),
)


def storable_text(text: str | None) -> str | None:
    """``text`` as every backend can store it: NUL and lone surrogates escaped.

    Error messages, tracebacks, progress messages and captured output are the user's
    text: a file name from ``os.fsdecode`` holds a lone surrogate, which no driver can
    encode, and PostgreSQL's text type refuses NUL.  Stored raw, such a text fails the
    write that records a job's outcome, and the real error is lost; escaped
    (``\\udcff``, ``\\x00``) it reads as Python would show it.
    """
    if not text:
        return text
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


# What the reaper needs of a job whose worker was lost.


def _migrate_to_2(conn: Connection, dialect: dialects.Dialect) -> None:
    """Version 2 replaces the (status, queue, run_at) index of every queued job with
    ``ix_nbjobs_jobs_due``, which holds only the queued jobs not yet due."""
    old = Table("nbjobs_jobs", MetaData(), Column("status", String(16)))
    dialect.drop_index(conn, Index("ix_nbjobs_jobs_delayed", old.c.status))
    DUE_INDEX.create(conn, checkfirst=True)


def _migrate_to_3(conn: Connection, dialect: dialects.Dialect) -> None:
    """Version 3 replaces the index of every job's ``root_id`` with
    ``ix_nbjobs_jobs_tree``, which holds fan-out children only."""
    old = Table("nbjobs_jobs", MetaData(), Column("root_id", String(40)))
    dialect.drop_index(conn, Index("ix_nbjobs_jobs_root", old.c.root_id))
    TREE_INDEX.create(conn, checkfirst=True)


#: A meta row changed whenever finished jobs stop being finished (a retry) or are deleted.
EPOCH_KEY = "finished_epoch"


# Forward migrations: MIGRATIONS[n] takes a database from version n-1 to n.
MIGRATIONS: dict[int, Callable[[Connection, dialects.Dialect], None]] = {
    2: _migrate_to_2,
    3: _migrate_to_3,
}

T = TypeVar("T")

#: Readings of the server's clock taken to estimate this process's offset from it.
CLOCK_SAMPLES = 5
#: How old a measure of that offset may get before a worker's monitor, or an App without
#: a worker at its next submit, measures it again (NTP steps or slews the host's clock
#: while a process runs for days; see ``CoreStore.sync_clock``).
CLOCK_SYNC_SECONDS = 60.0


class _GroupedWork:
    """One thread's piece of a group commit."""

    __slots__ = ("callback", "done", "error", "item", "proof", "result", "work")

    def __init__(
        self,
        work: Callable[[Connection], Any],
        item: Any = None,
        callback: Callable[[_GroupedWork], None] | None = None,
        proof: tuple[str, int, str] | None = None,
    ) -> None:
        self.work = work
        #: What the work is about, for a group that runs like pieces as one statement.
        self.item = item
        #: (job id, attempt, outcome): the attempt row the piece writes when its fence
        #: accepts it (``result[0]`` true), which tells after an ambiguous COMMIT whether
        #: the group committed (see ``CoreStore._group_committed``).
        self.proof = proof
        #: Called once the piece is committed or has failed, for a piece nobody waits on.
        self.callback = callback
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


def _on_driver(conn: Connection, call: Callable[..., Any], *args: Any) -> Any:
    """``call(*args)`` on ``conn``'s driver connection, its errors raised as SQLAlchemy's."""
    try:
        return call(*args)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(
            str(args[0]) if args else call.__name__,
            None,
            exc,
            conn.dialect.loaded_dbapi.Error,
            dialect=conn.dialect,
        ) from exc


class _RawTransaction:
    """A transaction of a kept connection begun and ended on the driver itself
    (``Dialect.keep_connections``, SQLite): SQLAlchemy's transaction objects, its events
    and generator-based context managers cost as much as a short statement there, and
    the hot paths run only prepared statements (``CoreStore._run``), which need none of
    them.  A Core statement run inside it makes SQLAlchemy begin its own view of the
    transaction (its begin event finds the driver's open and sends nothing); that view
    then ends it, so that SQLAlchemy's bookkeeping stays true.
    """

    __slots__ = ("conn", "driver", "lock", "role", "store")

    def __init__(self, store: CoreStore, role: str, lock: Any = None) -> None:
        self.store = store
        self.role = role
        self.lock = lock

    def __enter__(self) -> Connection:
        self.store._check_open()
        if self.lock is not None:
            self.lock.acquire()
        try:
            self.conn = conn = self.store._kept_connection(self.role)
            self.driver = conn.connection.driver_connection
            _on_driver(
                conn, self.driver.execute, self.store.dialect.begin_sql(self.role == "writer")
            )
        except BaseException:
            self._exit(failed=True)
            raise
        return conn

    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        conn = self.conn
        try:
            if conn.in_transaction():
                if kind is None:
                    conn.commit()
                else:
                    conn.rollback()
            elif kind is None:
                _on_driver(conn, self.driver.commit)
            elif self.driver.in_transaction:
                self.driver.rollback()
        except BaseException:
            self._exit(failed=True)
            raise
        self._exit(failed=isinstance(error, DBAPIError))

    def _exit(self, failed: bool) -> None:
        try:
            conn = getattr(self, "conn", None)
            if failed:
                self.store._drop_kept(self.role)
            if conn is not None:
                self.store._after_transaction(conn)
        finally:
            if self.lock is not None:
                self.lock.release()


class CoreStore:
    """Connections, transactions, the schema, and what every part of the store shares."""

    def __init__(self, url: str, *, clock: Clock | None = None, **options: Any) -> None:
        self.dialect = dialects.for_url(url, **options)
        self.url = self.dialect.url
        self.closed = False
        self.safe_url = dialects.safe_url(self.url)
        self.clock = clock or Clock()
        self.engine = self.dialect.create_engine()
        self._write_options = self.dialect.write_options()
        self._local = threading.local()
        self._claim_plans: dict[tuple, Any] = {}
        self._prepared: dict[int, Prepared] = {}
        self._group: list[_GroupedWork] = []
        self._group_lock = threading.Lock()
        #: Counts the cancel requests this process wrote for running jobs, so that a
        #: worker knows when to look whether a job it claimed ahead was cancelled.
        self.cancel_requests = 0
        #: How far the clock's offset to the server may be off at most (see sync_clock).
        self.clock_error_seconds = 0.0
        self._clock_synced = float("-inf")
        self._kept: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._autocommit = (
            AutocommitConnections(
                self.engine, max(1, self.engine.pool.size() // 2), self.dialect.idle_ping_seconds
            )
            if self.dialect.autocommit_single
            else None
        )
        try:
            self.migrate()
            self.sync_clock()
        except DBAPIError as exc:
            self.close()
            refused = exc
        else:
            return
        if isinstance(refused, OperationalError):
            message = f"cannot open the nbjobs database at {self.safe_url}: {refused.orig}"
        else:
            message = f"the database at {self.safe_url} refused nbjobs: {refused.orig}"
        error = ConfigurationError(dialects.redact(message, self.url))
        # Raised here, outside the handler, so that no driver text reaches the traceback
        # as context; chained only when it carries no credential.
        chain = "".join(traceback.format_exception(refused))
        if dialects.redact(chain, self.url) == chain:
            error.__cause__ = refused
        raise error

    def _check_open(self) -> None:
        """Refuse work on a closed store, or on a SQLite file deleted under it."""
        if self.closed:
            raise ConfigurationError("the app is closed (app.close() was called); make a new App")
        if self.dialect.gone is not None:
            raise DatabaseLost(self.dialect.gone)

    def close(self) -> None:
        """Release the connections; every later transaction is refused.  Idempotent."""
        self.closed = True
        self.dialect.stop()
        self._kept.clear()
        if self._autocommit is not None:
            self._autocommit.close()
        self.engine.dispose()
        self.dialect.close()

    def listen_ready(self, callback: Any) -> Any:
        """Push wake-ups (PostgreSQL LISTEN/NOTIFY): ``callback(queue)`` when a job
        becomes ready anywhere; returns a stop function, or None (polling only)."""
        return self.dialect.listen(callback)

    def _kept_connection(self, role: str) -> Connection:
        local = self._local
        conn = getattr(local, role, None)
        if conn is None or conn.closed:
            conn = self.engine.connect()
            if role == "writer" and self._write_options:
                conn.execution_options(**self._write_options)
            setattr(local, role, conn)
            self._kept.add(conn)
        return conn

    def _drop_kept(self, role: str) -> None:
        conn = getattr(self._local, role, None)
        if conn is not None:
            setattr(self._local, role, None)
            self._kept.discard(conn)
            try:
                conn.close()
            except Exception:
                pass

    def _transaction(self, role: str) -> contextlib.AbstractContextManager[Connection]:
        if self.dialect.keep_connections:
            return _RawTransaction(self, role)
        return self._pooled_transaction(role)

    @contextlib.contextmanager
    def _pooled_transaction(self, role: str) -> Iterator[Connection]:
        self._check_open()
        with self.engine.connect() as conn:
            if role == "writer" and self._write_options:
                conn.execution_options(**self._write_options)
            try:
                with conn.begin():
                    yield conn
            finally:
                self._after_transaction(conn)

    def _request_cancel(self, conn: Connection) -> None:
        """Note that ``conn``'s transaction asks running jobs to stop: once it ends,
        ``cancel_requests`` moves on, so that workers look at the jobs they claimed
        ahead (counting after the commit, a worker that sees the new count also sees the
        request)."""
        conn.info["nbjobs_cancel"] = True

    def _after_transaction(self, conn: Connection) -> None:
        # A connection closed after a failed transaction (see ``_drop_kept``) committed
        # nothing to announce.
        if not conn.closed and conn.info.pop("nbjobs_cancel", False):
            self.cancel_requests += 1

    def _write(self, hot: bool = False) -> contextlib.AbstractContextManager[Connection]:
        """A short write transaction (``BEGIN IMMEDIATE`` on SQLite).

        ``hot``: a worker's claim, checkpoint or finish, whose connection is not pinged
        when it was used a moment ago (see ``dialects.base.ping_unless_recent``; raw
        transactions never ping).
        """
        if self.dialect.keep_connections:
            return _RawTransaction(self, "writer", self.dialect.write_lock)
        return self._pooled_write(hot)

    @contextlib.contextmanager
    def _pooled_write(self, hot: bool) -> Iterator[Connection]:
        with (
            self.dialect.write_lock,
            self.dialect.hot_path() if hot else contextlib.nullcontext(),
            self._transaction("writer") as conn,
        ):
            yield conn

    def _read(self) -> contextlib.AbstractContextManager[Connection]:
        return self._transaction("reader")

    def _write_one(self, statement: Any, params: dict[str, Any]) -> int:
        """Run one hot-path write statement as its own transaction; returns its rowcount."""
        return self._single_statement(lambda conn: self._run(conn, statement, params).rowcount)

    def _single_statement(self, work: Callable[[Connection], T]) -> T:
        """Run ``work(conn)``, which sends one statement, as its own hot-path transaction.

        Where the dialect allows (PostgreSQL) the statement is sent in autocommit mode,
        one round trip instead of three (BEGIN, the statement, COMMIT), on a connection
        kept in that mode (:mod:`.autocommit`) or, when all those are lent, one from the
        pool; elsewhere it runs in a short write transaction, run again if the server
        aborted it.
        """
        if not self.dialect.autocommit_single:
            return self._retry_conflicts(work, hot=True)
        self._check_open()
        conn = self._autocommit.take() if self._autocommit is not None else None
        if conn is not None:
            broken = False
            try:
                return work(conn)
            except DBAPIError as exc:
                broken = exc.connection_invalidated
                raise
            finally:
                self._autocommit.give_back(conn, broken=broken)
        with self.dialect.hot_path(), self.engine.connect() as conn:
            dbapi_connection = conn.connection.dbapi_connection
            dbapi_connection.autocommit = True
            try:
                return work(conn)
            finally:
                if not dbapi_connection.closed:
                    dbapi_connection.autocommit = False

    def _grouped(
        self,
        work: Callable[[Connection], T],
        item: Any = None,
        proof: tuple[str, int, str] | None = None,
    ) -> T:
        """Run ``work(conn)`` in a write transaction shared with other threads (group commit).

        Threads that want to write while another runs a group leave their work in a list;
        the next thread to get the dialect's group lock (on SQLite, the write lock) runs
        every piece waiting in one transaction, so N concurrent finishes cost one commit
        instead of N.  A failing piece never takes the others down: the batch is re-run
        one by one.  ``item`` describes the work for :meth:`_run_group`, which may run
        like pieces together as one statement; ``proof`` names the attempt row the piece
        writes (see ``_GroupedWork.proof``).
        """
        if not self.dialect.group_commit:
            return self._retry_conflicts(work, hot=True)
        request = _GroupedWork(work, item, proof=proof)
        with self._group_lock:
            self._group.append(request)
        with self.dialect.group_lock:
            if not request.done:
                with self._group_lock:
                    batch, self._group = self._group, []
                self._commit_group(batch)
        if request.error is not None:
            raise request.error
        return request.result

    def _grouped_later(
        self,
        work: Callable[[Connection], Any],
        item: Any,
        callback: Callable[[Any], None],
        proof: tuple[str, int, str] | None = None,
    ) -> None:
        """Leave ``work`` for the next group commit and return at once (write-behind).

        ``callback(piece)`` runs once it is committed (``piece.result``) or has failed
        (``piece.error``); :meth:`flush` commits what is left.  Without group commits
        the work runs now.
        """
        request = _GroupedWork(work, item, callback, proof)
        if not self.dialect.group_commit:
            try:
                request.result = self._retry_conflicts(work, hot=True)
            except Exception as exc:
                request.error = exc
            self._called_back([request])
            return
        with self._group_lock:
            self._group.append(request)

    def flush(self) -> None:
        """Commit the pieces left by :meth:`_grouped_later` that no group has taken yet."""
        if not self._group:
            return
        with self.dialect.group_lock:
            with self._group_lock:
                batch, self._group = self._group, []
            if batch:
                self._commit_group(batch)

    def _retry_conflicts(self, work: Callable[[Connection], T], hot: bool = False) -> T:
        """``work(conn)`` in a write transaction, run again when the server aborted it (a
        deadlock, a serialization conflict, a connection lost before the commit): it
        rolled back whole, so running it again is safe."""
        for attempt in range(5):
            committing = False
            try:
                with self._write(hot) as conn:
                    result = work(conn)
                    committing = True
                return result
            except DBAPIError as exc:
                # A connection lost during COMMIT leaves the outcome unknown: never re-run
                # that.  Lost before it, the server rolled the transaction back.
                if attempt == 4 or (exc.connection_invalidated and committing):
                    raise
                if not self.dialect.is_transient(exc):
                    raise
                log.info("write transaction aborted (%s); running it again", exc.orig)
                time.sleep(0.005 * 2**attempt)
        raise AssertionError("unreachable")

    def _run_group(self, conn: Connection, batch: list[_GroupedWork]) -> None:
        """Run a group's pieces in ``conn``'s transaction, setting each one's result."""
        for request in batch:
            request.result = request.work(conn)

    def _commit_group(self, batch: list[_GroupedWork]) -> None:
        ran = False
        try:
            with self.dialect.hot_path(), self._transaction("writer") as conn:
                self._run_group(conn, batch)
                ran = True
        except Exception as exc:
            # A connection lost during COMMIT leaves the outcome unknown: never run the
            # pieces again blindly.  Committed, each piece keeps what it did in the
            # transaction (the jobs it claimed included); rolled back, they run alone.
            committed = False
            if ran and isinstance(exc, DBAPIError) and exc.connection_invalidated:
                committed = self._group_committed(batch)
            if committed is None:
                for request in batch:
                    request.error = exc
            elif not committed:
                # The group rolled back whole: run each piece alone (a deadlock or
                # conflict is retried there), so one failing piece fails alone.
                for request in batch:
                    request.error = None
                    try:
                        request.result = self._retry_conflicts(request.work)
                    except Exception as single:
                        request.error = single
            else:
                log.warning("a group commit lost its connection after committing (%s)", exc)
        finally:
            for request in batch:
                request.done = True
            self._called_back(batch)

    def _group_committed(self, batch: list[_GroupedWork]) -> bool | None:
        """After a COMMIT whose outcome is unknown: whether the group committed, read from
        the attempt row of a piece its fence accepted; None when no piece can tell (or
        the database cannot be read either).  A group in which every fence refused its
        piece wrote nothing: running it again is harmless (False)."""
        proofs = [
            r.proof
            for r in batch
            if r.proof is not None and isinstance(r.result, tuple) and r.result and r.result[0]
        ]
        if not proofs:
            accepted = [r for r in batch if r.proof is None or r.result is None or r.result[0]]
            return None if accepted else False
        job_id, attempt, outcome = proofs[0]
        try:
            with self._read() as conn:
                row = conn.execute(
                    select(attempts.c.outcome).where(
                        attempts.c.job_id == job_id, attempts.c.attempt == attempt
                    )
                ).all()
        except Exception:
            log.warning("cannot tell whether a group commit went through", exc_info=True)
            return None
        return any(r.outcome == outcome for r in row)

    @staticmethod
    def _called_back(batch: list[_GroupedWork]) -> None:
        for request in batch:
            if request.callback is not None:
                try:
                    request.callback(request)
                except Exception:
                    log.exception("a write-behind callback failed")

    def now(self) -> float:
        return self.clock.now()

    def _run(self, conn: Connection, statement: Any, params: Any) -> Any:
        """Execute one of the module's hot-path statements, compiled once per store."""
        prepared = self._prepared.get(id(statement))
        if prepared is None:
            prepared = self._prepared[id(statement)] = Prepared(statement, self.engine.dialect)
        return prepared.execute(conn, params)

    def migrate(self) -> int:
        """Create the tables or migrate them forward; never destroys data.

        ``schema_found`` keeps the version the database had (None: no tables yet), so
        that ``nbjobs migrate`` can say what it did.
        """
        with self._write() as conn, self.dialect.migration_lock(conn):
            metadata.create_all(conn, checkfirst=True)
            self.dialect.after_create(conn)
            version = conn.execute(
                select(meta.c.value).where(meta.c.key == "schema_version")
            ).scalar()
            if conn.execute(select(meta.c.key).where(meta.c.key == EPOCH_KEY)).first() is None:
                conn.execute(insert(meta).values(key=EPOCH_KEY, value=new_token()))
            self.schema_found = None if version is None else int(version)
            if version is None:
                conn.execute(insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
                return SCHEMA_VERSION
            current = int(version)
            if current > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"the database at {self.safe_url} has nbjobs schema version {current}, "
                    f"newer than this nbjobs ({SCHEMA_VERSION}); upgrade nbjobs"
                )
            for target in range(current + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[target](conn, self.dialect)
                conn.execute(
                    update(meta).where(meta.c.key == "schema_version").values(value=str(target))
                )
            return SCHEMA_VERSION

    def sync_clock(self, samples: int = CLOCK_SAMPLES) -> None:
        """Correct the clock by the database server's offset (workers' clocks may differ).

        Every App stamps and compares times (``run_at``, leases) on the server's clock
        as this process estimates it, so two processes must agree closely: a submitter
        ahead of a worker by a few milliseconds makes a job it just submitted look not
        yet due to the worker woken by its notification, which then sleeps until its
        next poll.  The estimate is NTP's: the server's reading against the midpoint of
        the round trip, from the quickest of a few, so its error is below half that
        round trip (well under a millisecond on a LAN) however loaded the host is;
        taking the end of a single round trip instead made it milliseconds behind.
        """
        self._clock_synced = time.monotonic()
        readings = []
        with self._read() as conn:
            for _ in range(samples):
                sent = time.time()
                server = self.dialect.server_time(conn)
                received = time.time()
                if server is None:
                    return
                readings.append((received - sent, server - (sent + received) / 2))
        if type(self.clock) is Clock:
            round_trip, self.clock.offset_seconds = min(readings)
            self.clock_error_seconds = round_trip / 2
            log.debug(
                "clock offset to the server %.6f s (round trip %.6f s)",
                self.clock.offset_seconds,
                round_trip,
            )

    def sync_clock_if_stale(self) -> None:
        """Measure the clock's offset again once the last measure is
        ``CLOCK_SYNC_SECONDS`` old."""
        if time.monotonic() - self._clock_synced >= CLOCK_SYNC_SECONDS:
            self.sync_clock()

    def _fence(self, conn: Connection, job_id: str, token: str, **values: Any) -> bool:
        """Touch the job only while ``token`` still holds its lease; True when it does."""
        result = conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.lease_token == token)
            .values(updated_at=self.now(), **values)
        )
        return result.rowcount == 1

    def _finish_attempt(
        self,
        conn: Connection,
        job_id: str,
        attempt: int,
        outcome: str,
        error: str | None = None,
        traceback: str | None = None,
    ) -> None:
        """Write the ended attempt's row from the job row (its worker and start time)."""
        self._run(
            conn,
            _FINISH_ATTEMPT,
            dict(
                a_job=job_id,
                a_attempt=attempt,
                a_outcome=outcome,
                a_now=self.now(),
                a_error=error,
                a_traceback=traceback,
            ),
        )

    def _unsettle(self, conn: Connection) -> None:
        """Record, in ``conn``'s transaction, that finished jobs were queued again or
        deleted: the one change that invalidates the dashboard's settled counts (see
        ``ViewQueries.job_counts``).  Only retries and purges do it, never the hot path."""
        conn.execute(update(meta).where(meta.c.key == EPOCH_KEY).values(value=new_token()))

    def _after_terminal(
        self, conn: Connection, job_id: str, parent_id: str | object | None = UNKNOWN
    ) -> None:
        """Hook run in the transaction that makes a job terminal (fan-in lives here).

        ``parent_id`` is passed when the caller knows it (``None``: a top-level job, so
        nothing to decide and no query needed on the hot path).
        """
