"""A worker app for the MariaDB wake-up tests: ``nbjobs worker tests.apps.wake_app:app``.

It polls only every 30 s (``NBJOBS_WAKE_POLL``), so a job it starts within the tests'
wait was started by a wake-up, not by its poll.
"""

from __future__ import annotations

import os
import time

import nbjobs

app = nbjobs.App(
    os.environ["NBJOBS_URL"],
    heartbeat_seconds=0.5,
    stale_after_seconds=30,
    poll_seconds=float(os.environ.get("NBJOBS_WAKE_POLL", "30")),
)


@app.workflow(name="ping")
def ping(cs: nbjobs.CallState, n: int = 0) -> int:
    return os.getpid()


@app.workflow(name="nap")
def nap(cs: nbjobs.CallState, seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()
