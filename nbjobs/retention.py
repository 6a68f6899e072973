"""Retention policy: what ``app.purge`` accepts, and automatic retention in the monitor.

Automatic retention (``App(retention_seconds=...)``) runs inside every worker's monitor
thread, so it must never stall heartbeats: each pass deletes at most a few bounded
batches and comes back a second later while a backlog remains, else after
``retention_interval`` (a tenth of the retention period, between 1 s and 5 min).  Several
workers may purge at once; deleting a tree is idempotent.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .schema import TERMINAL
from .validation import check_number, check_time

if TYPE_CHECKING:
    from .app import App

log = logging.getLogger(__name__)

FINISHED = tuple(sorted(s.value for s in TERMINAL))
#: Batches one monitor pass deletes at most (each a short transaction).
BATCHES_PER_PASS = 4
BATCH_SIZE = 500


def purge_arguments(
    now: float, older_than: Any, status: str | list[str] | tuple[str, ...] | None
) -> tuple[float, list[str]]:
    """(cutoff epoch, statuses) from ``app.purge``'s arguments, or ConfigurationError."""
    if isinstance(older_than, datetime):
        cutoff = check_time("older_than", older_than)
    elif isinstance(older_than, timedelta):
        cutoff = now - older_than.total_seconds()
    elif isinstance(older_than, (int, float)) and not isinstance(older_than, bool):
        cutoff = now - float(check_number("older_than", older_than, 0))
    else:
        raise ConfigurationError(
            "older_than must be an age in seconds, a timedelta or a cutoff datetime, "
            f"got {older_than!r}"
        )
    if status is None:
        return cutoff, list(FINISHED)
    statuses = [status] if isinstance(status, str) else list(status)
    bad = [s for s in statuses if str(s) not in FINISHED]
    if bad or not statuses:
        raise ConfigurationError(
            f"purge deletes finished jobs only: status must be among {', '.join(FINISHED)}, "
            f"got {status!r}"
        )
    return cutoff, [str(s) for s in statuses]


def retention_interval(retention_seconds: float) -> float:
    """How often a worker purges: a tenth of the retention period, within [1 s, 5 min]."""
    return min(300.0, max(1.0, retention_seconds / 10))


def retention_tick(app: App) -> None:
    """One monitor pass of automatic retention, when it is due (a few batches at most)."""
    now = app.clock.now()
    if app.retention_seconds is None or now < app._retention_next_at:
        return
    # Set first: a failing purge (logged by the monitor) waits a full interval to retry.
    app._retention_next_at = now + retention_interval(app.retention_seconds)
    deleted, more = app.store.purge_jobs(
        finished_before=now - app.retention_seconds,
        statuses=FINISHED,
        batch_size=BATCH_SIZE,
        max_batches=BATCHES_PER_PASS,
    )
    if more:
        app._retention_next_at = now + 1.0
    if deleted:
        log.info("retention: purged %d finished job(s)", deleted)
