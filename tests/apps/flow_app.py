"""The app of the fleet-wide flow-control tests: ``nbjobs worker tests.apps.flow_app:app``.

It reads ``NBJOBS_URL``.  Each job notes when its body started and ended, and in which
process, in ``flow_ledger`` (same database), so a test can count how many bodies ran at
once under each limit.  With ``FLOW_HANG=1`` in its environment a worker's ``flow.hang``
jobs hang (to be SIGKILLed); elsewhere they return at once.
"""

from __future__ import annotations

import os
import time

import sqlalchemy as sa

import nbjobs
from tests.apps.flow_schema import flow_ledger

app = nbjobs.App(
    os.environ["NBJOBS_URL"],
    heartbeat_seconds=0.3,
    stale_after_seconds=2.0,
    poll_seconds=0.05,
)

_engine: sa.Engine | None = None


def _record(cs: nbjobs.CallState, kind: str, partition: str | None, seconds: float) -> None:
    global _engine
    start = time.time()
    time.sleep(seconds)
    end = time.time()
    if _engine is None:
        _engine = sa.create_engine(os.environ["NBJOBS_URL"], pool_pre_ping=True)
    with _engine.begin() as conn:
        conn.execute(
            flow_ledger.insert().values(
                job_id=cs.job_id, kind=kind, part=partition, pid=os.getpid(), start=start, end=end
            )
        )


@app.workflow(name="flow.api", queue="api")
def api(cs: nbjobs.CallState, n: int) -> int:
    _record(cs, "api", None, 0.1)
    return n


@app.workflow(name="flow.capped", queue="wfq", concurrency=2)
def capped(cs: nbjobs.CallState, n: int) -> int:
    _record(cs, "capped", None, 0.1)
    return n


@app.workflow(name="flow.part", queue="parts", partition_concurrency=1)
def part(cs: nbjobs.CallState, customer: str, n: int) -> int:
    _record(cs, "part", customer, 0.1)
    return n


@app.workflow(name="flow.hang", queue="one")
def hang(cs: nbjobs.CallState, n: int) -> int:
    if os.environ.get("FLOW_HANG"):
        time.sleep(600)
    _record(cs, "hang", None, 0.0)
    return n


@app.workflow(name="flow.tick", queue="rated")
def tick(cs: nbjobs.CallState, n: int) -> int:
    return n


@app.workflow(queue="aliasq", concurrency=2)
def aliased_flow(cs: nbjobs.CallState, n: int) -> int:
    """Named ``tests.apps.flow_app.aliased_flow``; a script's jobs stored under the bare
    qualname ``aliased_flow`` are its jobs too, under the same limit."""
    _record(cs, "aliased", None, 0.1)
    return n
