"""The worker app of the sweep crash test: ``nbjobs worker tests.apps.group_app:app``.

It reads ``NBJOBS_URL``.  Each job of the ``sweep-item`` workflow appends ``ran JOB_ID``
to the ledger file ``NBJOBS_LEDGER`` inside a checkpoint, so a test can count how often
each job's side effect ran across processes, killed ones included.  No fsync: a
SIGKILLed process loses nothing it wrote (the test never crashes the machine), and ten
thousand fsyncs would measure the disk.
"""

from __future__ import annotations

import os

import nbjobs

app = nbjobs.App(
    os.environ["NBJOBS_URL"],
    heartbeat_seconds=0.5,
    stale_after_seconds=3.0,
    poll_seconds=0.2,
    retry_backoff_seconds=0.05,
    retry_backoff_max_seconds=0.5,
    max_reclaims=10,
)


def ran(job_id: str) -> int:
    fd = os.open(os.environ["NBJOBS_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"ran {job_id} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return os.getpid()


@app.workflow(name="sweep-item")
def sweep_item(cs: nbjobs.CallState, x: int) -> int:
    cs.checkpoint("ledger", ran, cs.job_id)
    return x * 2
