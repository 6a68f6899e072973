"""What every database shares; subclasses override only their quirks."""

from __future__ import annotations

import collections
import contextlib
import logging
import operator
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sqlalchemy import (
    Engine,
    and_,
    create_engine,
    event,
    exists,
    inspect,
    make_url,
    or_,
    select,
    update,
)
from sqlalchemy.engine import URL, Connection, Row
from sqlalchemy.engine.interfaces import DBAPIModule
from sqlalchemy.exc import DBAPIError, DisconnectionError, NoSuchModuleError, StatementError
from sqlalchemy.schema import CreateIndex, DropIndex
from sqlalchemy.sql import ColumnElement, Select

from ..errors import ConfigurationError
from ..schema import QUEUED_SQL, jobs, limits, queues

log = logging.getLogger(__name__)

# The columns a worker needs to run a claimed job.
CLAIMED_COLUMNS = (
    jobs.c.id,
    jobs.c.workflow,
    jobs.c.queue,
    jobs.c.input,
    jobs.c.attempts,
    jobs.c.max_retries,
    jobs.c.failures,
    jobs.c.timeout_seconds,
    jobs.c.steps_done,
    jobs.c.lease_token,
    jobs.c.root_id,
    jobs.c.parent_id,
    jobs.c.fanout,
    jobs.c.trace_context,
    jobs.c.priority,
    jobs.c.run_at,
    jobs.c.reclaims,
)


#: The URL scheme and extra that nbjobs tests for each database.
_DRIVERS = {
    "postgresql": ("postgresql+psycopg", "postgres"),
    "mysql": ("mysql+pymysql", "mysql"),
    "mariadb": ("mysql+pymysql", "mysql"),
    "duckdb": ("duckdb", "duckdb"),
}


def driver_hint(url: Any) -> str:
    """What to install, and which scheme to write, for the database ``url`` names."""
    name = make_url(url).get_backend_name() if isinstance(url, str) else url.get_backend_name()
    scheme, extra = _DRIVERS.get(name, (None, None))
    if scheme is None:
        return "install the SQLAlchemy driver of that database"
    return f"use {scheme}:// URLs and pip install 'nbjobs[{extra}]'"


class Prepared:
    """A Core statement compiled once for one database, run on the DBAPI cursor.

    On the hot paths (claim, checkpoint, finish) building, compiling and wrapping a
    statement costs several times what SQLite takes to run it.  This keeps the SQL
    written in Core, pays the compile once, and executes on the cursor of the
    connection's current transaction.  Values given at build time become defaults.
    """

    def __init__(self, statement: Any, dialect: Any) -> None:
        compiled = statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
        self.sql = compiled.string
        self.defaults = dict(compiled.params)
        self.names = list(compiled.positiontup) if compiled.positional else None
        # Picks the positional values in bind order, in C (a statement binds up to ~40).
        self._pick = operator.itemgetter(*self.names) if self.names else None
        # itemgetter returns a bare value, not a 1-tuple, when it picks one name.
        self._single = self.names is not None and len(self.names) == 1
        self._row_type: Any = None

    def bind(self, params: dict[str, Any]) -> Any:
        merged = {**self.defaults, **params}
        if self._pick is None:
            return merged if self.names is None else ()
        picked = self._pick(merged)
        return (picked,) if self._single else picked

    def execute(self, conn: Connection, params: dict[str, Any] | list[dict[str, Any]]) -> Any:
        many = isinstance(params, list)
        bound = [self.bind(p) for p in params] if isinstance(params, list) else self.bind(params)
        cursor = conn.connection.cursor()
        try:
            if many:
                cursor.executemany(self.sql, bound)
            else:
                cursor.execute(self.sql, bound)
        except conn.dialect.loaded_dbapi.Error as exc:
            try:
                raise self.wrap(conn, cursor, bound, exc) from exc
            finally:
                cursor.close()
        return self.fetch_sent(conn, cursor, bound)

    def _result(self, cursor: Any, rows: Sequence[Any]) -> _Result:
        if rows:
            if self._row_type is None:
                names = [d[0] for d in cursor.description]
                self._row_type = collections.namedtuple("Row", names)  # type: ignore[misc]
            rows = [self._row_type(*r) for r in rows]
        return _Result(cursor.rowcount, rows)

    def fetch_sent(self, conn: Connection, cursor: Any, bound: Any) -> _Result:
        """The result of this statement sent on ``cursor`` (by ``execute``, or by
        ``Dialect.run_together``); closes the cursor."""
        try:
            try:
                rows = cursor.fetchall() if cursor.description else []
            except conn.dialect.loaded_dbapi.Error as exc:
                raise self.wrap(conn, cursor, bound, exc) from exc
            return self._result(cursor, rows)
        finally:
            cursor.close()

    def wrap(
        self, conn: Connection, cursor: Any, bound: Any, exc: DBAPIModule.Error
    ) -> StatementError:
        """What SQLAlchemy would raise (IntegrityError, OperationalError...); on a
        disconnect the connection is invalidated so that it is not used again."""
        dialect = conn.dialect
        disconnect = dialect.is_disconnect(exc, conn.connection.dbapi_connection, cursor)
        if disconnect:
            # As SQLAlchemy does: the server went away, so every connection pooled before
            # now is suspect and is replaced on its next checkout.
            conn.engine.pool._invalidate(conn.connection, exc)
            conn.invalidate(exc)
        return DBAPIError.instance(
            self.sql,
            bound,
            exc,
            dialect.loaded_dbapi.Error,
            connection_invalidated=disconnect,
            dialect=dialect,
        )


class _Result:
    """What a :class:`Prepared` run returns: ``rowcount`` and ``all()``."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rowcount: int, rows: Sequence[Any]) -> None:
        self.rowcount = rowcount
        self._rows = rows

    def all(self) -> Sequence[Any]:
        return self._rows


def ping_unless_recent(engine: Engine, idle_seconds: float, trust: Callable[[], bool]) -> None:
    """Test pooled connections on checkout, except on the hot path when recently used.

    SQLAlchemy's ``pool_pre_ping`` costs a round trip on every checkout, i.e. on every
    short transaction a worker makes.  On the hot path (``trust()`` true) a connection
    checked in less than ``idle_seconds`` ago is almost surely alive and is not pinged;
    everywhere else, and for a connection that sat idle (across a server restart, say),
    a dead connection is replaced before anyone sees it.  One that dies while in use
    raises a disconnect error, which invalidates the whole pool (``Prepared._wrap``), and
    the store runs again a transaction that had not reached its commit.
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(dbapi_connection: Any, record: Any) -> None:
        record.info["nbjobs_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("nbjobs_idle_since")
        if since is not None and time.monotonic() - since < idle_seconds and trust():
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # The pool discards this connection and checks out a fresh one.
            raise DisconnectionError(f"pooled connection is dead: {exc}") from exc


#: Query keys whose values are credentials (libpq's ``password``, ``sslpassword``,
#: PyMySQL's ``passwd``, tokens and keys of cloud drivers); masked wherever a URL is shown.
SECRET_QUERY_KEY = re.compile(r"pass|secret|token|key", re.IGNORECASE)
_MASK = "***"


def safe_url(url: URL | str) -> str:
    """The URL as text with every credential masked, for messages, banners and logs:
    the ``user:password@`` part and any query value whose key names a secret."""
    if isinstance(url, str):
        from sqlalchemy.engine import make_url

        try:
            url = make_url(url)
        except Exception:
            return "<unparseable URL>"
    secret_keys = [key for key in url.query if SECRET_QUERY_KEY.search(key)]
    if secret_keys:
        url = url.update_query_dict(dict.fromkeys(secret_keys, _MASK))
    # The renderer percent-encodes the mask's asterisks.
    return url.render_as_string(hide_password=True).replace("%2A%2A%2A", _MASK)


def redact(text: str, url: URL) -> str:
    """``text`` (a driver's error message, say) with the URL's credentials masked."""
    secrets = [url.password] if url.password else []
    for key, value in url.query.items():
        if SECRET_QUERY_KEY.search(key):
            secrets += [value] if isinstance(value, str) else list(value)
    for secret in sorted({str(s) for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, _MASK)
    return text


class Dialect:
    """The defaults: a database with ``UPDATE ... RETURNING`` and no row locks needed."""

    name = "generic"
    #: Several processes may share the database.
    multi_process = True
    #: ``FOR UPDATE SKIP LOCKED`` exists, so concurrent claims do not block each other.
    skip_locked = False
    #: Jobs claimed per claim statement at most.
    claim_batch = 32
    #: A read transaction sees one snapshot and ``count(*)`` of a table is cheap
    #: (embedded databases): the dashboard may derive a count from several statements.
    snapshot_reads = False
    #: A pooled connection idle for longer than this is pinged before it is used.
    idle_ping_seconds = 1.0
    #: Threads keep their own connections instead of checking one out per transaction
    #: (embedded databases, where connections are cheap and the pool is unbounded), and
    #: begin and commit their transactions on the driver itself, with the statement
    #: ``begin_sql`` gives, rather than through SQLAlchemy.
    keep_connections = False
    #: A write may be fenced by reading the job's lease with a share lock instead of by
    #: updating the job's row: the lease read cannot change before the write commits
    #: (SQLite runs one write transaction at a time; PostgreSQL's ``FOR SHARE`` waits
    #: for a concurrent update of the row and reads the lease again).
    read_fence = False
    #: Rows have a ``rowid`` a statement can find them by (SQLite): one b-tree search
    #: instead of a search of the primary key's index and then one of the table.
    rowids = False
    #: A commit is on disk when it returns (a power loss cannot undo it), so the
    #: artifacts a commit refers to are flushed to disk before it too.
    durable_commits = True

    #: Finishing jobs of this process's threads share commits.  ``group_lock`` is held by
    #: the thread that runs a group; on SQLite it is the write lock itself.
    group_commit = False
    group_lock: Any = None
    #: Why the database can no longer be used (its SQLite file was deleted or replaced),
    #: or None; the store raises ``DatabaseLost`` with it at every use.
    gone: str | None = None

    #: Held around every write transaction of this process (a no-op by default).
    write_lock: contextlib.AbstractContextManager = contextlib.nullcontext()

    def __init__(self, url: URL, **options: Any) -> None:
        self.url = url
        self.options = options
        self._hot = threading.local()

    @contextlib.contextmanager
    def hot_path(self) -> Iterator[None]:
        """Mark this thread's next checkout as a worker's hot path (claim, checkpoint,
        finish): a connection used a moment ago is trusted without a ping."""
        outer = self.on_hot_path()
        self._hot.on = True
        try:
            yield
        finally:
            self._hot.on = outer

    def on_hot_path(self) -> bool:
        return getattr(self._hot, "on", False)

    # -- connections -------------------------------------------------------------------
    def engine_kwargs(self) -> dict[str, Any]:
        return {}

    def create_engine(self) -> Engine:
        try:
            engine = create_engine(self.url, **self.engine_kwargs())
        except NoSuchModuleError as exc:
            raise ConfigurationError(
                f"no SQLAlchemy driver for {safe_url(self.url)}: {exc}; {driver_hint(self.url)}"
            ) from exc
        except ModuleNotFoundError as exc:
            raise ConfigurationError(
                f"the database driver {exc.name!r} for {safe_url(self.url)} is not installed; "
                f"{driver_hint(self.url)}"
            ) from exc
        self.configure(engine)
        return engine

    def configure(self, engine: Engine) -> None:
        """Install connection events (pragmas, session settings)."""

    def stop(self) -> None:
        """Stop the dialect's own background work, before the engine is disposed."""

    def close(self) -> None:
        """Release what the dialect holds besides the engine (e.g. DuckDB's lock file)."""

    def begin_sql(self, write: bool) -> str:
        """The statement that begins a transaction of a kept connection (see
        ``keep_connections``)."""
        return "BEGIN"

    def write_options(self) -> dict[str, Any]:
        """Execution options for a connection that is about to write."""
        return {}

    @contextlib.contextmanager
    def migration_lock(self, conn: Connection) -> Iterator[None]:
        """Held while the schema is created or migrated, so workers migrate once."""
        yield

    def drop_index(self, conn: Connection, index: Any) -> None:
        """Drop ``index`` if it exists (a migration)."""
        conn.execute(DropIndex(index, if_exists=True))

    def create_index(self, conn: Connection, index: Any) -> None:
        """Create ``index`` unless it exists (a migration).  The database decides, not
        reflection: duckdb-engine cannot reflect indexes (``checkfirst`` is blind there)."""
        conn.execute(CreateIndex(index, if_not_exists=True))

    def widen_text(self, conn: Connection, columns: Sequence[Any]) -> None:
        """Give the text ``columns`` (of tables in :mod:`nbjobs.schema`) the type the
        schema now declares (a migration).  Only MySQL's changed (``LONG_TEXT``)."""

    def add_column(self, conn: Connection, column: Any) -> None:
        """Add ``column`` (of a table in :mod:`nbjobs.schema`) unless it exists (a
        migration).  Reflection decides: SQLite and MySQL 8 have no ``ADD COLUMN IF NOT
        EXISTS``, and a database whose version row was set back already has it."""
        table = column.table.name
        if column.name in {c["name"] for c in inspect(conn).get_columns(table)}:
            return
        kind = column.type.compile(dialect=conn.dialect)
        preparer = conn.dialect.identifier_preparer
        conn.exec_driver_sql(
            f"ALTER TABLE {preparer.quote(table)} ADD COLUMN {preparer.quote(column.name)} {kind}"
        )

    def after_create(self, conn: Connection) -> None:
        """Run under the migration lock once the tables exist (e.g. PostgreSQL triggers)."""

    def copy_rows(self, conn: Connection, table: Any, rows: Sequence[dict[str, Any]]) -> bool:
        """Insert ``rows`` (dicts; a column left out is NULL) in ``conn``'s
        transaction by the database's bulk path, if it has one faster than
        ``executemany`` (PostgreSQL's ``COPY``); False: it has none, nothing was done."""
        return False

    def listen(
        self,
        callback: Callable[[str], None],
        idle: threading.Event | None = None,
        queues: Callable[[], Sequence[str]] | None = None,
        workflows: Callable[[], Sequence[str]] | None = None,
    ) -> Callable[[], None] | None:
        """Call ``callback(queue)`` when another process makes a job ready, if the
        database can push that (PostgreSQL LISTEN/NOTIFY, MariaDB's sentinel, which uses
        the worker's ``idle`` event and ``queues``) or the worker can watch for it
        (SQLite, which also reads ``workflows``: those the worker runs); returns a stop
        function, or None where workers rely on polling alone."""
        return None

    #: Transactions that make jobs ready call :meth:`ring` after their commit.
    rings = False

    def ring(self, conn: Connection, queues: Sequence[str]) -> None:
        """Wake idle workers of ``queues`` after ``conn`` committed jobs ready there, where
        the database needs the writer to do it (MariaDB; PostgreSQL's trigger notifies)."""

    def server_time(self, conn: Connection) -> float | None:
        """The database clock in epoch seconds, or None where it is this host's clock."""
        return None

    def is_transient(self, exc: BaseException) -> bool:
        """A lost connection, a restart, a lock timeout: worth a retry after a pause."""
        return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)

    # -- locking -----------------------------------------------------------------------
    def lock(self, stmt: Select, skip_locked: bool = False, shared: bool = False) -> Select:
        """``stmt`` with a row lock where the database has them (PostgreSQL, MySQL).

        ``skip_locked``: leave out rows another transaction holds instead of waiting (the
        reaper: waiting there deadlocks with workers finishing those very jobs).
        ``shared``: a lock that others may share, but that excludes a writer's.
        """
        return stmt

    # -- fenced writes -----------------------------------------------------------------
    #: A single statement is sent in autocommit mode: its own transaction, one round
    #: trip instead of three (BEGIN, the statement, COMMIT).
    autocommit_single = False

    def fenced_insert(self, fence: Any, table: Any, key: Any) -> Any:
        """One statement that runs the ``fence`` UPDATE and, only if it touched its row,
        inserts one row into ``table`` (``key`` takes the fenced row's id; the other
        columns bind by their names); or None where that takes two statements."""
        return None

    # -- finishing ---------------------------------------------------------------------
    def finish_many_statement(self) -> Any:
        """One statement that records several successes, or None where each job takes
        its own statements.

        Binds ``b_ids``, ``b_tokens``, ``b_results``, ``b_attempts`` (lists, one entry per
        job) and ``b_now``; fenced like a single finish, it marks each job whose lease
        token still matches succeeded, writes its attempt row, and returns the ids of
        those jobs (as ``job_id``).
        """
        return None

    def max_transactions(self, conn: Connection) -> int | None:
        """How many transactions the server runs at once at most (its connection
        limit), or None where unknown: bounds the claims in flight at one moment (see
        ``LimitedClaims._claim_capped``)."""
        return None

    def run_together(
        self, conn: Connection, calls: Sequence[tuple[Prepared, dict[str, Any]]]
    ) -> list[Sequence[Any]]:
        """Run the statements in ``conn``'s transaction, in order; returns each one's
        rows.  Where the driver pipelines (PostgreSQL) they go out together: one round
        trip for all, not one each (a ``BEGIN`` before them still costs one of its
        own)."""
        return [prepared.execute(conn, params).all() for prepared, params in calls]

    def run_committed(
        self, conn: Connection, calls: Sequence[tuple[Prepared, dict[str, Any]]]
    ) -> list[Sequence[Any]] | None:
        """Run the statements as a transaction of their own and commit it, in one round
        trip where the driver pipelines (PostgreSQL: ``BEGIN``, the statements and
        ``COMMIT`` go out together); returns each one's rows.  None where it cannot: the
        dialect does not pipeline, or ``conn``'s transaction has begun already (use
        ``run_together``).  A statement that fails rolls them all back and raises.

        ``conn``'s transaction then continues as a new one: what runs in it after this
        commits with it.  A connection lost on the way leaves the outcome unknown, as a
        lost ``COMMIT`` does: the caller tells from what the statements wrote."""
        return None

    def claim_cap(self, limit: int, left: Any) -> Any:
        """``min(limit, max(0, left))`` as a claim's ``LIMIT``, ``left`` a scalar subquery
        (a queue's concurrency minus its running jobs, counted by the claim itself: see
        ``LimitedClaims._inline_claim``); None where ``LIMIT`` takes no expression."""
        return None

    # -- the claim ---------------------------------------------------------------------
    def claim_candidates(
        self, queue: str, workflows: Sequence[str], now: ColumnElement[Any], limit: int
    ) -> Select:
        """The ids of the best ready jobs of one queue, in claim order (``now`` is the
        bind parameter each claim fills in).

        A paused queue yields nothing: the pause is read inside the claim itself, so it
        holds for every worker on every machine from the moment it commits.  So does a
        queue with a limit, or one of whose ``workflows`` has one: those are claimed by
        the limited claim (:mod:`nbjobs.store.limits`), and a worker that has not seen
        the limit yet claims nothing rather than too much.  An expired job is never
        claimed (the monitor cancels it).
        """
        paused = exists().where(queues.c.name == queue, queues.c.paused)
        limited = exists().where(
            or_(
                and_(limits.c.kind == "queue", limits.c.name == queue),
                and_(limits.c.kind == "workflow", limits.c.name.in_(workflows)),
            )
        )
        return (
            select(jobs.c.id)
            .where(
                jobs.c.status == QUEUED_SQL,
                jobs.c.queue == queue,
                self.ready_time() <= now,
                jobs.c.workflow.in_(workflows),
                or_(jobs.c.expires_at.is_(None), jobs.c.expires_at > now),
                ~paused,
                ~limited,
            )
            .order_by(jobs.c.priority.desc(), jobs.c.run_at, jobs.c.id)
            .limit(limit)
        )

    def ready_time(self) -> Any:
        """The "not before" column as the claim compares it."""
        return jobs.c.run_at

    def claim_statement(self, candidates: Select, values: dict[str, Any]) -> Any:
        """Build, once, what ``claim`` executes: mark the candidates running with ``values``.

        ``candidates`` and ``values`` hold bind parameters, so the store builds this once
        per (queue, workflows, limit) and runs it many times with new parameters.  A
        claim always commits durably: one forgotten in a server crash would leave its
        worker running the job while the job is claimable again at once.
        """
        return (
            update(jobs)
            .where(jobs.c.id.in_(candidates.scalar_subquery()))
            .values(**values, attempts=jobs.c.attempts + 1)
            .returning(*CLAIMED_COLUMNS)
        )

    def claim(self, conn: Connection, statement: Any, params: dict[str, Any]) -> Sequence[Row]:
        """Run a statement from ``claim_statement``; returns the claimed rows."""
        if isinstance(statement, Prepared):
            return statement.execute(conn, params).all()
        return conn.execute(statement, params).all()


class RowLockingDialect(Dialect):
    """A server database with row locks and ``SKIP LOCKED`` (PostgreSQL, MySQL 8, MariaDB
    >= 10.6): concurrent claims lock their candidates and skip each other's."""

    skip_locked = True

    def configure(self, engine: Engine) -> None:
        ping_unless_recent(engine, self.idle_ping_seconds, self.on_hot_path)

    def lock(self, stmt: Select, skip_locked: bool = False, shared: bool = False) -> Select:
        return stmt.with_for_update(skip_locked=skip_locked, read=shared)

    def claim_candidates(
        self, queue: str, workflows: Sequence[str], now: ColumnElement[Any], limit: int
    ) -> Select:
        return (
            super().claim_candidates(queue, workflows, now, limit).with_for_update(skip_locked=True)
        )
