"""The app of the multi-process schedule test: ``nbjobs worker tests.apps.cron_app:app``.

The database URL comes from ``NBJOBS_URL``; the schedule itself is defined by the test
(schedules live in the database, not in code).
"""

from __future__ import annotations

import os

import nbjobs

app = nbjobs.App(
    os.environ["NBJOBS_URL"], heartbeat_seconds=0.5, stale_after_seconds=5.0, poll_seconds=0.2
)


@app.workflow(name="cron-tick")
def cron_tick(cs: nbjobs.CallState) -> str:
    return cs.job_id
