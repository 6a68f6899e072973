"""A worker app for the step cache tests: ``nbjobs worker tests.apps.cache_app:app``.

It reads ``NBJOBS_URL``; its steps append to the ledger file ``NBJOBS_LEDGER``."""

from __future__ import annotations

import os

import nbjobs
from tests.apps.cache_steps import define

app = nbjobs.App(
    os.environ["NBJOBS_URL"], heartbeat_seconds=0.5, stale_after_seconds=300, poll_seconds=0.05
)
pipeline = define(app)
