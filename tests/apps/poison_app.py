"""The app of the poison-job tests: ``nbjobs worker tests.apps.poison_app:app``.

It reads ``NBJOBS_URL``.  ``poison`` kills the worker process that runs it, every time:
``os._exit`` (no cleanup, no release) or SIGKILL of itself.  The stale threshold is long,
so a lost job comes back because its worker's pid is gone (noticed when a worker starts),
not because a heartbeat went stale.
"""

from __future__ import annotations

import os
import signal

import nbjobs

app = nbjobs.App(
    os.environ["NBJOBS_URL"],
    heartbeat_seconds=0.5,
    stale_after_seconds=300,
    poll_seconds=0.1,
    max_reclaims=2,
)


def crash(how: str) -> None:
    if how == "exit":
        os._exit(3)
    os.kill(os.getpid(), signal.SIGKILL)


@app.workflow(name="poison", retries=5)
def poison(cs: nbjobs.CallState, how: str) -> str:
    cs.checkpoint("before", lambda: "fine so far")
    cs.checkpoint("crash", crash, how)
    return "unreachable"


@app.workflow(name="fine")
def fine(cs: nbjobs.CallState, x: int) -> int:
    return cs.checkpoint("double", lambda: x * 2)
