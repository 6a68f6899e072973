"""JobHandle: a reference to one job, read fresh from the database on every access."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .clock import to_datetime
from .errors import (
    TIMEOUT_ERROR_PREFIX,
    WORKER_LOST_PREFIX,
    JobCancelled,
    JobFailed,
    JobTimeout,
    NbjobsError,
    WorkerLost,
)
from .schema import Status
from .validation import check_number

if TYPE_CHECKING:
    from .app import App


class ResultTimeout(NbjobsError, TimeoutError):
    """``h.result(timeout=...)`` returned before the job finished."""


def _failure_class(error: str | None) -> type[JobFailed]:
    """The ``JobFailed`` subclass a failed job's stored error text stands for (nbjobs
    writes these texts itself: a timeout, and the give-up of a job whose worker kept
    dying)."""
    text = error or ""
    if text.startswith(TIMEOUT_ERROR_PREFIX):
        return JobTimeout
    if text.startswith(WORKER_LOST_PREFIX) and "giving up" in text:
        return WorkerLost
    return JobFailed


class JobHandle:
    """A job in the database.  Nothing is cached: every property asks the database."""

    def __init__(self, app: App, job_id: str) -> None:
        self.app = app
        self.id = job_id

    def __repr__(self) -> str:
        return f"<JobHandle {self.id} {self.status}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # -- state -------------------------------------------------------------------------
    @property
    def status(self) -> str:
        """``queued | running | waiting | succeeded | failed | cancelled``."""
        return self.app.store.job_status(self.id)

    def info(self) -> dict[str, Any]:
        """The job's row (without input and result) as a dict, times as datetimes."""
        row = self.app.store.get_job(self.id)._asdict()
        for name in ("run_at", "created_at", "started_at", "finished_at", "updated_at", "tick_at"):
            row[name] = to_datetime(row[name])
        row.pop("lease_token", None)
        return row

    @property
    def workflow(self) -> str:
        """The name of the workflow the job runs (as registered, see ``App.workflow``)."""
        return self.app.store.get_job(self.id).workflow

    @property
    def input(self) -> dict[str, Any]:
        """``{"args": [...], "kwargs": {...}}`` as submitted."""
        return self.app.codec.loads(self.app.store.get_job(self.id, full=True).input)

    @property
    def error(self) -> str | None:
        """The error text of the job's failure (``"ValueError: message"``), or None.

        None for a job that has not failed, or that succeeded on a later attempt.  The
        traceback of each attempt is in ``attempts``; ``result()`` raises ``JobFailed``
        with both once the job has failed for good.
        """
        return self.app.store.get_job(self.id).error

    @property
    def checkpoints(self) -> dict[str, Any]:
        """Finished steps, name -> stored value, in the order they were made."""
        loads = self.app.codec.loads
        return {r.name: loads(r.value) for r in self.app.store.job_checkpoints(self.id) if r.done}

    @property
    def attempts(self) -> list[dict[str, Any]]:
        """One dict per attempt: worker, start, end, outcome, error, traceback."""
        out = []
        for r in self.app.store.job_attempts(self.id):
            row = r._asdict()
            row.pop("lease_token", None)
            row["started_at"] = to_datetime(row["started_at"])
            row["finished_at"] = to_datetime(row["finished_at"])
            out.append(row)
        return out

    @property
    def progress(self) -> float | None:
        """Finished steps over expected steps (or the step's own report), else None."""
        return self.app.store.job_progress(self.id)

    @property
    def children(self) -> list[JobHandle]:
        """The jobs this job fanned out, in order."""
        rows = self.app.store.list_jobs(parent_id=self.id, limit=1_000_000, newest_first=False)
        return [JobHandle(self.app, r.id) for r in rows]

    def logs(self) -> str:
        """What the job printed or logged while running on a worker (``UnknownJob`` when
        there is no such job)."""
        return "".join(r.text for r in self.app.store.job_logs(self.id))

    # -- waiting -----------------------------------------------------------------------
    def _outcome(self) -> tuple[bool, Any]:
        row = self.app.store.job_outcome(self.id)
        if row is None:
            return False, None
        if row.status == Status.SUCCEEDED.value:
            return True, self.app.codec.loads(row.result)
        if row.status == Status.CANCELLED.value:
            raise JobCancelled(self.id)
        raise _failure_class(row.error)(self.id, row.error, row.traceback)

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the job and return its result.

        Raises :class:`~nbjobs.JobFailed` (with the remote error and traceback; its
        subclasses :class:`~nbjobs.JobTimeout` for a run past its ``timeout`` and
        :class:`~nbjobs.WorkerLost` for a job whose worker kept dying),
        :class:`~nbjobs.JobCancelled`, or ``ResultTimeout`` (a ``TimeoutError``, whose
        message says whether a live worker serves the job's workflow and queue).
        A ``timeout`` that is not a number of seconds (NaN) is a ``ConfigurationError``.
        """
        return self.app._wait_for(self, check_number("timeout", timeout, 0, optional=True))

    async def result_async(self, timeout: float | None = None) -> Any:
        """``result`` for async code; polls without blocking the event loop."""
        check_number("timeout", timeout, 0, optional=True)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        pause = 0.005
        while True:
            done, value = await asyncio.to_thread(self._outcome)
            if done:
                return value
            if deadline is not None and loop.time() >= deadline:
                message = await asyncio.to_thread(self.app._timeout_message, self, timeout)
                raise ResultTimeout(message)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.2)

    def __await__(self):
        return self.result_async().__await__()

    # -- actions -----------------------------------------------------------------------
    def cancel(self) -> str:
        """Cancel: at once when queued or waiting, at the next step when running."""
        return self.app.cancel(self.id)

    def retry(self, from_checkpoint: str | None = None) -> JobHandle:
        """Run again, keeping finished checkpoints (or those before ``from_checkpoint``)."""
        self.app.store.retry_job(self.id, from_checkpoint=from_checkpoint)
        self.app._wake_workers()
        return self

    def signal(self, name: str, payload: Any = None) -> None:
        """Send a signal the job waits for with ``cs.wait_signal(name)``."""
        self.app.signal(self.id, name, payload)

    def watch(self) -> Any:
        """An ipywidgets progress display that updates live (notebooks)."""
        from .notebook.widgets import watch

        return watch(self)

    # -- notebooks ---------------------------------------------------------------------
    def _repr_html_(self) -> str:
        """Status, progress, timings and the error (see :mod:`nbjobs.notebook.display`)."""
        from .notebook.display import job_html

        return job_html(self)
