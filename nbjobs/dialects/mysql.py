"""MySQL 8 and MariaDB >= 10.6: ``SELECT ... FOR UPDATE SKIP LOCKED``, then ``UPDATE``.

MariaDB has no ``UPDATE ... RETURNING``, so a claim is three statements in one
transaction: lock the best ready rows (skipping rows other claimers hold), mark them
running, read them back.  Sessions run at READ COMMITTED, which takes no gap locks, so
claims and fenced writes of different jobs do not block each other.  The migration lock
is a named ``GET_LOCK``; the clock is the server's ``NOW(6)``.

Wake-ups (MariaDB has no LISTEN/NOTIFY): see :class:`_Sentinel`.  In short, an idle
worker's wake-up thread holds a named lock per queue (``GET_LOCK``, server-wide, so any
host sees it) on a connection of its own and runs ``SELECT SLEEP`` there; a transaction
that made a job ready reads, after its commit, who holds the queue's lock
(``IS_USED_LOCK``: one round trip, no table) and ends that connection with
``KILL CONNECTION``.  The other idle workers wait in ``GET_LOCK`` for the same lock, so
when the sentinel is woken, gets busy or dies (the server frees a closed connection's
locks) the next one takes over at once.  Nothing leaves the database; the poll stays as
the fallback.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sqlalchemy import BindParameter, bindparam, func, inspect, select, update
from sqlalchemy.dialects.mysql import LONGTEXT
from sqlalchemy.engine import Connection, Row
from sqlalchemy.schema import CreateIndex, DropIndex
from sqlalchemy.sql import Select

from ..errors import ConfigurationError
from ..schema import jobs, jobs_by_key
from .base import CLAIMED_COLUMNS, RowLockingDialect, safe_url

log = logging.getLogger(__name__)

# Server error codes worth a retry: lock wait timeout, deadlock, connection killed, and
# the client-side connection failures (can't connect, gone away, lost during query).
TRANSIENT_CODES = frozenset({1205, 1213, 1927, 1053, 2003, 2006, 2013, 2055, 4031})
MIGRATION_LOCK = "nbjobs_migrate"
#: What the wake-up thread's connection reports once a ``KILL CONNECTION`` ended it:
#: killed (1927), interrupted (1317), lost during a statement (2013) or gone away before
#: one (2006).
KILLED = frozenset({1927, 1317, 2013, 2006})
#: ER_NO_SUCH_THREAD, ER_KILL_DENIED_ERROR: the sentinel is gone; not our user's thread.
NO_SUCH_THREAD, KILL_DENIED = 1094, 1095
#: How long a sentinel sleeps (or waits for a lock) in one statement before it looks
#: whether it should still stand ready (and ``stop`` interrupts it anyway).
SENTINEL_SECONDS = 1.0


def wake_lock_name(database: str | None, queue: str) -> str:
    """The named lock an idle worker of ``queue`` in ``database`` holds.

    Named locks are server-wide (every database of the server shares them) and at most
    64 characters long, so the name is a digest of the database and the queue.
    """
    digest = hashlib.sha1(f"{database or ''}\0{queue}".encode()).hexdigest()
    return f"nbjobs:wake:{digest}"


class MySQLDialect(RowLockingDialect):
    name = "mysql"
    claim_batch = 64
    # Finishing jobs of this process share a transaction (one batched UPDATE of the jobs
    # and one INSERT of their attempt rows): a commit, and its log flush, per group.
    group_commit = True

    def __init__(self, url: Any, **options: Any) -> None:
        super().__init__(url, **options)
        self.group_lock = threading.Lock()
        #: Why submits no longer wake idle workers (a KILL was refused), or None.
        self.ring_refused: str | None = None
        #: The connection ids of this process's own wake-up threads: a submit here
        #: claims for its own worker in its own thread, so it does not wake them.
        self.sentinels: set[int] = set()

    def engine_kwargs(self) -> dict[str, Any]:
        connect_args: dict[str, Any] = {}
        if "charset" not in self.url.query:
            connect_args["charset"] = "utf8mb4"
        if "connect_timeout" not in self.url.query:
            connect_args["connect_timeout"] = 10
        return {
            "connect_args": connect_args,
            "isolation_level": "READ COMMITTED",
            "pool_size": int(self.options.get("pool_size", 10)),
            "max_overflow": int(self.options.get("max_overflow", 20)),
            "pool_timeout": float(self.options.get("pool_timeout", 30)),
            # Below the server's wait_timeout (8 h by default), so idle connections are
            # renewed before the server drops them.
            "pool_recycle": float(self.options.get("pool_recycle", 1800)),
        }

    def drop_index(self, conn: Connection, index: Any) -> None:
        # MySQL 8 has no DROP INDEX IF EXISTS (MariaDB has): look first.
        if index.name in {i["name"] for i in inspect(conn).get_indexes(index.table.name)}:
            conn.execute(DropIndex(index))

    def create_index(self, conn: Connection, index: Any) -> None:
        # MySQL 8 has no CREATE INDEX IF NOT EXISTS (MariaDB has): look first.
        if index.name not in {i["name"] for i in inspect(conn).get_indexes(index.table.name)}:
            conn.execute(CreateIndex(index))

    def widen_text(self, conn: Connection, columns: Sequence[Any]) -> None:
        # TEXT holds 64 KiB: values between that and max_payload_bytes failed to store.
        # One ALTER per table (each rebuilds it), of the columns not LONGTEXT already.
        preparer = conn.dialect.identifier_preparer
        for table in sorted({c.table.name for c in columns}):
            found = {c["name"]: c["type"] for c in inspect(conn).get_columns(table)}
            changes = [
                f"MODIFY {preparer.quote(c.name)} LONGTEXT {'NULL' if c.nullable else 'NOT NULL'}"
                for c in columns
                if c.table.name == table and not isinstance(found.get(c.name), LONGTEXT)
            ]
            if changes:
                conn.exec_driver_sql(f"ALTER TABLE {preparer.quote(table)} {', '.join(changes)}")

    @contextlib.contextmanager
    def migration_lock(self, conn: Connection) -> Iterator[None]:
        """A named server lock (session scoped), so workers starting together migrate once."""
        got = conn.execute(select(func.get_lock(MIGRATION_LOCK, 120))).scalar()
        if got != 1:
            raise ConfigurationError(
                "timed out waiting for another nbjobs process to finish migrating the schema"
            )
        try:
            yield
        finally:
            conn.execute(select(func.release_lock(MIGRATION_LOCK)))

    def after_create(self, conn: Connection) -> None:
        """Give the nbjobs tables a binary, no-pad collation (once; idempotent).

        The server default (e.g. ``utf8mb4_general_ci``) compares case- and accent-
        insensitively and ignores trailing spaces, so checkpoints ``"a"`` and ``"A"``
        of one job, or idempotency keys ``"k"`` and ``"k "``, would collide.
        """
        version = str(conn.execute(select(func.version())).scalar())
        collation = "utf8mb4_nopad_bin" if "MariaDB" in version else "utf8mb4_0900_bin"
        rows = conn.exec_driver_sql(
            "SELECT table_name, table_collation FROM information_schema.tables "
            "WHERE table_schema = DATABASE()"
        ).all()
        for name, current in rows:
            if name.startswith("nbjobs_") and current != collation:
                conn.exec_driver_sql(
                    f"ALTER TABLE `{name}` CONVERT TO CHARACTER SET utf8mb4 COLLATE {collation}"
                )

    def server_time(self, conn: Connection) -> float | None:
        return float(conn.execute(select(func.unix_timestamp(func.now(6)))).scalar_one())

    def is_transient(self, exc: BaseException) -> bool:
        if super().is_transient(exc):
            return True
        orig = getattr(exc, "orig", exc)
        args: tuple[Any, ...] = getattr(orig, "args", ())
        return bool(args) and args[0] in TRANSIENT_CODES

    def claim_statement(self, candidates: Select, values: dict[str, Any]) -> Any:
        """Three statements: lock the candidates, mark them running, read them back."""
        if candidates._for_update_arg is None:
            candidates = candidates.with_for_update(skip_locked=True)
        ids: BindParameter[Any] = bindparam("c_ids", expanding=True)
        mark = (
            jobs_by_key(update(jobs))
            .where(jobs.c.id.in_(ids))
            .values(**values, attempts=jobs.c.attempts + 1)
        )
        return candidates, mark, select(*CLAIMED_COLUMNS).where(jobs.c.id.in_(ids))

    def claim(self, conn: Connection, statement: Any, params: dict[str, Any]) -> Sequence[Row]:
        candidates, mark, read = statement
        ids = list(conn.execute(candidates, params).scalars())
        if not ids:
            return []
        conn.execute(mark, {**params, "c_ids": ids})
        return list(conn.execute(read, {"c_ids": ids}))

    # -- wake-ups ----------------------------------------------------------------------
    rings = True

    def ring(self, conn: Connection, queues: Sequence[str]) -> None:
        """After a commit that made jobs of ``queues`` ready: end the wake-up connection
        of the idle worker that holds each queue's wake lock, if any.

        ``KILL CONNECTION`` rather than ``KILL QUERY``: a query kill that arrives while
        the connection runs no statement is forgotten, a connection kill never is (its
        next statement fails), so a wake-up sent after the commit cannot be lost.

        One round trip when no worker is idle (``IS_USED_LOCK`` reads the server's lock
        registry, no table); one more per idle sentinel.  A refused ``KILL`` (workers
        connect as another user without the privilege to end its queries) is logged once,
        and from then on submits do not try: the workers poll.
        """
        if self.ring_refused is not None or not queues:
            return
        names = [wake_lock_name(self.url.database, q) for q in dict.fromkeys(queues)]
        driver: Any = conn.connection.driver_connection
        with driver.cursor() as cursor:
            cursor.execute(
                "SELECT " + ", ".join(["IS_USED_LOCK(%s)"] * len(names)) + ", CONNECTION_ID()",
                names,
            )
            *holders, own = cursor.fetchone()
            mine = self.sentinels | {own}
            for holder in dict.fromkeys(h for h in holders if h is not None and h not in mine):
                try:
                    cursor.execute(f"KILL CONNECTION {int(holder)}")
                except driver.OperationalError as exc:
                    code = exc.args[0] if exc.args else None
                    if code == NO_SUCH_THREAD:
                        continue  # the sentinel's connection closed meanwhile
                    if code != KILL_DENIED:
                        raise
                    self.ring_refused = str(exc.args[1] if len(exc.args) > 1 else exc)
                    log.warning(
                        "cannot wake idle workers on %s (%s): this user may not end the "
                        "queries of the workers' user; they start jobs at their next poll",
                        safe_url(self.url),
                        self.ring_refused,
                    )
                    return

    def listen(
        self,
        callback: Callable[[str], None],
        idle: threading.Event | None = None,
        queues: Callable[[], Sequence[str]] | None = None,
        workflows: Callable[[], Sequence[str]] | None = None,
    ) -> Callable[[], None] | None:
        """Wake-ups for an idle worker (see :class:`_Sentinel`); needs the worker's idle
        event and queues, without which (a bare listener) there is nothing to do."""
        if idle is None or queues is None:
            return None
        sentinel = _Sentinel(self, callback, idle, queues)
        sentinel.start()
        return sentinel.stop


class _Sentinel:
    """An idle worker's wake-up thread, on a connection of its own.

    While the worker is idle (``idle`` set: a claim left slots empty), the thread takes
    each of its queues' wake locks it can get at once, then (the order matters) calls
    ``callback`` so the worker claims once more, and sleeps in ``SELECT SLEEP``.  A job
    committed before the lock was visible is found by that claim; after a commit that
    found the lock held, the submitter ends the connection (``KILL CONNECTION``), and
    the thread sees that in its ``SLEEP``, or in its next statement if the kill came
    between two: it calls back (the worker claims) and connects again.  Holding no lock
    (another idle worker is the sentinel), it waits in ``GET_LOCK`` for the first queue's
    lock instead, and takes over the moment the sentinel is woken, gets busy, stops or
    dies (the server releases a closed connection's locks); it then claims, as above.
    A worker that gets busy lets its locks go, so submits to a busy fleet wake nobody.

    The worst case: a wake-up is never lost to a race (the Dekker order above: the
    submitter commits then reads the lock, the worker takes the lock then claims), but
    the poll (``poll_seconds``) remains what starts a job when the submitter may not
    ``KILL`` the workers' connections, when this connection is down, or for jobs made
    ready by a path that does not ring.  No path loses a job: a wake-up only shortens
    the wait.
    """

    def __init__(
        self,
        dialect: MySQLDialect,
        callback: Callable[[str], None],
        idle: threading.Event,
        queues: Callable[[], Sequence[str]],
    ) -> None:
        self.dialect = dialect
        self.callback = callback
        self.idle = idle
        self.queues = queues
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nbjobs-sentinel", daemon=True)
        self._conn_id: int | None = None
        self._woken = ""  # the queue of the last wake-up, "" before the first

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.idle.set()  # out of its idle wait
        conn_id = self._conn_id
        if conn_id is not None and self._thread.is_alive():
            try:  # out of SLEEP or GET_LOCK
                raw = self._connect()
                try:
                    with raw.cursor() as cursor:
                        cursor.execute(f"KILL CONNECTION {int(conn_id)}")
                finally:
                    raw.close()
            except Exception:
                log.debug("could not interrupt the wake-up thread", exc_info=True)
        self._thread.join(timeout=SENTINEL_SECONDS + 2)

    def _connect(self) -> Any:
        """A PyMySQL connection in autocommit mode with the URL's settings."""
        pymysql = _pymysql()
        url = self.dialect.url
        args: dict[str, Any] = {
            "host": url.host or "localhost",
            "user": url.username,
            "password": url.password or "",
            "database": url.database,
            "autocommit": True,
            "connect_timeout": 10,
        }
        if url.port:
            args["port"] = url.port
        for key, value in url.query.items():
            if isinstance(value, str) and key in ("unix_socket", "charset", "ssl_ca"):
                args[key] = value
        return pymysql.connect(**{k: v for k, v in args.items() if v is not None})

    def _run(self) -> None:
        pymysql = _pymysql()
        failures = 0
        while not self._stop.is_set():
            try:
                conn = self._connect()
            except pymysql.Error as exc:
                failures += 1
                pause = min(10.0, 0.2 * 2**failures)
                log.warning(
                    "wake-up thread cannot connect to %s (%s); polling until it "
                    "reconnects in %.1f s",
                    safe_url(self.dialect.url),
                    exc,
                    pause,
                )
                self._stop.wait(pause)
                continue
            if failures:
                log.info("wake-up thread reconnected to %s", safe_url(self.dialect.url))
                failures = 0
            try:
                with conn.cursor() as cursor:
                    cursor.execute("SELECT CONNECTION_ID()")
                    self._conn_id = int(cursor.fetchone()[0])
                    self.dialect.sentinels.add(self._conn_id)
                    self._serve(cursor)
            except pymysql.err.OperationalError as exc:
                if self._stop.is_set():
                    return
                if not exc.args or exc.args[0] not in KILLED:
                    log.warning("wake-up thread failed (%s); connecting again", exc)
                    self._stop.wait(1.0)
                    continue
                # Woken (or the server went away: then the claim fails, and connecting
                # again backs off): the worker claims, then this connects again.
                self.callback(self._woken)
            except Exception:
                log.exception("wake-up thread failed; polling only")
                return
            finally:
                self.dialect.sentinels.discard(self._conn_id or 0)
                self._conn_id = None
                with contextlib.suppress(Exception):
                    conn.close()

    def _serve(self, cursor: Any) -> None:
        """Stand ready while the worker is idle, until the connection is killed."""
        held: list[str] = []  # the queues whose wake lock this connection holds
        database = self.dialect.url.database
        while not self._stop.is_set():
            if not self.idle.is_set():
                if held:
                    cursor.execute("SELECT RELEASE_ALL_LOCKS()")
                    held = []
                self.idle.wait(SENTINEL_SECONDS)
                continue
            queues = list(self.queues())
            if not queues:
                self._stop.wait(SENTINEL_SECONDS)
                continue
            self._woken = queues[0]
            if held:
                cursor.execute("SELECT SLEEP(%s)", (SENTINEL_SECONDS,))
                cursor.fetchall()
                continue
            for queue in queues:
                cursor.execute("SELECT GET_LOCK(%s, 0)", (wake_lock_name(database, queue),))
                if cursor.fetchone()[0] == 1:
                    held.append(queue)
            if not held:  # another worker is the sentinel: wait to take over
                name = wake_lock_name(database, queues[0])
                cursor.execute("SELECT GET_LOCK(%s, %s)", (name, SENTINEL_SECONDS))
                if cursor.fetchone()[0] == 1:
                    held.append(queues[0])
            if held:
                self._woken = held[0]
                self.callback(held[0])  # claim once more, now that the lock is visible


def _pymysql() -> Any:
    """The PyMySQL module (the driver of ``mysql+pymysql://`` URLs), untyped."""
    return importlib.import_module("pymysql")
