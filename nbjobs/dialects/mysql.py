"""MySQL 8 and MariaDB >= 10.6: ``SELECT ... FOR UPDATE SKIP LOCKED``, then ``UPDATE``.

MariaDB has no ``UPDATE ... RETURNING``, so a claim is three statements in one
transaction: lock the best ready rows (skipping rows other claimers hold), mark them
running, read them back.  Sessions run at READ COMMITTED, which takes no gap locks, so
claims and fenced writes of different jobs do not block each other.  The migration lock
is a named ``GET_LOCK``; the clock is the server's ``NOW(6)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import BindParameter, bindparam, func, inspect, select, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.schema import CreateIndex, DropIndex
from sqlalchemy.sql import Select

from ..errors import ConfigurationError
from ..schema import jobs
from .base import CLAIMED_COLUMNS, RowLockingDialect

# Server error codes worth a retry: lock wait timeout, deadlock, connection killed, and
# the client-side connection failures (can't connect, gone away, lost during query).
TRANSIENT_CODES = frozenset({1205, 1213, 1927, 1053, 2003, 2006, 2013, 2055, 4031})
MIGRATION_LOCK = "nbjobs_migrate"


class MySQLDialect(RowLockingDialect):
    name = "mysql"
    claim_batch = 64

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
        mark = update(jobs).where(jobs.c.id.in_(ids)).values(**values, attempts=jobs.c.attempts + 1)
        return candidates, mark, select(*CLAIMED_COLUMNS).where(jobs.c.id.in_(ids))

    def claim(self, conn: Connection, statement: Any, params: dict[str, Any]) -> Sequence[Row]:
        candidates, mark, read = statement
        ids = list(conn.execute(candidates, params).scalars())
        if not ids:
            return []
        conn.execute(mark, {**params, "c_ids": ids})
        return list(conn.execute(read, {"c_ids": ids}))
