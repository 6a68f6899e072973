"""What every database shares; subclasses override only their quirks."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Engine, create_engine, select, update
from sqlalchemy.engine import URL, Connection, Row
from sqlalchemy.exc import DBAPIError, NoSuchModuleError
from sqlalchemy.sql import Select

from ..errors import ConfigurationError
from ..schema import jobs

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
    jobs.c.priority,
    jobs.c.run_at,
    jobs.c.reclaims,
)


def safe_url(url: URL | str) -> str:
    """The URL as text with its password masked, for messages and logs."""
    if isinstance(url, str):
        from sqlalchemy.engine import make_url

        try:
            url = make_url(url)
        except Exception:
            return "<unparseable URL>"
    return url.render_as_string(hide_password=True)


class Dialect:
    """The defaults: a database with ``UPDATE ... RETURNING`` and no row locks needed."""

    name = "generic"
    #: Several processes may share the database.
    multi_process = True
    #: ``FOR UPDATE SKIP LOCKED`` exists, so concurrent claims do not block each other.
    skip_locked = False
    #: Jobs claimed per claim statement at most.
    claim_batch = 32

    def __init__(self, url: URL, **options: Any) -> None:
        self.url = url
        self.options = options

    # -- connections -------------------------------------------------------------------
    def engine_kwargs(self) -> dict[str, Any]:
        return {}

    def create_engine(self) -> Engine:
        try:
            engine = create_engine(self.url, **self.engine_kwargs())
        except NoSuchModuleError as exc:
            raise ConfigurationError(
                f"no SQLAlchemy driver for {safe_url(self.url)}: {exc}; install the matching "
                "extra, e.g. pip install 'nbjobs[postgres]'"
            ) from exc
        except ModuleNotFoundError as exc:
            raise ConfigurationError(
                f"the database driver {exc.name!r} for {safe_url(self.url)} is not installed; "
                "install the matching extra, e.g. pip install 'nbjobs[postgres]'"
            ) from exc
        self.configure(engine)
        return engine

    def configure(self, engine: Engine) -> None:
        """Install connection events (pragmas, session settings)."""

    def write_options(self) -> dict[str, Any]:
        """Execution options for a connection that is about to write."""
        return {}

    @contextlib.contextmanager
    def migration_lock(self, conn: Connection) -> Iterator[None]:
        """Held while the schema is created or migrated, so workers migrate once."""
        yield

    def server_time(self, conn: Connection) -> float | None:
        """The database clock in epoch seconds, or None where it is this host's clock."""
        return None

    def is_transient(self, exc: BaseException) -> bool:
        """A lost connection, a restart, a lock timeout: worth a retry after a pause."""
        return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)

    # -- locking -----------------------------------------------------------------------
    def lock(self, stmt: Select) -> Select:
        """``stmt`` with a row lock where the database has them (PostgreSQL, MySQL)."""
        return stmt

    # -- the claim ---------------------------------------------------------------------
    def claim_candidates(
        self, queue: str, workflows: Sequence[str], now: float, limit: int
    ) -> Select:
        """The ids of the best ready jobs of one queue, in claim order."""
        return (
            select(jobs.c.id)
            .where(
                jobs.c.status == "queued",
                jobs.c.queue == queue,
                jobs.c.run_at <= now,
                jobs.c.workflow.in_(workflows),
            )
            .order_by(jobs.c.priority.desc(), jobs.c.run_at, jobs.c.id)
            .limit(limit)
        )

    def claim(
        self,
        conn: Connection,
        candidates: Select,
        values: dict[str, Any],
    ) -> list[Row]:
        """Mark the candidate jobs running with ``values`` and return their rows."""
        stmt = (
            update(jobs)
            .where(jobs.c.id.in_(candidates.scalar_subquery()))
            .values(**values, attempts=jobs.c.attempts + 1)
            .returning(*CLAIMED_COLUMNS)
        )
        return list(conn.execute(stmt))
