"""A worker app for the metrics tests: ``nbjobs worker tests.apps.metrics_app:app
--metrics-port PORT``.

It reads ``NBJOBS_URL`` and registers the ``metered`` workflow.
"""

from __future__ import annotations

import os

import nbjobs

app = nbjobs.App(
    os.environ["NBJOBS_URL"], heartbeat_seconds=0.2, stale_after_seconds=5.0, poll_seconds=0.05
)


@app.workflow(name="metered")
def metered(cs: nbjobs.CallState, n: int) -> int:
    return cs.checkpoint("double", lambda: 2 * n)
