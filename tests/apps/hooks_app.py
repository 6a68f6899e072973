"""A worker app with outcome hooks: ``nbjobs worker tests.apps.hooks_app:app``.

It reads ``NBJOBS_URL``.  Its ``failed`` hook waits while the file
``NBJOBS_HOOK_HOLD_BEFORE`` exists (a test can SIGKILL the process after the outcome
and the claim of the hook, before the hook did anything), writes ``hook-start JOB
STATUS`` to the ledger (``NBJOBS_LEDGER``), waits while the file ``NBJOBS_HOOK_HOLD``
exists (killed in the middle of the hook), then writes ``hook-done JOB``.  Leases
are short (``stale_after_seconds``), so a killed worker's hooks run again within seconds.
"""

from __future__ import annotations

import os
import time

import nbjobs
from tests.apps.events import record

app = nbjobs.App(
    os.environ["NBJOBS_URL"], heartbeat_seconds=0.3, stale_after_seconds=1.5, poll_seconds=0.1
)


@app.workflow(name="hooked-boom")
def boom(cs: nbjobs.CallState) -> None:
    raise RuntimeError("boom")


@app.on("failed")
def alert(handle: nbjobs.JobHandle) -> None:
    _hold("NBJOBS_HOOK_HOLD_BEFORE")
    record(f"hook-start {handle.id} {handle.status}")
    _hold("NBJOBS_HOOK_HOLD")
    record(f"hook-done {handle.id}")


def _hold(variable: str) -> None:
    hold = os.environ.get(variable)
    while hold and os.path.exists(hold):  # the test kills this process here
        time.sleep(0.05)
