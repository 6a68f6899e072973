"""The side-effect ledger of the chaos workload, in the same database as nbjobs.

Every checkpointed step of the workload performs one side effect: a row in
``chaos_ledger`` keyed by the step's identity (job id, step name), committed in the
step's own transaction before nbjobs records the checkpoint.  A second execution of the
same step finds the key taken and writes to ``chaos_duplicates`` instead, so the harness
sees every execution, with the attempt that made it.

Why both: a step killed after its effect committed but before its checkpoint committed
*will* run again on the next attempt (at-least-once for a step in flight).  The true
guarantee is narrower and checkable: once a step's checkpoint is committed by attempt
``a``, no attempt after ``a`` executes it again.  So an execution from an attempt
*before* the committing one is an expected re-execution of an uncommitted step; one from
an attempt *after* it, or two from the same attempt, is a violation.
"""

from __future__ import annotations

import os
import threading
import time

import sqlalchemy as sa

side = sa.MetaData()
ledger = sa.Table(
    "chaos_ledger",
    side,
    sa.Column("job_id", sa.String(40), primary_key=True),
    sa.Column("step", sa.String(100), primary_key=True),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("at", sa.Double, nullable=False),
)
duplicates = sa.Table(
    "chaos_duplicates",
    side,
    sa.Column("job_id", sa.String(40), nullable=False),
    sa.Column("step", sa.String(100), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("at", sa.Double, nullable=False),
)
#: The flow-controlled queues (``app.set_queue`` by the harness before the workers start):
#: at most ``CAPPED_LIMIT`` bodies of ``CAPPED_QUEUE`` at once, and at most
#: ``RATED_COUNT`` starts of ``RATED_QUEUE`` in any ``RATED_SECONDS``.
CAPPED_QUEUE, CAPPED_LIMIT = "chaos-capped", 2
RATED_QUEUE, RATED_COUNT, RATED_SECONDS = "chaos-rated", 5, 1.0

# The bodies of the flow-controlled jobs (``chaos.capped``, ``chaos.rated``): one row per
# attempt, its start written when the body begins and its end when it returns.  A body
# killed with its worker has no end: the checker ends it at the kill.
bodies = sa.Table(
    "chaos_bodies",
    side,
    sa.Column("job_id", sa.String(40), primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("queue", sa.String(100), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started", sa.Double, nullable=False),
    sa.Column("ended", sa.Double),
)
# When the harness SIGKILLed each worker process (its clock, the workers' clock).
kills = sa.Table(
    "chaos_kills",
    side,
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("at", sa.Double, nullable=False),
)
# A flaky step fails the first time it runs for a job (the row says it did), then passes.
flaky_marks = sa.Table(
    "chaos_flaky",
    side,
    sa.Column("job_id", sa.String(40), primary_key=True),
)

_engine: sa.Engine | None = None
_lock = threading.Lock()


def engine() -> sa.Engine:
    """This process's engine on the ledger (the nbjobs database, ``NBJOBS_URL``)."""
    global _engine
    with _lock:
        if _engine is None:
            url = os.environ["NBJOBS_URL"]
            kwargs: dict = {"pool_pre_ping": True}
            if url.startswith("sqlite"):
                kwargs["connect_args"] = {"timeout": 60}
            else:
                kwargs.update(pool_size=10, max_overflow=20)
            _engine = sa.create_engine(url, **kwargs)
        return _engine


def create(url: str) -> None:
    eng = sa.create_engine(url)
    side.create_all(eng)
    eng.dispose()


def _retrying(fn):
    """SQLite may report "database is locked" under heavy load: try again, briefly."""
    for pause in (0.05, 0.1, 0.2, 0.5, 1, 2, 4):
        try:
            return fn()
        except sa.exc.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            time.sleep(pause)
    return fn()


def effect(job_id: str, step: str, attempt: int, work_seconds: float = 0.0) -> str:
    """The side effect of one step; returns "new" or "duplicate"."""
    # Work before and after the effect: a kill in the second half lands after the effect
    # committed but before the checkpoint does, the case at-least-once is about.
    time.sleep(work_seconds / 2)
    row = dict(job_id=job_id, step=step, attempt=attempt, pid=os.getpid(), at=time.time())

    def write() -> str:
        try:
            with engine().begin() as conn:
                conn.execute(ledger.insert().values(**row))
            return "new"
        except sa.exc.IntegrityError:
            with engine().begin() as conn:
                conn.execute(duplicates.insert().values(**row))
            return "duplicate"

    outcome = _retrying(write)
    time.sleep(work_seconds / 2)
    return outcome


def flaky(job_id: str) -> str:
    """Fails the first time it runs for ``job_id`` (a retry then passes)."""

    def mark() -> bool:
        try:
            with engine().begin() as conn:
                conn.execute(flaky_marks.insert().values(job_id=job_id))
            return True
        except sa.exc.IntegrityError:
            return False

    if _retrying(mark):
        raise RuntimeError(f"flaky step of {job_id} fails once on purpose")
    return "recovered"


def body(job_id: str, attempt: int, queue: str, seconds: float) -> None:
    """A flow-controlled job's body: its start and end in ``chaos_bodies`` (written
    before and after it works), so the checker sees how many ran at once."""
    row = dict(job_id=job_id, attempt=attempt, queue=queue, pid=os.getpid(), started=time.time())

    def start() -> None:
        with engine().begin() as conn:
            conn.execute(bodies.insert().values(**row))

    _retrying(start)
    time.sleep(seconds)
    key = (bodies.c.job_id == job_id, bodies.c.attempt == attempt)

    def end() -> None:
        with engine().begin() as conn:
            conn.execute(bodies.update().where(*key).values(ended=time.time()))

    _retrying(end)


def record_kill(pid: int, at: float) -> None:
    """The harness SIGKILLed worker ``pid`` at ``at``: its unfinished bodies end there."""

    def write() -> None:
        with engine().begin() as conn:
            conn.execute(kills.insert().values(pid=pid, at=at))

    _retrying(write)
