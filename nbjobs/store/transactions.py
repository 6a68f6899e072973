"""Transactions: how the store gets a connection and commits, and nothing else.

* the *kept-connection* transaction (``_RawTransaction``): SQLite keeps one connection per
  thread and role and begins and ends its transactions on the driver itself;
* the *pooled* transaction (``_pooled_transaction``): the server databases take a
  connection from the pool for each transaction;
* the *single statement* (``_single_statement``): one hot-path statement in autocommit
  mode where the dialect allows it;
* the *group commit* (``_grouped``, ``_grouped_later``, ``flush``): threads that write at
  the same moment share one transaction and one commit;
* the *retry of conflicts* (``_retry_conflicts``): a transaction the server aborted (a
  deadlock, a serialization conflict) runs again, as it rolled back whole.

:class:`Transactions` is the base of :class:`~nbjobs.store.core.CoreStore`, which opens
the engine and sets the attributes it declares; no SQL of the nbjobs tables is written
here except the read that tells whether an ambiguous group commit went through.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from .. import dialects
from ..dialects.base import Prepared
from ..errors import ConfigurationError, DatabaseLost
from ..schema import attempts
from .autocommit import AutocommitConnections

log = logging.getLogger(__name__)

T = TypeVar("T")


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
        #: the group committed (see ``Transactions._group_committed``).
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
    the hot paths run only prepared statements (``Transactions._run``), which need none of
    them.  A Core statement run inside it makes SQLAlchemy begin its own view of the
    transaction (its begin event finds the driver's open and sends nothing); that view
    then ends it, so that SQLAlchemy's bookkeeping stays true.
    """

    __slots__ = ("conn", "driver", "lock", "role", "store")
    conn: Connection
    #: The driver's own connection (sqlite3's, psycopg's...): untyped, as drivers are.
    driver: Any

    def __init__(self, store: Transactions, role: str, lock: Any = None) -> None:
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


def run_pieces(conn: Connection, batch: list[_GroupedWork]) -> None:
    """Run a group's pieces one by one in ``conn``'s transaction, setting each result."""
    for request in batch:
        request.result = request.work(conn)


class Transactions:
    """Connections and transactions of one database (set up by ``CoreStore.__init__``)."""

    dialect: dialects.Dialect
    engine: Engine
    closed: bool
    #: Counts the cancel requests this process wrote for running jobs, so that a
    #: worker knows when to look whether a job it claimed ahead was cancelled.
    cancel_requests: int
    _write_options: dict[str, Any]
    _local: threading.local
    _prepared: dict[int, Prepared]
    _group: list[_GroupedWork]
    _group_lock: threading.Lock
    _kept: weakref.WeakSet[Connection]
    _autocommit: AutocommitConnections | None

    def _check_open(self) -> None:
        """Refuse work on a closed store, or on a SQLite file deleted under it."""
        if self.closed:
            raise ConfigurationError("the app is closed (app.close() was called); make a new App")
        if self.dialect.gone is not None:
            raise DatabaseLost(self.dialect.gone)

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
                ready = conn.info.pop("nbjobs_ready", None)
                if ready:
                    self._ring(conn, ready)
            finally:
                conn.info.pop("nbjobs_ready", None)
                self._after_transaction(conn)

    def _made_ready(self, conn: Connection, queue: str) -> None:
        """Note that ``conn``'s transaction makes jobs of ``queue`` ready: once it has
        committed, idle workers of other processes are woken where the database needs the
        writer to do it (``Dialect.rings``: MariaDB)."""
        if self.dialect.rings:
            conn.info.setdefault("nbjobs_ready", set()).add(queue)

    def _ring(self, conn: Connection, ready: set[str]) -> None:
        """Wake idle workers of the ``ready`` queues (after the commit): a failure costs
        them a poll interval, never the committed transaction."""
        try:
            self.dialect.ring(conn, sorted(ready))
        except Exception as exc:
            log.debug("could not wake idle workers of %s: %s", ", ".join(sorted(ready)), exc)
            conn.invalidate(exc)  # its state is unknown: never pool it again

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
        kept = self._autocommit
        conn = kept.take() if kept is not None else None
        if kept is not None and conn is not None:
            broken = False
            try:
                return work(conn)
            except DBAPIError as exc:
                broken = exc.connection_invalidated
                raise
            finally:
                kept.give_back(conn, broken=broken)
        with self.dialect.hot_path(), self.engine.connect() as conn:
            # psycopg's connection: autocommit and closed are its own attributes.
            dbapi_connection: Any = conn.connection.dbapi_connection
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
        """Run a group's pieces in ``conn``'s transaction, setting each one's result.

        The one hook of the store: ``FinishQueries._run_group`` replaces it to record
        plain successes together, and runs the other pieces with :func:`run_pieces`.
        """
        run_pieces(conn, batch)

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
            committed: bool | None = False
            if ran and isinstance(exc, DBAPIError) and exc.connection_invalidated:
                committed = self._group_committed(batch)
            if committed is None:
                for request in batch:
                    request.error = exc
            elif not committed:
                # The group rolled back whole: run each piece alone (a deadlock or
                # conflict is retried there), so one failing piece fails alone.
                log.info("a group commit rolled back (%s); running its pieces alone", exc)
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
        return self._outcome_recorded(proofs[0])

    def _outcome_recorded(self, proof: tuple[str, int, str]) -> bool | None:
        """Whether attempt ``proof`` = (job, attempt, outcome) is recorded with that
        outcome; None when the database cannot be read."""
        job_id, attempt, outcome = proof
        try:
            with self._read() as conn:
                row = conn.execute(
                    select(attempts.c.outcome).where(
                        attempts.c.job_id == job_id, attempts.c.attempt == attempt
                    )
                ).all()
        except Exception:
            log.warning("cannot tell whether a commit went through", exc_info=True)
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

    def _prepare(self, statement: Any) -> Prepared:
        """One of the module's hot-path statements, compiled once per store."""
        prepared = self._prepared.get(id(statement))
        if prepared is None:
            prepared = self._prepared[id(statement)] = Prepared(statement, self.engine.dialect)
        return prepared

    def _run(self, conn: Connection, statement: Any, params: Any) -> Any:
        """Execute one of the module's hot-path statements, compiled once per store."""
        return self._prepare(statement).execute(conn, params)
