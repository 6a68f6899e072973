"""JobHandle: a reference to one job, read fresh from the database on every access."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from .artifacts.artifact import Artifact
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

    @property
    def status_detail(self) -> str:
        """The status, with why where there is a why: which limit holds a queued job
        back (``"queued: held by the concurrency limit of queue 'api' (2 of 2
        running)"``), a paused queue, or a cancellation's reason (``"cancelled:
        expired"``)."""
        store = self.engine.store
        row = store.get_job(self.id)
        if row.status == "queued":
            why = store.job_hold(self.id)
            return f"queued: {why}" if why else "queued"
        if row.status == "cancelled" and row.error:
            return f"cancelled: {row.error}"
        return str(row.status)

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

    def checkpoints_frame(self) -> pd.DataFrame:
        """The job's checkpoints as a DataFrame, one row each in step order: ``seq``,
        ``name``, ``kind``, ``status``, ``attempt``, ``started_at``, ``finished_at``,
        ``duration_s`` and ``cached_from`` (the job a cached step's value was reused
        from, else None); no value is loaded."""
        from .notebook.frames import checkpoints_frame

        return checkpoints_frame(self.engine.store.history_steps([self.id]))

    def artifacts(self) -> list[Artifact]:
        """Every artifact the job's stored values refer to, without loading any: its
        input's, each finished checkpoint's (in order), its result's.  Artifacts nested
        in a value too big for its row (spilled as a whole) are inside that file: the
        spilled file itself is listed, as an artifact of type ``json``."""
        from .artifacts.artifact import Artifact
        from .artifacts.reference import find_references

        self.engine.store.job_status(self.id)  # UnknownJob for a job that is not there
        codec = self.engine.codec
        return [
            Artifact(
                ref,
                job_id=self.id,
                kind=v.kind,
                step=v.name,
                within=within,
                store=codec.artifacts,
                loads=codec.loads,
            )
            for v in self.engine.store.artifact_values([self.id])
            for within, ref in find_references(v.value)
        ]

    def artifact(self, step: str) -> Artifact:
        """The artifact of checkpoint ``step`` (a DataFrame, array, file... stored out of
        the row): ``.type .shape .size .uri .head() .load()``, read without loading it.

        ``"input"`` and ``"result"`` name the job's input and result unless a checkpoint
        has that name.  A value holding one artifact somewhere inside (``{"frame": df,
        "n": 3}``) gives that one.  Raises :class:`~nbjobs.ArtifactError` when there is
        no such finished checkpoint, when its value holds no artifact, or several (then
        pick one from :meth:`artifacts`).
        """
        from .errors import ArtifactError

        found = self.artifacts()
        steps = [s.name for s in self.engine.store.history_steps([self.id]) if s.done]
        kind = "step" if step in steps or step not in ("input", "result") else step
        mine = [a for a in found if a.kind == kind and a.step == step]
        if len(mine) == 1:
            return mine[0]
        held = sorted({a.step for a in found if a.kind == "step"})
        hint = f"; the checkpoints holding artifacts are {held}" if held else ""
        where = f"checkpoint {step!r}" if kind == "step" else f"its {kind}"
        if kind == "step" and step not in steps:
            raise ArtifactError(f"job {self.id} has no finished checkpoint {step!r}{hint}")
        if not mine:
            raise ArtifactError(f"job {self.id}, {where}: the value holds no artifact{hint}")
        raise ArtifactError(
            f"job {self.id}, {where}: the value holds {len(mine)} artifacts, at "
            f"{[a.within for a in mine]}; pick one from h.artifacts()"
        )

    @property
    def attempts(self) -> list[dict[str, Any]]:
        """One dict per attempt: worker, start, end, outcome, error, traceback."""
        return self.engine.attempts(self.id)

    @property
    def step_tries(self) -> list[dict[str, Any]]:
        """The tries of steps with ``@nbjobs.step(retries=...)`` that did not work at
        once, oldest first: one dict per try with ``attempt``, ``step``, ``try``,
        ``outcome`` (``failed``, ``timeout``, or ``succeeded`` for the try that then
        worked), ``error``, ``started_at`` and ``finished_at``.  A step that worked at
        its first try has none (its checkpoint says it all)."""
        return self.engine.step_tries(self.id)

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

    def notebook(self, attempt: int | None = None) -> Any:
        """The executed notebook of a notebook job (``app.notebook``), outputs included,
        as an ``nbformat.NotebookNode``: of ``attempt``, by default the latest attempt
        that kept one.  Raises :class:`~nbjobs.ArtifactError` when there is none (not
        a notebook job, not run yet, or the worker died during the attempt)."""
        import nbformat

        from .errors import ArtifactError

        row = self.engine.store.job_notebook(self.id, attempt)
        if row is None:
            which = "any attempt" if attempt is None else f"attempt {attempt}"
            raise ArtifactError(
                f"job {self.id} kept no executed notebook for {which} (not a notebook job, "
                "not run yet, or its worker died during the attempt)"
            )
        value = self.engine.codec.loads(
            row.value, where=f"job {self.id}, the executed notebook of attempt {row.attempt}"
        )
        text = value.decode("utf-8") if isinstance(value, bytes) else value
        return nbformat.reads(text, as_version=4)

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
