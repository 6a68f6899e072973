"""The nbjobs tables (SQLAlchemy Core), all prefixed ``nbjobs_``, and the schema version.

Times are float seconds since the epoch (UTC), stored as double precision: one portable
type on every database, cheap to compare in the claim query, and converted to aware
datetimes at the public API.  Values (inputs, results, checkpoints) are text written by
:mod:`nbjobs.codec`.  Ids are time-ordered strings, so they sort in creation order.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from typing import Any, TypeVar

from sqlalchemy import (
    Boolean,
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Text,
    UniqueConstraint,
    Update,
    and_,
    literal_column,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.sql.elements import ColumnClause

SCHEMA_VERSION = 7


#: Status values rendered inline in SQL, for the partial indexes (see below).
QUEUED_SQL: ColumnClause[str] = literal_column("'queued'")
WAITING_SQL: ColumnClause[str] = literal_column("'waiting'")
SUCCEEDED_SQL: ColumnClause[str] = literal_column("'succeeded'")
RUNNING_SQL: ColumnClause[str] = literal_column("'running'")

metadata = MetaData()

ID = String(40)
#: Stored values, errors and tracebacks: TEXT, except on MySQL and MariaDB, whose TEXT
#: holds 64 KiB, less than ``max_payload_bytes`` lets a row keep (version 6 widened it).
LONG_TEXT = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
NAME = String(200)
#: Idempotency keys starting with this are nbjobs' own (a fan-out's children); a user's
#: key may not, so that it can never take a child's key first.
RESERVED_KEY_PREFIX = "nbjobs:"

meta = Table(
    "nbjobs_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(200), nullable=False),
)

jobs = Table(
    "nbjobs_jobs",
    metadata,
    Column("id", ID, primary_key=True),
    Column("workflow", NAME, nullable=False),
    Column("queue", String(100), nullable=False),
    Column("status", String(16), nullable=False),
    Column("priority", Integer, nullable=False, default=0),
    # "not before" for queued jobs, "wake at" for waiting ones; NULL never wakes by time.
    Column("run_at", Double),
    Column("key", String(255)),
    Column("input", LONG_TEXT),
    Column("result", LONG_TEXT),
    Column("error", LONG_TEXT),
    Column("traceback", LONG_TEXT),
    # Claims so far (each is an attempt row); failures count against max_retries.
    Column("attempts", Integer, nullable=False, default=0),
    Column("failures", Integer, nullable=False, default=0),
    Column("max_retries", Integer, nullable=False, default=0),
    Column("timeout_seconds", Double),
    # The lease: a worker owns a running job while its token matches (zombie fencing).
    Column("lease_token", String(40)),
    Column("lease_expires_at", Double),
    # The worker of the current (or, once it ended, the last) attempt, and when it began.
    Column("worker_id", String(100)),
    Column("claimed_at", Double),
    Column("reclaims", Integer, nullable=False, default=0),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    # Fan-out tree.
    Column("parent_id", ID),
    Column("root_id", ID),
    Column("fanout", NAME),
    Column("fanout_index", Integer),
    Column("waiting_for", String(255)),
    # Cron.
    Column("schedule", NAME),
    Column("tick_at", Double),
    # Progress.
    Column("steps_expected", Integer),
    Column("steps_done", Integer, nullable=False, default=0),
    Column("progress", Double),
    Column("message", String(500)),
    Column("code_fingerprint", String(16)),
    # The OpenTelemetry context a run continues (``nbjobs.runtime.tracing``): a JSON
    # object of the propagator's fields (``traceparent``, ``tracestate``), written at
    # submit, and for a fan-out child from its parent's attempt; NULL without tracing.
    Column("trace_context", LONG_TEXT),
    # Flow control (version 5): the partition a ``partition_concurrency`` limit counts
    # the job in, and when a job not started by then is cancelled as ``expired``.
    Column("partition_key", String(200)),
    Column("expires_at", Double),
    Column("created_at", Double, nullable=False),
    Column("started_at", Double),
    Column("finished_at", Double),
    Column("updated_at", Double, nullable=False),
    UniqueConstraint("key", name="uq_nbjobs_jobs_key"),
    UniqueConstraint("schedule", "tick_at", name="uq_nbjobs_jobs_tick"),
)

# The claim walks this index in order: status and queue fixed, highest priority first.
Index(
    "ix_nbjobs_jobs_claim",
    jobs.c.status,
    jobs.c.queue,
    jobs.c.priority.desc(),
    jobs.c.run_at,
    jobs.c.id,
    sqlite_where=jobs.c.status == QUEUED_SQL,
    postgresql_where=jobs.c.status == QUEUED_SQL,
)
# Every index entry that moves when a job changes status costs a B-tree write at each
# change (about 8 us on SQLite).  Where the database has partial indexes, the claim and
# timer indexes hold only queued or waiting jobs, so a finishing job touches neither;
# only (status, created_at) and updated_at follow a job through its whole life.  Queries
# meant for a partial index compare status with an inline literal (QUEUED_SQL,
# WAITING_SQL): a bound parameter would hide the match from the planner.
Index(
    "ix_nbjobs_jobs_timers",
    jobs.c.status,
    jobs.c.run_at,
    sqlite_where=jobs.c.status == WAITING_SQL,
    postgresql_where=jobs.c.status == WAITING_SQL,
)
# The running jobs, for the limits' counts (a claim under a limit counts its queue's
# running jobs), the reaper and the fan-out healer: on PostgreSQL only.  Its MVCC keeps
# an entry in (status, created_at) for every version of a job that ever ran until a
# vacuum, and a bitmap scan of them does not mark the dead ones: mid-drain a count of 16
# running jobs read 18,000 entries and 1,000 heap pages (1.8 ms per limited claim).  This
# index holds running versions only, and the count stays near 0.2 ms.  SQLite keeps no
# dead entries, and MySQL has no partial indexes.
RUNNING_INDEX = Index(
    "ix_nbjobs_jobs_running",
    jobs.c.queue,
    jobs.c.workflow,
    postgresql_where=jobs.c.status == RUNNING_SQL,
).ddl_if(dialect="postgresql")
# Queued jobs not yet due (a delay, a retry's backoff): a worker's idle wait ends at the
# first of them.  A job whose run_at is in the future was last updated before it, and a
# job queued to run at once (run_at = updated_at) is never in this index, so a plain
# submit costs no write here.  The claim cannot use it (its condition does not imply
# run_at > updated_at): a planner with stale statistics cannot pick it and sort every
# queued job, as it once did with the (status, queue, run_at) index this replaces.
DUE_INDEX = Index(
    "ix_nbjobs_jobs_due",
    jobs.c.status,
    jobs.c.queue,
    jobs.c.run_at,
    sqlite_where=and_(jobs.c.status == QUEUED_SQL, jobs.c.run_at > jobs.c.updated_at),
    postgresql_where=and_(jobs.c.status == QUEUED_SQL, jobs.c.run_at > jobs.c.updated_at),
)
Index("ix_nbjobs_jobs_status_created", jobs.c.status, jobs.c.created_at)
# Queued jobs with an expiry, for the sweep that cancels the expired ones.  Partial
# where the database allows, so a job without ``expires=`` costs it nothing; elsewhere
# an index of a column fixed at insert (a job's status changes never move its entry).
_EXPIRING = and_(jobs.c.status == QUEUED_SQL, jobs.c.expires_at.is_not(None))
EXPIRES_INDEX = Index(
    "ix_nbjobs_jobs_expires",
    jobs.c.expires_at,
    sqlite_where=_EXPIRING,
    postgresql_where=_EXPIRING,
)
# Incremental dashboard refreshes and the throughput plot.
Index("ix_nbjobs_jobs_updated", jobs.c.updated_at)
# Columns fixed at insert: the newest-first listings and the fan-out tree.
Index("ix_nbjobs_jobs_created", jobs.c.created_at)
Index("ix_nbjobs_jobs_workflow_created", jobs.c.workflow, jobs.c.created_at)
# The last successful run of a workflow (expected steps for progress bars): one insert
# when a job succeeds, never moved.
Index(
    "ix_nbjobs_jobs_succeeded",
    jobs.c.workflow,
    jobs.c.status,
    jobs.c.created_at,
    sqlite_where=jobs.c.status == SUCCEEDED_SQL,
    postgresql_where=jobs.c.status == SUCCEEDED_SQL,
)
# Fan-in counts (children of one fan-out by status) read this index alone.  It holds
# children only (partial where the database allows), so a top-level job's status
# changes cost it nothing.
_CHILDREN_ONLY = jobs.c.parent_id.is_not(None)
Index(
    "ix_nbjobs_jobs_parent",
    jobs.c.parent_id,
    jobs.c.fanout,
    jobs.c.status,
    jobs.c.fanout_index,
    sqlite_where=_CHILDREN_ONLY,
    postgresql_where=_CHILDREN_ONLY,
)
# Fan-out trees by their root (retention).  Children only where the database allows: a
# top-level job is its own root and is found by its id, so a submit, and on PostgreSQL
# every update of a top-level job, costs this index nothing.  Queries meant for it say
# ``parent_id IS NOT NULL``.
TREE_INDEX = Index(
    "ix_nbjobs_jobs_tree",
    jobs.c.root_id,
    sqlite_where=_CHILDREN_ONLY,
    postgresql_where=_CHILDREN_ONLY,
)


_BY_KEY = "FORCE INDEX (PRIMARY)"
_Listed = TypeVar("_Listed", Update, Select[Any])


def jobs_by_key(stmt: _Listed) -> _Listed:
    """``stmt`` (an UPDATE of jobs, or a locking read of them, by ``id IN (...)``) made to
    look its jobs up by primary key on MySQL and MariaDB.

    Their planner scans the whole primary key instead when the list holds a large share
    of a small table, and such a scan locks each row it passes, waiting for rows other
    transactions hold: a heartbeat renewing the jobs it had just locked waited for a job
    a group commit was finishing, while the group waited for one the heartbeat held (a
    deadlock, seen with 300 jobs).  Looked up by key, a statement touches only the rows
    it lists.  Other databases ignore the hint.
    """
    for name in ("mysql", "mariadb"):
        if isinstance(stmt, Update):
            stmt = stmt.with_hint(_BY_KEY, dialect_name=name)
        else:
            stmt = stmt.with_hint(jobs, _BY_KEY, dialect_name=name)
    return stmt


checkpoints = Table(
    "nbjobs_checkpoints",
    metadata,
    Column("job_id", ID, primary_key=True),
    Column("name", NAME, primary_key=True),
    Column("seq", Integer, nullable=False),
    # step | fanout | sleep | signal
    Column("kind", String(16), nullable=False, default="step"),
    Column("done", Boolean, nullable=False, default=True),
    Column("value", LONG_TEXT),
    Column("detail", LONG_TEXT),
    Column("args_hash", String(16)),
    Column("code_fingerprint", String(16)),
    Column("attempt", Integer),
    Column("started_at", Double),
    Column("finished_at", Double),
)

# One row per ended attempt, written in the transaction that ends it (the running
# attempt is the job row itself: worker_id, claimed_at), so a claim costs no insert.
attempts = Table(
    "nbjobs_attempts",
    metadata,
    Column("job_id", ID, primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("worker_id", String(100)),
    Column("lease_token", String(40)),
    # running | succeeded | failed | lost | cancelled | suspended | timeout
    Column("outcome", String(16), nullable=False),
    Column("started_at", Double, nullable=False),
    Column("finished_at", Double),
    Column("error", LONG_TEXT),
    Column("traceback", LONG_TEXT),
)

#: The failed tries of steps with ``@nbjobs.step(retries=...)``, and the try that then
#: succeeded: "step fetch: try 1 failed ConnectionError, try 2 ok".  A step that works at
#: its first try writes no row here (its checkpoint says it all), so the hot path pays
#: nothing.  A new table, no schema version: ``create_all`` adds it to an existing
#: database, and older nbjobs ignore it.  ``outcome``: failed | timeout | succeeded.
step_tries = Table(
    "nbjobs_step_tries",
    metadata,
    Column("job_id", ID, primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("step", NAME, primary_key=True),
    Column("try_number", Integer, primary_key=True),
    Column("outcome", String(16), nullable=False),
    Column("error", LONG_TEXT),
    Column("started_at", Double, nullable=False),
    Column("finished_at", Double, nullable=False),
)

workers = Table(
    "nbjobs_workers",
    metadata,
    Column("id", String(100), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("pid_start", String(40)),
    Column("queues", LONG_TEXT, nullable=False),
    Column("concurrency", Integer, nullable=False),
    Column("jobs_held", Integer, nullable=False, default=0),
    Column("started_at", Double, nullable=False),
    Column("heartbeat_at", Double, nullable=False),
    Column("stopped_at", Double),
)
Index("ix_nbjobs_workers_heartbeat", workers.c.heartbeat_at)

#: The workflows each worker registered, so that a submitter can tell that no live
#: worker will run a job.  A new table, not a column: ``create_all`` adds it to an
#: existing database without a schema version (older nbjobs ignore it).
worker_workflows = Table(
    "nbjobs_worker_workflows",
    metadata,
    Column("worker_id", String(100), primary_key=True),
    Column("workflow", NAME, primary_key=True),
)

queues = Table(
    "nbjobs_queues",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("paused", Boolean, nullable=False, default=False),
    Column("updated_at", Double, nullable=False),
)

#: Fleet-wide flow control: one row per limited queue (``kind`` "queue", from
#: ``app.set_queue``) or workflow (``kind`` "workflow", written by the workers that
#: register it).  A limited claim locks its rows (``FOR UPDATE`` where the database has
#: row locks), so claims under one limit take turns and never both see a free slot.  A
#: new table: ``create_all`` adds it, and a claim of a queue without a row pays one
#: index lookup.
limits = Table(
    "nbjobs_limits",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("name", NAME, primary_key=True),
    Column("concurrency", Integer),
    Column("rate_count", Integer),
    Column("rate_seconds", Double),
    Column("partition_concurrency", Integer),
    Column("updated_at", Double, nullable=False),
)

#: The starts of the last rate window of each rated limit (a sliding log): a limited
#: claim counts the rows younger than the window, takes what is left of the rate, adds
#: one row per start and deletes the rows that left the window.
limit_starts = Table(
    "nbjobs_limit_starts",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("name", NAME, primary_key=True),
    Column("id", ID, primary_key=True),
    Column("at", Double, nullable=False),
)
Index("ix_nbjobs_limit_starts_at", limit_starts.c.kind, limit_starts.c.name, limit_starts.c.at)

signals = Table(
    "nbjobs_signals",
    metadata,
    Column("id", ID, primary_key=True),
    Column("job_id", ID, nullable=False),
    Column("name", NAME, nullable=False),
    Column("payload", LONG_TEXT),
    Column("sent_at", Double, nullable=False),
    Column("consumed_at", Double),
    Column("consumed_by", NAME),
)
Index("ix_nbjobs_signals_job", signals.c.job_id, signals.c.name, signals.c.consumed_at)

schedules = Table(
    "nbjobs_schedules",
    metadata,
    Column("name", NAME, primary_key=True),
    Column("workflow", NAME, nullable=False),
    Column("cron", String(200), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("input", LONG_TEXT),
    Column("queue", String(100), nullable=False),
    Column("priority", Integer, nullable=False, default=0),
    Column("catch_up", String(16), nullable=False),
    # The workflow's options when the schedule was defined (a firing worker may not know
    # the workflow); NULL: take them from the workflow where it is registered.
    Column("max_retries", Integer),
    Column("timeout_seconds", Double),
    Column("steps_expected", Integer),
    Column("paused", Boolean, nullable=False, default=False),
    Column("last_fire_at", Double),
    Column("last_job_id", ID),
    Column("next_fire_at", Double),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
)
Index("ix_nbjobs_schedules_next", schedules.c.paused, schedules.c.next_fire_at)

logs = Table(
    "nbjobs_logs",
    metadata,
    Column("id", ID, primary_key=True),
    Column("job_id", ID, nullable=False),
    Column("attempt", Integer),
    Column("at", Double, nullable=False),
    Column("stream", String(16), nullable=False),
    Column("text", LONG_TEXT, nullable=False),
)
Index("ix_nbjobs_logs_job", logs.c.job_id, logs.c.id)

#: Outcome hooks (``app.on``).  New tables, no schema version: ``create_all`` adds them to
#: an existing database, and older nbjobs ignore them.  A hook is named (by default its
#: ``module.qualname``), so each hook runs once per outcome whichever workers have it.
#: One row per (event, hook) that some worker serves: ``since``, outcomes that finished
#: before it get no call of the hook (they predate it, see :mod:`nbjobs.runtime.hooks`);
#: ``scanned_to``, every such outcome whose job row was last updated before it has a
#: ``hook_runs`` row; ``seen_at``, when a worker serving the hook last said so.
hooks = Table(
    "nbjobs_hooks",
    metadata,
    Column("event", String(16), primary_key=True),
    Column("hook", NAME, primary_key=True),
    Column("since", Double, nullable=False),
    Column("scanned_to", Double, nullable=False),
    Column("seen_at", Double, nullable=False),
)

#: One row per outcome and hook that ran or runs: an outcome is a job's finish, named by
#: the job and its ``finished_at`` (a retry that finishes again is another outcome).
#: ``claimed_by`` and ``claimed_until`` are the lease of the worker calling the hook;
#: ``done_at`` is set (and ``claimed_until`` cleared) once the call returned.
hook_runs = Table(
    "nbjobs_hook_runs",
    metadata,
    Column("job_id", ID, primary_key=True),
    Column("outcome_at", Double, primary_key=True),
    Column("hook", NAME, primary_key=True),
    Column("event", String(16), nullable=False),
    Column("claimed_by", String(40)),
    Column("claimed_until", Double),
    Column("done_at", Double),
)
# Abandoned claims (a worker died in a hook): only unfinished runs have a lease end.
Index("ix_nbjobs_hook_runs_claimed", hook_runs.c.claimed_until)

#: Sweeps (``wf.map``, ``app.submit_many``): a group of jobs submitted in one
#: transaction.  New tables rather than a column of the jobs table: ``create_all`` adds
#: them to an existing database without a schema version, a plain submit writes nothing
#: here, and a job may belong to several groups (a keyed ``submit_many`` returns jobs
#: that an earlier group made).  ``size`` is the number of members at submission;
#: purging deletes the members of deleted jobs and a group left with none.
groups = Table(
    "nbjobs_groups",
    metadata,
    Column("id", ID, primary_key=True),
    Column("label", NAME),
    Column("size", Integer, nullable=False),
    Column("created_at", Double, nullable=False),
)

group_jobs = Table(
    "nbjobs_group_jobs",
    metadata,
    Column("group_id", ID, primary_key=True),
    # The member's index in the submitted items or specs.
    Column("position", Integer, primary_key=True),
    Column("job_id", ID, nullable=False),
)
# A job's groups: purge deletes its memberships with it.
Index("ix_nbjobs_group_jobs_job", group_jobs.c.job_id)

#: The key, in the ``detail`` of a checkpoint that reused an entry, naming the job
#: whose value it reused (``{"cached_from": "<job id>"}``, see :mod:`nbjobs.caching`).
CACHED_FROM = "cached_from"


def cached_detail(job_id: str) -> str:
    """The ``detail`` of a checkpoint whose value was reused from ``job_id``'s entry."""
    return json.dumps({CACHED_FROM: job_id})


#: The cross-run step cache (``cache=True`` steps, see :mod:`nbjobs.caching`): one entry
#: per key (workflow, step, argument digest, code fingerprint or version), the newest
#: success under it.  ``value`` is the stored text of the step's result, the same text
#: (artifacts by reference, never copied) that every hit writes into its own checkpoint;
#: an entry keeps its artifacts alive after the job that made it is purged.  A new table
#: rather than columns of the checkpoints table: ``create_all`` adds it to an existing
#: database without a schema version, purge leaves it alone, and an uncached step costs
#: it nothing.  A hit reads one row by its primary key.
step_cache = Table(
    "nbjobs_step_cache",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("workflow", NAME, nullable=False),
    Column("step", NAME, nullable=False),
    # The job whose checkpoint made the entry ("cached from job X").
    Column("job_id", ID, nullable=False),
    Column("value", LONG_TEXT),
    Column("created_at", Double, nullable=False),
)
# app.clear_cache(workflow=..., step=...).
Index("ix_nbjobs_step_cache_workflow", step_cache.c.workflow, step_cache.c.step)
#: The executed notebook of each attempt of a notebook job (``app.notebook``): the codec's
#: text of the ``.ipynb`` bytes, an artifact reference.  A new table, no schema version:
#: ``create_all`` adds it to an existing database and older nbjobs ignore it.  Keyed by
#: attempt rather than fenced by the lease, so that a timed-out attempt (whose lease the
#: timeout ended) still keeps the notebook it ran; purge deletes the rows with the job.
notebooks = Table(
    "nbjobs_notebooks",
    metadata,
    Column("job_id", ID, primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("value", LONG_TEXT, nullable=False),
    Column("cells", Integer, nullable=False),
    Column("cells_done", Integer, nullable=False),
    Column("failed_cell", Integer),
    Column("created_at", Double, nullable=False),
)

_id_lock = threading.Lock()
_last_id_time = 0


def new_id() -> str:
    """A unique, time-ordered id: microseconds in hex, then random bits."""
    global _last_id_time
    with _id_lock:
        now = max(int(time.time() * 1_000_000), _last_id_time + 1)
        _last_id_time = now
    return f"{now:014x}{secrets.token_hex(5)}"


def new_ids(count: int) -> list[str]:
    """``count`` unique, time-ordered ids at once (a group of jobs): consecutive
    microseconds from now, the random bits read in one call."""
    global _last_id_time
    with _id_lock:
        first = max(int(time.time() * 1_000_000), _last_id_time + 1)
        _last_id_time = first + count - 1
    noise = secrets.token_hex(5 * count)
    return [f"{first + i:014x}{noise[10 * i : 10 * i + 10]}" for i in range(count)]


def new_token() -> str:
    """A lease token: random, so a reclaimed job's old owner can never match it."""
    return secrets.token_hex(10)
