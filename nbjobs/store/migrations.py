"""Migrations: the schema created, or moved forward one version at a time; never destroyed.

``SCHEMA_VERSION`` (in :mod:`nbjobs.schema`) is the version this nbjobs writes; a
database at an older version is upgraded by ``MIGRATIONS[n]`` for each version ``n`` up
to it, inside one transaction under the dialect's migration lock.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Column, Index, MetaData, String, Table, insert, select, update
from sqlalchemy.engine import Connection

from .. import dialects
from ..errors import ConfigurationError
from ..schema import (
    DUE_INDEX,
    EXPIRES_INDEX,
    LONG_TEXT,
    RUNNING_INDEX,
    SCHEMA_VERSION,
    TREE_INDEX,
    jobs,
    meta,
    metadata,
    new_token,
)


def _migrate_to_2(conn: Connection, dialect: dialects.Dialect) -> None:
    """Version 2 replaces the (status, queue, run_at) index of every queued job with
    ``ix_nbjobs_jobs_due``, which holds only the queued jobs not yet due."""
    old = Table("nbjobs_jobs", MetaData(), Column("status", String(16)))
    dialect.drop_index(conn, Index("ix_nbjobs_jobs_delayed", old.c.status))
    dialect.create_index(conn, DUE_INDEX)


def _migrate_to_3(conn: Connection, dialect: dialects.Dialect) -> None:
    """Version 3 replaces the index of every job's ``root_id`` with
    ``ix_nbjobs_jobs_tree``, which holds fan-out children only."""
    old = Table("nbjobs_jobs", MetaData(), Column("root_id", String(40)))
    dialect.drop_index(conn, Index("ix_nbjobs_jobs_root", old.c.root_id))
    dialect.create_index(conn, TREE_INDEX)


def _migrate_to_4(conn: Connection, dialect: dialects.Dialect) -> None:
    """Version 4 adds ``nbjobs_jobs.trace_context`` (nullable): the OpenTelemetry
    context a job's runs continue (see :mod:`nbjobs.runtime.tracing`).  Rows of
    earlier versions keep NULL there: their runs start traces of their own."""
    dialect.add_column(conn, jobs.c.trace_context)


def _migrate_to_5(conn: Connection, dialect: dialects.Dialect) -> None:
    """Version 5 (flow control) adds the jobs' ``partition_key`` and ``expires_at``
    columns, both NULL for the jobs already there, and ``ix_nbjobs_jobs_expires``.
    The limit tables are new tables, which ``create_all`` made already."""
    for column in (jobs.c.partition_key, jobs.c.expires_at):
        dialect.add_column(conn, column)
    dialect.create_index(conn, EXPIRES_INDEX)


def _migrate_to_6(conn: Connection, dialect: dialects.Dialect) -> None:
    """Version 6 stores values, errors and tracebacks as LONGTEXT on MySQL and MariaDB,
    whose TEXT held 64 KiB: a value between that and ``max_payload_bytes`` (a 100 KB
    checkpoint) failed to store there.  Nothing changes on the other databases."""
    dialect.widen_text(
        conn, [c for t in metadata.sorted_tables for c in t.c if c.type is LONG_TEXT]
    )


def _migrate_to_7(conn: Connection, dialect: dialects.Dialect) -> None:
    """Version 7 adds ``ix_nbjobs_jobs_running`` on PostgreSQL: the running jobs, for
    the limits' counts, which read every dead version of a job that ran without it
    (see :mod:`nbjobs.schema`).  Nothing changes on the other databases."""
    if conn.dialect.name == "postgresql":
        dialect.create_index(conn, RUNNING_INDEX)


#: A meta row changed whenever finished jobs stop being finished (a retry) or are deleted.
EPOCH_KEY = "finished_epoch"


# Forward migrations: MIGRATIONS[n] takes a database from version n-1 to n.
MIGRATIONS: dict[int, Callable[[Connection, dialects.Dialect], None]] = {
    2: _migrate_to_2,
    3: _migrate_to_3,
    4: _migrate_to_4,
    5: _migrate_to_5,
    6: _migrate_to_6,
    7: _migrate_to_7,
}


def prepare(conn: Connection, dialect: dialects.Dialect) -> int | None:
    """Create what is missing (tables, indexes, meta rows) in ``conn``'s transaction;
    returns the schema version the database had (None: no tables yet)."""
    metadata.create_all(conn, checkfirst=True)
    dialect.after_create(conn)
    version = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
    if conn.execute(select(meta.c.key).where(meta.c.key == EPOCH_KEY)).first() is None:
        conn.execute(insert(meta).values(key=EPOCH_KEY, value=new_token()))
    return None if version is None else int(version)


def upgrade(conn: Connection, dialect: dialects.Dialect, found: int | None, safe_url: str) -> int:
    """Bring a database at version ``found`` to ``SCHEMA_VERSION``, refusing a newer one;
    returns the version now."""
    if found is None:
        conn.execute(insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
        return SCHEMA_VERSION
    if found > SCHEMA_VERSION:
        raise ConfigurationError(
            f"the database at {safe_url} has nbjobs schema version {found}, "
            f"newer than this nbjobs ({SCHEMA_VERSION}); upgrade nbjobs"
        )
    for target in range(found + 1, SCHEMA_VERSION + 1):
        MIGRATIONS[target](conn, dialect)
        conn.execute(update(meta).where(meta.c.key == "schema_version").values(value=str(target)))
    return SCHEMA_VERSION
