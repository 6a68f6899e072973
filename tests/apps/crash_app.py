"""A worker app for subprocess tests: ``nbjobs worker tests.apps.crash_app:app``.

It reads ``NBJOBS_URL``.  Steps append to the ledger file ``NBJOBS_LEDGER`` (one fsynced
line per event), so a test can count side effects across processes; the step named by
``NBJOBS_HANG_AT`` hangs after it starts, so a test can SIGKILL the process mid-step.
The stale threshold is long on purpose: a dead process's jobs must come back because its
pid is gone, not because its heartbeat went stale.
"""

from __future__ import annotations

import os
import time

import nbjobs
from tests.apps.events import record

app = nbjobs.App(
    os.environ["NBJOBS_URL"], heartbeat_seconds=0.5, stale_after_seconds=300, poll_seconds=0.1
)


def step(name: str) -> str:
    record(f"start {name}")
    if name == os.environ.get("NBJOBS_HANG_AT"):
        while True:  # the test kills this process here
            time.sleep(0.05)
    record(f"done {name}")
    return f"{name}-ok"


@app.workflow(name="crash-pipeline")
def crash_pipeline(cs: nbjobs.CallState, steps: int = 4) -> list:
    return [cs.checkpoint(f"s{i}", step, f"s{i}") for i in range(1, steps + 1)]


@app.workflow(name="fence-step")
def fence_step(cs: nbjobs.CallState) -> str:
    return cs.checkpoint("work", lambda: "owner")


@app.workflow(name="fence-result")
def fence_result(cs: nbjobs.CallState) -> str:
    return "owner:" + cs.checkpoint("work", lambda: "owner")


@app.workflow(name="echo")
def echo(cs: nbjobs.CallState, value: object) -> object:
    return {"echo": value, "pid": os.getpid()}
