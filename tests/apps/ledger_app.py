"""The app of the multi-process backend tests: ``nbjobs worker tests.apps.ledger_app:app``.

It reads ``NBJOBS_URL``.  Each job makes ``STEPS`` checkpointed steps; a step's side
effect is a row in ``ledger`` (unique per job and step) in the same database.  A step
that finds its row already there (it ran before, but its checkpoint was never recorded:
the worker died or the database went away in between) notes that in ``replays``, so a
test can tell "recorded exactly once" from "executed exactly once".
"""

from __future__ import annotations

import os

import sqlalchemy as sa

import nbjobs
from tests.apps.ledger_schema import STEPS, ledger, replays

app = nbjobs.App(
    os.environ["NBJOBS_URL"],
    heartbeat_seconds=0.5,
    stale_after_seconds=3.0,
    poll_seconds=float(os.environ.get("NBJOBS_POLL_SECONDS", "0.2")),
    retry_backoff_seconds=0.05,
    retry_backoff_max_seconds=0.5,
    max_reclaims=10,
)

_engine: sa.Engine | None = None


def engine() -> sa.Engine:
    global _engine
    if _engine is None:
        _engine = sa.create_engine(os.environ["NBJOBS_URL"], pool_pre_ping=True, pool_size=10)
    return _engine


def record(job_id: str, step: int) -> str:
    """The side effect: one ledger row per (job, step); a second attempt is a replay."""
    row = dict(job_id=job_id, step=step, pid=os.getpid())
    try:
        with engine().begin() as conn:
            conn.execute(ledger.insert().values(**row))
        return "new"
    except sa.exc.IntegrityError:
        with engine().begin() as conn:
            conn.execute(replays.insert().values(**row))
        return "replayed"


@app.workflow(name="ledger", retries=5)
def ledger_job(cs: nbjobs.CallState, n: int) -> int:
    for step in range(STEPS):
        cs.checkpoint(f"step-{step}", record, cs.job_id, step)
    return n
