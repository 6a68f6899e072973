"""PostgreSQL: ``FOR UPDATE SKIP LOCKED`` claims, the server clock, LISTEN/NOTIFY wake-ups.

Many workers on many machines share one database.  A claim locks its candidate rows with
``SKIP LOCKED`` inside a materialized CTE, so concurrent claimers never block each other
and never take the same job, and the ``UPDATE ... RETURNING`` hands the rows back in the
same round trip.

Wake-ups: a trigger on ``nbjobs_jobs`` calls ``pg_notify('nbjobs', queue)`` in every
transaction that makes a job ``queued`` (submit, retry, requeue, a timer, a signal, a
fan-in resuming its parent), whatever code path did it; one on ``nbjobs_queues`` sends an
empty notification when a queue is resumed, on which workers read the pauses again.  Each worker keeps one dedicated
``LISTEN`` connection in a daemon thread and wakes its dispatcher on a notification, so an
idle worker on another machine starts the job within milliseconds; polling stays as the
fallback while that connection is down.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sqlalchemy import (
    Double,
    Integer,
    String,
    Text,
    bindparam,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Select
from sqlalchemy.sql.expression import Grouping

from ..jobs import Status
from ..schema import attempts, jobs
from .base import CLAIMED_COLUMNS, Prepared, RowLockingDialect, safe_url

log = logging.getLogger(__name__)

CHANNEL = "nbjobs"

# SQLSTATE classes and codes worth a retry: connection exceptions (08), serialization
# failure and deadlock (40), lock not available (55P03), operator intervention (57P0x:
# shutdown, crash, cannot connect now).
TRANSIENT_SQLSTATES = ("08", "40001", "40P01", "55P03", "57P01", "57P02", "57P03")

NOTIFY_FUNCTION = f"""
CREATE OR REPLACE FUNCTION nbjobs_notify_ready() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', NEW.queue);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql
"""
RESUMED_FUNCTION = f"""
CREATE OR REPLACE FUNCTION nbjobs_notify_resumed() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql
"""
NOTIFY_TRIGGERS = (
    "DROP TRIGGER IF EXISTS nbjobs_jobs_ready_insert ON nbjobs_jobs",
    "CREATE TRIGGER nbjobs_jobs_ready_insert AFTER INSERT ON nbjobs_jobs FOR EACH ROW "
    "WHEN (NEW.status = 'queued') EXECUTE FUNCTION nbjobs_notify_ready()",
    "DROP TRIGGER IF EXISTS nbjobs_jobs_ready_update ON nbjobs_jobs",
    "CREATE TRIGGER nbjobs_jobs_ready_update AFTER UPDATE OF status ON nbjobs_jobs "
    "FOR EACH ROW WHEN (NEW.status = 'queued' AND OLD.status IS DISTINCT FROM NEW.status) "
    "EXECUTE FUNCTION nbjobs_notify_ready()",
    # A resumed queue: every worker reads the pauses again and claims at once.
    "DROP TRIGGER IF EXISTS nbjobs_queues_resumed ON nbjobs_queues",
    "CREATE TRIGGER nbjobs_queues_resumed AFTER INSERT OR UPDATE OF paused ON nbjobs_queues "
    "FOR EACH ROW WHEN (NOT NEW.paused) EXECUTE FUNCTION nbjobs_notify_resumed()",
)


class PostgresDialect(RowLockingDialect):
    name = "postgresql"
    claim_batch = 64
    # Finishing jobs of this process share a transaction and, for plain successes, one
    # statement (``finish_many_statement``): a round trip and a commit per group.
    group_commit = True
    # A short step inserts its checkpoint under a FOR SHARE lock of the job row rather
    # than updating it: an update writes a new version of the row with an entry in
    # every index of the jobs table (updated_at is indexed, so it is never HOT).
    read_fence = True

    def __init__(self, url: Any, **options: Any) -> None:
        super().__init__(url, **options)
        self.group_lock = threading.Lock()

    def engine_kwargs(self) -> dict[str, Any]:
        connect_args: dict[str, Any] = {"application_name": "nbjobs"}
        if "connect_timeout" not in self.url.query:
            connect_args["connect_timeout"] = 10
        return {
            "connect_args": connect_args,
            # A worker holds one connection per running job at the step boundaries, plus
            # the dispatcher and the monitor: size the pool for that, not for the fleet.
            "pool_size": int(self.options.get("pool_size", 10)),
            "max_overflow": int(self.options.get("max_overflow", 20)),
            "pool_timeout": float(self.options.get("pool_timeout", 30)),
            # No pre-ping on every checkout (a round trip per transaction): ``configure``
            # pings only connections that sat idle in the pool (``ping_unless_recent``).
            "pool_recycle": float(self.options.get("pool_recycle", 1800)),
        }

    # -- schema ------------------------------------------------------------------------
    @contextlib.contextmanager
    def migration_lock(self, conn: Connection) -> Iterator[None]:
        """A transaction-scoped advisory lock: workers starting together migrate once."""
        conn.execute(select(func.pg_advisory_xact_lock(_lock_key("nbjobs-migrate"))))
        yield

    def after_create(self, conn: Connection) -> None:
        conn.exec_driver_sql(NOTIFY_FUNCTION)
        conn.exec_driver_sql(RESUMED_FUNCTION)
        for statement in NOTIFY_TRIGGERS:
            conn.exec_driver_sql(statement)

    def copy_rows(self, conn: Connection, table: Any, rows: Sequence[dict[str, Any]]) -> bool:
        """``COPY ... FROM STDIN``: a quarter of the time of a pipelined ``executemany``
        (no statement per row); the triggers fire as for an ``INSERT``."""
        names = [c.name for c in table.c]
        driver: Any = conn.connection.driver_connection
        sql = f"COPY {table.name} ({', '.join(names)}) FROM STDIN"
        try:
            with driver.cursor() as cursor, cursor.copy(sql) as copy:
                for row in rows:
                    copy.write_row([row.get(name) for name in names])
        except conn.dialect.loaded_dbapi.Error as exc:
            raise DBAPIError.instance(
                sql, None, exc, conn.dialect.loaded_dbapi.Error, dialect=conn.dialect
            ) from exc
        return True

    def server_time(self, conn: Connection) -> float | None:
        now = select(func.extract("epoch", func.clock_timestamp()))
        return float(conn.execute(now).scalar_one())

    def is_transient(self, exc: BaseException) -> bool:
        if super().is_transient(exc):
            return True
        orig = getattr(exc, "orig", exc)
        sqlstate = getattr(orig, "sqlstate", None) or ""
        if sqlstate.startswith(TRANSIENT_SQLSTATES):
            return True
        import psycopg

        return isinstance(orig, psycopg.OperationalError) and not sqlstate

    # -- locking and the claim ---------------------------------------------------------
    def claim_statement(self, candidates: Select, values: dict[str, Any]) -> Any:
        # The claim commits with the server's synchronous_commit (on by default), like
        # every other write: a claim a crash forgot would leave its worker running the
        # job while another claims it at once, the same step running twice concurrently.
        # MATERIALIZED: the locking subquery runs exactly once, so a claim never takes
        # more rows than its LIMIT (an inlined IN-subquery may be re-scanned).
        if candidates._for_update_arg is None:
            candidates = candidates.with_for_update(skip_locked=True)
        chosen = candidates.cte("nbjobs_claim").prefix_with("MATERIALIZED")
        claim = (
            update(jobs)
            # UPDATE ... FROM the CTE: a join on the key, cheaper than ``IN (SELECT ...)``,
            # which hashes the candidates first.
            .where(jobs.c.id == chosen.c.id)
            .values(**values, attempts=jobs.c.attempts + 1)
            .returning(*CLAIMED_COLUMNS)
        )
        return claim

    autocommit_single = True

    def max_transactions(self, conn: Connection) -> int | None:
        return int(conn.exec_driver_sql("SHOW max_connections").scalar_one())

    def claim_cap(self, limit: int, left: Any) -> Any:
        return func.least(limit, func.greatest(0, left))

    def run_together(
        self, conn: Connection, calls: Sequence[tuple[Prepared, dict[str, Any]]]
    ) -> list[Sequence[Any]]:
        # psycopg's pipeline mode: the statements are flushed together when the block
        # ends; an error in one aborts the transaction and the rest, as it would
        # unpipelined.  The BEGIN psycopg sends before the first statement of a
        # transaction is not among them: psycopg (3.3) syncs after it and waits for
        # its answer, one round trip of its own (seen with strace).
        return _pipelined(conn, calls)

    def run_committed(
        self, conn: Connection, calls: Sequence[tuple[Prepared, dict[str, Any]]]
    ) -> list[Sequence[Any]] | None:
        # In autocommit mode psycopg sends no BEGIN of its own, so ours goes out in the
        # pipeline with the statements and the COMMIT: one round trip where there were
        # three, and row locks taken by the statements are held for the server's work
        # and the commit's flush alone, not for two round trips to this process.
        driver: Any = conn.connection.driver_connection
        if (
            driver.info.transaction_status.name != "IDLE"
            or driver.isolation_level is not None  # BEGIN would need to say more
            or driver.read_only is not None
            or driver.deferrable is not None
        ):
            return None
        driver.autocommit = True
        try:
            return _pipelined(conn, calls, committed=True)
        finally:
            if not conn.invalidated and not driver.closed:
                if driver.info.transaction_status.name != "IDLE":
                    driver.execute("ROLLBACK")  # a statement failed: the rest never ran
                driver.autocommit = False

    def fenced_insert(self, fence: Any, table: Any, key: Any) -> Any:
        # A data-modifying CTE: the INSERT reads the UPDATE's RETURNING, so nothing is
        # inserted when the fence matched no row.
        fenced = fence.returning(jobs.c.id).cte("nbjobs_fenced")
        columns = [c for c in table.c if c is not key]
        return insert(table).from_select(
            [key.name, *(c.name for c in columns)],
            select(fenced.c.id, *(bindparam(c.name, type_=c.type) for c in columns)),
        )

    def finish_many_statement(self) -> Any:
        # The jobs arrive as parallel arrays, so one prepared statement serves any batch
        # size, and ``id = ANY(ids)`` keeps the primary-key plan whatever the planner
        # guesses of the arrays; the attempt rows are written from what the UPDATE
        # returns, in the same statement: a group of finishing jobs is one round trip.
        ids = bindparam("b_ids", type_=ARRAY(String))
        at = func.array_position(ids, jobs.c.id)

        def each(name: str, type_: Any) -> Any:
            return Grouping(bindparam(name, type_=ARRAY(type_)))[at]

        now = bindparam("b_now", type_=Double)
        finished = (
            update(jobs)
            .where(jobs.c.id == func.any(ids), jobs.c.lease_token == each("b_tokens", String))
            .values(
                status=Status.SUCCEEDED.value,
                result=each("b_results", Text),
                error=None,
                traceback=None,
                finished_at=now,
                updated_at=now,
                lease_token=None,
                lease_expires_at=None,
            )
            .returning(
                jobs.c.id,
                jobs.c.worker_id,
                jobs.c.claimed_at,
                each("b_attempts", Integer).label("attempt"),
            )
            .cte("nbjobs_finished")
        )
        return (
            insert(attempts)
            .from_select(
                ["job_id", "attempt", "worker_id", "outcome", "started_at", "finished_at"],
                select(
                    finished.c.id,
                    finished.c.attempt,
                    finished.c.worker_id,
                    literal(Status.SUCCEEDED.value),
                    func.coalesce(finished.c.claimed_at, now),
                    now,
                ),
            )
            .returning(attempts.c.job_id)
        )

    # -- wake-ups ----------------------------------------------------------------------
    def listen(
        self,
        callback: Callable[[str], None],
        idle: threading.Event | None = None,
        queues: Callable[[], Sequence[str]] | None = None,
        workflows: Callable[[], Sequence[str]] | None = None,
    ) -> Callable[[], None]:
        """Call ``callback(queue)`` on each ready-job notification; returns a stop function.

        The listener runs in a daemon thread on its own autocommit connection and
        reconnects with backoff when the server goes away; once listening (at start and
        after each reconnect) it calls ``callback("")``, since notifications sent before
        were not heard.
        """
        listener = _Listener(self, callback)
        listener.start()
        return listener.stop

    def conninfo(self) -> str:
        """A libpq connection string for this URL (password included: never log it)."""
        from psycopg.conninfo import make_conninfo

        params: dict[str, Any] = {
            "host": self.url.host,
            "port": self.url.port,
            "user": self.url.username,
            "password": self.url.password,
            "dbname": self.url.database,
        }
        params.update({k: v for k, v in self.url.query.items() if isinstance(v, str)})
        params["application_name"] = "nbjobs-listen"
        params.setdefault("connect_timeout", "10")
        return make_conninfo(**{k: v for k, v in params.items() if v is not None})


class _Listener:
    """One ``LISTEN nbjobs`` connection in a daemon thread."""

    def __init__(self, dialect: PostgresDialect, callback: Callable[[str], None]) -> None:
        self.dialect = dialect
        self.callback = callback
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nbjobs-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        import psycopg

        failures = 0
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.dialect.conninfo(), autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    if failures:
                        log.info("wake-up listener reconnected to %s", safe_url(self.dialect.url))
                    # Jobs made ready before LISTEN took effect sent no notification this
                    # connection sees (at start, or while it was down): look once.
                    self.callback("")
                    failures = 0
                    while not self._stop.is_set():
                        notes = list(conn.notifies(timeout=0.2, stop_after=1))
                        if notes:  # and whatever else arrived meanwhile: a burst of
                            notes += conn.notifies(timeout=0)  # submits costs one call
                        for payload in dict.fromkeys(note.payload for note in notes):
                            if self._stop.is_set():
                                break
                            self.callback(payload)
            except (psycopg.Error, DBAPIError, OSError) as exc:
                failures += 1
                pause = min(10.0, 0.2 * 2**failures)
                log.warning(
                    "wake-up listener on %s lost its connection (%s); polling until it "
                    "reconnects in %.1f s",
                    safe_url(self.dialect.url),
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                    pause,
                )
                self._stop.wait(pause)
            except Exception:
                log.exception("wake-up listener failed; polling only")
                return


def _lock_key(name: str) -> int:
    """A stable signed 32-bit advisory lock key for ``name``."""
    return zlib.crc32(name.encode()) - 2**31


def _pipelined(
    conn: Connection,
    calls: Sequence[tuple[Prepared, dict[str, Any]]],
    committed: bool = False,
) -> list[Sequence[Any]]:
    """Send ``calls`` in one psycopg pipeline (``committed``: between a ``BEGIN`` and a
    ``COMMIT`` of their own) and return each one's rows, errors raised as SQLAlchemy
    would (see ``Prepared.wrap``)."""
    driver: Any = conn.connection.driver_connection
    sent: list[tuple[Prepared, Any, Any]] = []
    try:
        try:
            with driver.pipeline():
                if committed:
                    driver.execute("BEGIN")
                for prepared, params in calls:
                    cursor = conn.connection.cursor()
                    bound = prepared.bind(params)
                    sent.append((prepared, cursor, bound))
                    cursor.execute(prepared.sql, bound)
                if committed:
                    driver.execute("COMMIT")
        except conn.dialect.loaded_dbapi.Error as exc:
            prepared, cursor, bound = sent[-1]
            raise prepared.wrap(conn, cursor, bound, exc) from exc
        return [prepared.fetch_sent(conn, cursor, bound).all() for prepared, cursor, bound in sent]
    finally:
        for _, cursor, _ in sent:
            cursor.close()
