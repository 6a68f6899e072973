"""JobGroup: the jobs of one ``wf.map`` or ``app.submit_many``, watched and acted on as one.

Like a :class:`~nbjobs.JobHandle`, a group caches nothing but its fixed facts (label,
size, creation time): every count and frame is read from the database, so a group
works the same for jobs run by any worker, in this process or another.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .clock import to_datetime
from .errors import ResultTimeout
from .handle import JobHandle
from .jobs import FINISHED, STATUSES, Status
from .validation import check_number

if TYPE_CHECKING:
    from datetime import datetime

    import pandas as pd
    from sqlalchemy.engine import Row

    from .runtime.engine import Engine

#: The longest pause between two reads of a group's counts while ``wait`` polls (unless
#: the read itself is slow: see ``COST_FACTOR``).
WAIT_POLL_MAX_SECONDS = 0.25
#: ``wait`` and ``watch`` read a group's counts again no sooner than this many times the
#: last read took.
COST_FACTOR = 20.0


class JobGroup:
    """The jobs of one sweep: ``status_counts()``, ``progress``, ``watch()``,
    ``results_frame()``, ``wait()``, ``cancel()``, ``retry_failed()``.

    Made by ``wf.map(items)``, ``app.submit_many(specs)``, ``app.group(id)`` and
    ``app.groups()``.
    """

    def __init__(self, engine: Engine, group_id: str, row: Row | None = None) -> None:
        #: What the group asks: the engine of the App that made it.
        self.engine = engine
        self._row = row if row is not None else engine.store.get_group(group_id)
        self.id: str = group_id

    @property
    def label(self) -> str | None:
        """The label given at submission (``wf.map`` uses the workflow's name)."""
        return self._row.label

    @property
    def size(self) -> int:
        """The number of jobs submitted (items or specs)."""
        return int(self._row.size)

    @property
    def created_at(self) -> datetime | None:
        return to_datetime(self._row.created_at)

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        counts = {k: v for k, v in self.status_counts().items() if v}
        shown = ", ".join(f"{n} {s}" for s, n in counts.items()) or "no jobs"
        label = f" {self.label!r}" if self.label else ""
        return f"<JobGroup {self.id}{label} {self.size} jobs: {shown}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobGroup) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # -- state -------------------------------------------------------------------------
    def status_counts(self) -> dict[str, int]:
        """Status -> number of the group's jobs in it, every status listed (one query)."""
        counts = self.engine.store.group_status_counts([self.id])[self.id]
        return {status: counts.get(status, 0) for status in STATUSES}

    @property
    def progress(self) -> float:
        """Finished jobs (succeeded, failed or cancelled) over all the group's jobs
        (1.0 for a group with none left)."""
        counts = self.status_counts()
        total = sum(counts.values())
        return sum(counts[s] for s in FINISHED) / total if total else 1.0

    @property
    def jobs(self) -> list[JobHandle]:
        """The handles of the group's jobs, in submission order."""
        return [JobHandle(self.engine, r.id) for r in self.engine.store.group_members(self.id)]

    def results_frame(self) -> pd.DataFrame:
        """One row per job, in submission order: ``position``, ``job_id``, ``workflow``,
        ``input`` (the item of ``wf.map``; a spec's single argument, else its
        ``{"args", "kwargs"}``), ``status``, ``result`` (succeeded jobs), ``error``
        (failed and cancelled ones) and ``duration_s``.  Results are loaded (artifacts
        too)."""
        from .notebook.frames import group_frame

        rows = self.engine.store.group_members(self.id, full=True)
        return group_frame(rows, self.engine.codec.loads)

    def watch(self, poll_seconds: float = 1.0) -> Any:
        """One live ipywidgets display of the whole group: a progress bar and the count
        of jobs in each status (notebooks), read once a second (one count query, or
        less often when that query is slow)."""
        from .notebook.widgets import GroupWatch

        return GroupWatch(self, poll_seconds=poll_seconds)

    # -- waiting -----------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> JobGroup:
        """Wait until every job of the group has finished (succeeded, failed or
        cancelled) and return the group; ``ResultTimeout`` after ``timeout`` seconds,
        saying how many finished.  Failed jobs raise nothing here: see
        ``status_counts()`` and ``results_frame()``."""
        check_number("timeout", timeout, 0, optional=True)
        finished = self.engine.runtime.finished
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.005
        while True:
            generation = finished.generation
            read_at = time.monotonic()
            counts = self.status_counts()
            # A big group's count costs milliseconds: poll no more often than 20 times
            # its cost, so that waiting takes at most ~5% of the database's time.
            spent = time.monotonic() - read_at
            done = sum(counts[s] for s in FINISHED)
            total = sum(counts.values())
            if done == total:
                return self
            # A job finishing in this process ends the pause early, but not the budget:
            # a worker here finishes jobs far faster than a big group can be counted.
            budget = COST_FACTOR * spent
            wait = max(pause, budget)
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    unfinished = ", ".join(
                        f"{counts[s]} {s}" for s in STATUSES if s not in FINISHED and counts[s]
                    )
                    raise ResultTimeout(
                        f"group {self.id}: {done} of {total} jobs finished within "
                        f"{timeout} s ({unfinished})"
                    )
                wait = min(wait, remaining)
                budget = min(budget, remaining)
            time.sleep(budget)
            finished.wait(generation, wait - budget)
            pause = min(pause * 1.5, WAIT_POLL_MAX_SECONDS)

    # -- actions -----------------------------------------------------------------------
    def cancel(self) -> int:
        """Cancel every unfinished job of the group, in one transaction: queued and
        waiting ones at once, running ones at their next step.  Returns how many jobs
        the request reached."""
        return self.engine.cancel_group(self.id)

    def retry_failed(self, include_cancelled: bool = False) -> int:
        """Queue the group's failed jobs again (and cancelled ones with
        ``include_cancelled``), in one transaction, keeping their finished steps.
        Returns how many were queued."""
        statuses = [Status.FAILED.value]
        if include_cancelled:
            statuses.append(Status.CANCELLED.value)
        return self.engine.retry_group(self.id, statuses)

    # -- notebooks ---------------------------------------------------------------------
    def _repr_html_(self) -> str:
        from .notebook.display import group_html

        return group_html(self.id, self.label, self.status_counts())
