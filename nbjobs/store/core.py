"""The base of the store: the engine, the clock, and what every part of it shares.

Connections and transactions are in :mod:`.transactions`, the schema's creation and
upgrades in :mod:`.migrations`.

Every write a worker makes for a job it runs is *fenced* by the job's lease token: the
``WHERE lease_token = :token`` clause makes a write from a worker whose lease was taken
over (a paused "zombie") touch no row, and the caller learns it lost the job.  No
transaction is ever held open while user code runs.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import weakref
from collections.abc import Iterable, Sequence
from typing import Any, overload

from sqlalchemy import bindparam, delete, event, func, insert, select, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool

from .. import dialects
from ..clock import Clock
from ..dialects.base import Prepared
from ..errors import ConfigurationError, UnknownJob
from ..jobs import Status
from ..schema import attempts, checkpoints, jobs, meta, new_token
from . import migrations
from .autocommit import AutocommitConnections
from .migrations import EPOCH_KEY as EPOCH_KEY
from .transactions import Transactions, _GroupedWork

log = logging.getLogger(__name__)

#: Columns a job handle and the dashboard show (inputs and results are loaded apart).
JOB_SUMMARY = tuple(c for c in jobs.c if c.name not in ("input", "result", "traceback"))

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


@overload
def storable_text(text: str) -> str: ...
@overload
def storable_text(text: None) -> None: ...
@overload
def storable_text(text: str | None) -> str | None: ...
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


#: Readings of the server's clock taken to estimate this process's offset from it.
CLOCK_SAMPLES = 5
#: How old a measure of that offset may get before a worker's monitor, or an App without
#: a worker at its next submit, measures it again (NTP steps or slews the host's clock
#: while a process runs for days; see ``CoreStore.sync_clock``).
CLOCK_SYNC_SECONDS = 60.0


class CoreStore(Transactions):
    """The engine, the clock and the statements every part of the store shares; the
    transactions it inherits from :class:`~.transactions.Transactions`."""

    def __init__(
        self,
        url: str,
        *,
        clock: Clock | None = None,
        suggest: Iterable[str] = (),
        **options: Any,
    ) -> None:
        # A misspelled option must not be ignored (the dialect reads only the names it
        # knows); ``suggest``: the caller's own option names, offered as corrections.
        dialects.check_options(options, also=suggest)
        self.dialect = dialects.for_url(url, **options)
        self.url = self.dialect.url
        self.closed = False
        self.safe_url = dialects.safe_url(self.url)
        self.clock = clock or Clock()
        self.engine = self.dialect.create_engine()
        event.listen(self.engine, "checkin", self._checkin)
        self._write_options = self.dialect.write_options()
        self._local = threading.local()
        self._claim_plans: dict[tuple, Any] = {}
        self._prepared: dict[int, Prepared] = {}
        self._group: list[_GroupedWork] = []
        self._group_lock = threading.Lock()
        self.cancel_requests = 0  # see Transactions.cancel_requests
        #: How far the clock's offset to the server may be off at most (see sync_clock).
        self.clock_error_seconds = 0.0
        self._clock_synced = float("-inf")
        self._kept: weakref.WeakSet[Connection] = weakref.WeakSet()
        pool = self.engine.pool
        # At most half the pool kept in autocommit mode (every dialect sets pool_size).
        kept = max(1, pool.size() // 2) if isinstance(pool, QueuePool) else 1
        self._autocommit = (
            AutocommitConnections(self.engine, kept, self.dialect.idle_ping_seconds)
            if self.dialect.autocommit_single
            else None
        )
        try:
            #: The schema version of the tables now (see ``schema_found`` for before).
            self.schema_version = self.migrate()
            self.sync_clock()
        except DBAPIError as exc:
            self.close()
            refused = exc
        except BaseException:
            self.close()  # e.g. a newer schema: no connection is left to the collector
            raise
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

    def close(self) -> None:
        """Release the connections; every later transaction is refused.  Idempotent."""
        self.closed = True
        self.dialect.stop()
        self._kept.clear()
        if self._autocommit is not None:
            self._autocommit.close()
        self.engine.dispose()
        self.dialect.close()

    def _checkin(self, dbapi_connection: Any, entry: ConnectionPoolEntry) -> None:
        """A connection given back after :meth:`close` (a thread that was still in a
        transaction then) is closed: ``engine.dispose()`` closes only the connections in
        the pool, and one checked in later would stay open in the discarded pool until
        the garbage collector finds it."""
        if self.closed and dbapi_connection is not None:
            entry.close()

    def listen_ready(
        self, callback: Any, idle: Any = None, queues: Any = None, workflows: Any = None
    ) -> Any:
        """Push wake-ups (PostgreSQL LISTEN/NOTIFY, MariaDB's idle sentinel, SQLite's
        watch): ``callback(queue)`` when a job becomes ready anywhere; returns a stop
        function, or None (polling only).  ``idle`` (an Event set while the worker has
        free slots and nothing to claim), ``queues`` and ``workflows`` (the worker's, now)
        serve databases that wake only workers known to be idle."""
        return self.dialect.listen(callback, idle=idle, queues=queues, workflows=workflows)

    def _job_rows(self, stmt: Any, job_id: str) -> Sequence[Row]:
        """The rows ``stmt`` reads about one job; ``UnknownJob`` when there are none
        because there is no such job (an empty answer is ambiguous otherwise)."""
        with self._read() as conn:
            rows = conn.execute(stmt).all()
            if (
                not rows
                and conn.execute(select(jobs.c.id).where(jobs.c.id == job_id)).first() is None
            ):
                raise UnknownJob(f"no job with id {job_id!r}")
        return rows

    def now(self) -> float:
        return self.clock.now()

    def migrate(self) -> int:
        """Create the tables or migrate them forward; never destroys data (see
        :mod:`.migrations`).

        ``schema_found`` keeps the version the database had (None: no tables yet), so
        that ``nbjobs migrate`` can say what it did.
        """
        with self._write() as conn, self.dialect.migration_lock(conn):
            self.schema_found = migrations.prepare(conn, self.dialect)
            return migrations.upgrade(conn, self.dialect, self.schema_found, self.safe_url)

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
        ``CountQueries.job_counts``).  Only retries and purges do it, never the hot path."""
        conn.execute(update(meta).where(meta.c.key == EPOCH_KEY).values(value=new_token()))

    def _reset_job(
        self, conn: Connection, job_id: str, now: float, *, fresh: bool, **values: Any
    ) -> None:
        """Queue a finished job again; ``fresh`` also drops its checkpoints (a re-run)."""
        self._unsettle(conn)
        if fresh:
            conn.execute(delete(checkpoints).where(checkpoints.c.job_id == job_id))
            values["steps_done"] = 0
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(
                status=Status.QUEUED.value,
                run_at=now,
                cancel_requested=False,
                result=None,
                finished_at=None,
                failures=0,
                reclaims=0,
                waiting_for=None,
                progress=None,
                message=None,
                updated_at=now,
                **values,
            )
        )
