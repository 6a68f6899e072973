"""What a job's status means and how its progress reads: one home, without SQL.

The store filters on the finished statuses, the engine decides by them, and the
notebook and the dashboard colour and measure jobs by them.  Each used to rebuild the
set (ten copies) and progress had three rules that ordered their cases differently,
so a fan-out parent could read 40 % in the table and 0 % in its widget.  Everything
here is plain Python over status strings and row-like objects: it imports nothing
from nbjobs, so every floor may import it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any


class Status(str, enum.Enum):
    """A job's status, stored as its lowercase value."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


#: The finished statuses: a job in one of them runs again only when retried.  (A plain
#: string tests true against them too: ``"failed" in TERMINAL``.)
TERMINAL: frozenset[Status] = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})
#: The stored values of the finished statuses, in :class:`Status` order (for SQL ``IN``
#: lists, which bind plain strings, and for messages).
FINISHED: tuple[str, ...] = tuple(s.value for s in Status if s in TERMINAL)
#: The stored values of the unfinished statuses: queued, running, waiting.
ACTIVE: tuple[str, ...] = tuple(s.value for s in Status if s not in TERMINAL)
#: Every status value, in the order the counters and the filters list them.
STATUSES: tuple[str, ...] = tuple(s.value for s in Status)

#: One colour per status, shared by the notebook's HTML, its widget and the dashboard.
STATUS_COLOURS: dict[str, str] = {
    "queued": "#6b7280",
    "running": "#2563eb",
    "waiting": "#d97706",
    "succeeded": "#16a34a",
    "failed": "#dc2626",
    "cancelled": "#9ca3af",
}


def progress(
    status: str,
    steps_done: int,
    expected_steps: int | None,
    reported: float | None = None,
    children: tuple[int, int] | None = None,
) -> float | None:
    """A job's progress as a fraction in [0, 1], or None when nothing says how far it is.

    The one rule, its cases in this order:

    1. a succeeded job is complete;
    2. a fan-out parent (``children``: finished, in all) shows its children finished;
    3. a running step's own report (``cs.progress``) wins over the step count;
    4. otherwise finished steps over expected steps (``steps=`` or the last success).
    """
    if status == Status.SUCCEEDED.value:
        return 1.0
    if children is not None and children[1]:
        return min(1.0, children[0] / children[1])
    if status == Status.RUNNING.value and reported is not None:
        return min(1.0, max(0.0, float(reported)))
    if expected_steps:
        return min(1.0, steps_done / expected_steps)
    return None


def row_progress(row: Any) -> float | None:
    """:func:`progress` of a table row (``ViewQueries.jobs_page``/``jobs_rows``), whose
    ``children_done``/``children_total`` are set for a waiting fan-out parent."""
    children = (row.children_done or 0, row.children_total) if row.children_total else None
    return progress(row.status, row.steps_done, row.expected_steps, row.progress, children)


def row_code_changed(row: Any, registered: Mapping[str, str] | None = None) -> bool:
    """True when an unfinished row was submitted with other code than its workflow's now.

    The workflow's code now is the fingerprint registered in this process (``registered``:
    name -> fingerprint) when there is one, else that of the newest job of the workflow
    (the row's ``latest_fingerprint``): a dashboard served by another process has no
    workflows registered, and a newer submission means newer code.
    """
    if row.status not in ACTIVE or not row.code_fingerprint:
        return False
    current = (registered or {}).get(row.workflow) or row.latest_fingerprint
    return bool(current) and current != row.code_fingerprint


__all__ = [
    "ACTIVE",
    "FINISHED",
    "STATUSES",
    "STATUS_COLOURS",
    "TERMINAL",
    "Status",
    "progress",
    "row_code_changed",
    "row_progress",
]


def limits_text(concurrency: int | None, rate: str | None) -> str:
    """A queue's flow-control limits in a table cell (the CLI's, the dashboard's):
    ``"concurrency 4, 100/minute"``, or ``""`` for none."""
    parts = [f"concurrency {concurrency}"] if concurrency is not None else []
    return ", ".join(parts + ([rate] if rate else []))
