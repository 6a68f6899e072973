"""JobHandle: a reference to one job, read fresh from the database on every access."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runtime.engine import Engine


class JobHandle:
    """A job in the database.  Nothing is cached: every property asks the database."""

    def __init__(self, engine: Engine, job_id: str) -> None:
        #: What the handle asks: the engine of the App that made it.
        self.engine = engine
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
        return self.engine.store.job_status(self.id)

    def info(self) -> dict[str, Any]:
        """The job's row (without input and result) as a dict, times as datetimes."""
        return self.engine.job_info(self.id)

    @property
    def workflow(self) -> str:
        """The name of the workflow the job runs (as registered, see ``App.workflow``)."""
        return self.engine.store.get_job(self.id).workflow

    @property
    def input(self) -> dict[str, Any]:
        """``{"args": [...], "kwargs": {...}}`` as submitted."""
        text = self.engine.store.get_job(self.id, full=True).input
        return self.engine.codec.loads(text, where=f"job {self.id}, its input")

    @property
    def error(self) -> str | None:
        """The error text of the job's failure (``"ValueError: message"``), or None.

        None for a job that has not failed, or that succeeded on a later attempt.  The
        traceback of each attempt is in ``attempts``; ``result()`` raises ``JobFailed``
        with both once the job has failed for good.
        """
        return self.engine.store.get_job(self.id).error

    @property
    def checkpoints(self) -> dict[str, Any]:
        """Finished steps, name -> stored value, in the order they were made."""
        loads = self.engine.codec.loads
        return {
            r.name: loads(r.value, where=f"job {self.id}, checkpoint {r.name!r}")
            for r in self.engine.store.job_checkpoints(self.id)
            if r.done
        }

    def checkpoint_info(self) -> list[dict[str, Any]]:
        """One dict per checkpoint, in order, without loading any value: ``name``,
        ``kind``, ``done``, ``attempt``, ``started_at``, ``finished_at`` (datetimes),
        ``value`` (the stored form, cut to a preview) and ``value_length``."""
        return self.engine.checkpoint_info(self.id)

    @property
    def attempts(self) -> list[dict[str, Any]]:
        """One dict per attempt: worker, start, end, outcome, error, traceback."""
        return self.engine.attempts(self.id)

    @property
    def progress(self) -> float | None:
        """Finished steps over expected steps (or the step's own report), else None."""
        return self.engine.store.job_progress(self.id)

    @property
    def children(self) -> list[JobHandle]:
        """The jobs this job fanned out, in order."""
        rows = self.engine.store.list_jobs(parent_id=self.id, limit=1_000_000, newest_first=False)
        return [JobHandle(self.engine, r.id) for r in rows]

    def logs(self) -> str:
        """What the job printed or logged while running on a worker (``UnknownJob`` when
        there is no such job)."""
        return "".join(r.text for r in self.engine.store.job_logs(self.id))

    # -- waiting -----------------------------------------------------------------------
    def result(self, timeout: float | None = None) -> Any:
        """Wait for the job and return its result.

        Raises :class:`~nbjobs.JobFailed` (with the remote error and traceback; its
        subclasses :class:`~nbjobs.JobTimeout` for a run past its ``timeout`` and
        :class:`~nbjobs.WorkerLost` for a job whose worker kept dying),
        :class:`~nbjobs.JobCancelled`, or ``ResultTimeout`` (a ``TimeoutError``, whose
        message says whether a live worker serves the job's workflow and queue).
        A ``timeout`` that is not a number of seconds (NaN) is a ``ConfigurationError``.
        """
        return self.engine.wait(self.id, timeout)

    async def result_async(self, timeout: float | None = None) -> Any:
        """``result`` for async code; polls without blocking the event loop."""
        return await self.engine.wait_async(self.id, timeout)

    def __await__(self) -> Generator[Any, None, Any]:
        return self.result_async().__await__()

    # -- actions -----------------------------------------------------------------------
    def cancel(self) -> str:
        """Cancel: at once when queued or waiting, at the next step when running."""
        return self.engine.cancel(self.id)

    def retry(self, from_checkpoint: str | None = None) -> JobHandle:
        """Run again, keeping finished checkpoints (or those before ``from_checkpoint``)."""
        self.engine.retry(self.id, from_checkpoint)
        return self

    def signal(self, name: str, payload: Any = None) -> None:
        """Send a signal the job waits for with ``cs.wait_signal(name)``."""
        self.engine.signal(self.id, name, payload)

    def watch(self) -> Any:
        """An ipywidgets progress display that updates live (notebooks)."""
        from .notebook.widgets import watch

        return watch(self)

    # -- notebooks ---------------------------------------------------------------------
    def _repr_html_(self) -> str:
        """Status, progress, timings and the error (see :mod:`nbjobs.notebook.display`)."""
        from .notebook.display import job_html

        return job_html(self)
