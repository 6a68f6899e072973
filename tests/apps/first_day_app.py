"""A worker app for the first-day tests: ``nbjobs worker tests.apps.first_day_app:app``.

Its App is made without a URL, so it reads ``NBJOBS_URL`` (which ``--url`` sets), and its
workflows keep their default (module-qualified) names.
"""

from __future__ import annotations

import nbjobs

app = nbjobs.App(heartbeat_seconds=0.5, stale_after_seconds=300, retry_backoff_seconds=0.01)


@app.workflow(retries=1)
def flaky(cs: nbjobs.CallState) -> None:
    raise RuntimeError("disk full")


@app.workflow(retries=1)
def drift(cs: nbjobs.CallState) -> int:
    value = cs.checkpoint("scaled", lambda attempt: attempt * 10, cs.attempt)
    if cs.attempt == 1:
        raise ConnectionError("fail once")
    return value
