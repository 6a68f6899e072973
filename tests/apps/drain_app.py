"""A worker app for the multi-process drain test: ``nbjobs worker tests.apps.drain_app:app``.

Each job writes one row to a ledger table whose primary key is the job id, inside a
checkpoint: a job executed twice would fail on the unique constraint, and the row count
shows every job executed.  The ledger is its own SQLite file (``NBJOBS_LEDGER_DB``).
"""

from __future__ import annotations

import os
import sqlite3
import threading

import nbjobs

app = nbjobs.App(
    os.environ["NBJOBS_URL"], heartbeat_seconds=0.5, stale_after_seconds=30, poll_seconds=0.1
)
_local = threading.local()


def _ledger() -> sqlite3.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = sqlite3.connect(os.environ["NBJOBS_LEDGER_DB"], timeout=60)
    return conn


def write_ledger(job_id: str) -> int:
    conn = _ledger()
    with conn:
        conn.execute("INSERT INTO ledger (job_id, pid) VALUES (?, ?)", (job_id, os.getpid()))
    return os.getpid()


@app.workflow(name="drain")
def drain(cs: nbjobs.CallState, n: int) -> int:
    cs.checkpoint("ledger", write_ledger, cs.job_id)
    return n
