"""App: the registry of workflows, submit and run, workers, schedules and the dashboard."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import logging
import os
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .clock import Clock
from .codec import DEFAULT_INLINE_BYTES, Codec, open_artifacts
from .errors import ConfigurationError
from .group import JobGroup
from .handle import JobHandle
from .jobs import FINISHED, Status
from .options import Options, Spec
from .runtime.context import Runtime, Settings
from .runtime.engine import Engine, warn_user
from .runtime.hooks import check_event, hook_name
from .runtime.registry import FlowLimits, check_call_state_parameter, default_workflow_name
from .runtime.scheduler import Scheduler
from .runtime.tracing import TracerProvider, Tracing
from .steps import Cache, as_cache, exception_classes
from .store import Store
from .validation import check_name, check_number, check_rate, check_time
from .workflow import NotebookWorkflow, Workflow

if TYPE_CHECKING:
    import pandas as pd
    from sqlalchemy.engine import Row

    from .views import Dashboard

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///nbjobs.db"

# Apps of this process, so that re-running ``app = App(); app.start()`` in a notebook
# stops the worker of the App object that cell made before (and its old definitions).
_apps: weakref.WeakSet[App] = weakref.WeakSet()


def _setting(name: str) -> property:
    """A read-only App attribute for one of its settings (they are fixed at ``App(...)``:
    the engine read them when it was made)."""
    return property(
        lambda app: getattr(app.runtime.settings, name),
        doc=f"``{name}``, as given to ``App(...)`` (read-only).",
    )


class App:
    """An nbjobs application on one database.

    ``url`` defaults to the ``NBJOBS_URL`` environment variable, else
    ``sqlite:///nbjobs.db``.  Options: ``serializer`` (``"json"`` or ``"pickle"``;
    warning: loading pickle runs code the database holds, so opt into it only for a
    database that only trusted code writes to; a JSON app refuses pickled rows),
    ``heartbeat_seconds`` and ``stale_after_seconds`` (a silent worker's jobs are
    reclaimed after this; at least three heartbeats), ``max_reclaims`` (a job whose
    worker dies more often than this is failed, not looped), ``poll_seconds`` (the
    idle poll when no wake-up arrives), ``retry_backoff_seconds`` and
    ``retry_backoff_max_seconds`` (the pause before a failed job's next attempt: the
    first doubled after each failure, capped, jittered to between half and all of it),
    ``retries`` (the retries of a workflow that gives no ``retries=`` of its own; 0 by
    default), ``sqlite_synchronous`` (``"NORMAL"`` or ``"FULL"``),
    and ``clock`` (a :class:`~nbjobs.clock.FakeClock` in tests).  ``max_payload_bytes``
    bounds one stored value (an input, checkpoint, result or signal payload; 16 MiB by
    default): a bigger one raises :class:`~nbjobs.SerializationError` naming the limit.
    ``retention_seconds`` turns on automatic retention: every worker's monitor purges
    finished job trees older than this, a few batches at a time (see :meth:`purge`).
    ``tracing``: OpenTelemetry spans per submit, attempt and step (see the how-to
    "Trace jobs with OpenTelemetry"): ``None``, the default, traces once a tracer
    provider is configured, ``True`` always (OpenTelemetry must be installed), ``False``
    never; or an OpenTelemetry ``TracerProvider`` to use instead of the global one.
    Database options: ``sqlite_synchronous``, ``sqlite_busy_timeout`` (seconds), and for
    PostgreSQL and MySQL ``pool_size``, ``max_overflow``, ``pool_timeout`` and
    ``pool_recycle``.

    Every number must be finite, and an unknown or misspelled option raises
    :class:`~nbjobs.ConfigurationError` (it is never ignored).  A relative SQLite or
    DuckDB path is resolved once, against the working directory at ``App(...)``; the
    absolute path is what ``repr(app)``, worker banners and the dashboard show, with the
    URL's credentials masked.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        serializer: str = "json",
        heartbeat_seconds: float = 2.0,
        stale_after_seconds: float = 15.0,
        max_reclaims: int = 3,
        poll_seconds: float = 1.0,
        retry_backoff_seconds: float = 1.0,
        retry_backoff_max_seconds: float = 300.0,
        retries: int = 0,
        clock: Clock | None = None,
        max_payload_bytes: int = 16 * 1024 * 1024,
        retention_seconds: float | None = None,
        artifacts: str | os.PathLike[str] | bool | None = None,
        artifacts_options: Mapping[str, Any] | None = None,
        inline_bytes: int = DEFAULT_INLINE_BYTES,
        tracing: bool | TracerProvider | None = None,
        **database_options: Any,
    ) -> None:
        for name, value in (
            ("heartbeat_seconds", heartbeat_seconds),
            ("stale_after_seconds", stale_after_seconds),
            ("poll_seconds", poll_seconds),
            ("retry_backoff_seconds", retry_backoff_seconds),
            ("retry_backoff_max_seconds", retry_backoff_max_seconds),
        ):
            check_number(name, value, positive=True)
        if stale_after_seconds < 3 * heartbeat_seconds:
            raise ConfigurationError(
                f"stale_after_seconds ({stale_after_seconds}) must be at least three "
                f"heartbeats ({3 * heartbeat_seconds}); otherwise live jobs get reaped"
            )
        check_number("max_reclaims", max_reclaims, 0, integer=True, int32=True)
        check_number("retries", retries, 0, integer=True, int32=True)
        check_number("retention_seconds", retention_seconds, positive=True, optional=True)
        Codec.check(serializer, max_payload_bytes, inline_bytes)  # before any connection
        traced = Tracing(tracing)  # before any connection too: a bad value, or no OpenTelemetry
        self.clock = clock or Clock()
        # An explicit "" is a mistake to report, not a request for the default file.
        self.url = url if url is not None else os.environ.get("NBJOBS_URL") or DEFAULT_URL
        self.store = Store(self.url, clock=self.clock, suggest=_APP_OPTIONS, **database_options)
        try:
            self.codec = Codec(
                serializer,
                max_payload_bytes=max_payload_bytes,
                artifacts=open_artifacts(
                    artifacts,
                    artifacts_options,
                    db_url=self.url,
                    fsync=self.store.dialect.durable_commits,
                ),
                inline_bytes=inline_bytes,
            )
        except BaseException:
            self.store.close()
            raise
        settings = Settings(
            heartbeat_seconds=float(heartbeat_seconds),
            stale_after_seconds=float(stale_after_seconds),
            max_reclaims=max_reclaims,
            poll_seconds=float(poll_seconds),
            retry_backoff_seconds=float(retry_backoff_seconds),
            retry_backoff_max_seconds=float(retry_backoff_max_seconds),
            retention_seconds=None if retention_seconds is None else float(retention_seconds),
            retries=retries,
        )
        #: What the engine gets instead of the App (see :mod:`nbjobs.runtime.context`).
        self.runtime = Runtime(self.store, self.codec, self.clock, settings, tracing=traced)
        self._engine = Engine(self.runtime)
        self.runtime.make_handle = functools.partial(JobHandle, self._engine)
        self._schedules = Scheduler(self.runtime)
        self._closed = False
        _apps.add(self)

    heartbeat_seconds = _setting("heartbeat_seconds")
    stale_after_seconds = _setting("stale_after_seconds")
    max_reclaims = _setting("max_reclaims")
    poll_seconds = _setting("poll_seconds")
    retry_backoff_seconds = _setting("retry_backoff_seconds")
    retry_backoff_max_seconds = _setting("retry_backoff_max_seconds")
    retention_seconds = _setting("retention_seconds")
    retries = _setting("retries")

    def __repr__(self) -> str:
        state = "running" if self._engine.working else "stopped"
        workflows = len(self.runtime.registry.names())
        return f"<nbjobs.App {self.store.safe_url} worker={state} workflows={workflows}>"

    # -- workflows ---------------------------------------------------------------------
    def workflow(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        queue: str = "default",
        priority: int = 0,
        retries: int | None = None,
        timeout: float | None = None,
        steps: int | None = None,
        retry_on: Any = Exception,
        give_up_on: Any = (),
        cache: bool | Cache | None = None,
        concurrency: int | None = None,
        rate: str | None = None,
        partition_concurrency: int | None = None,
    ) -> Any:
        """Register a workflow; use as ``@app.workflow`` or ``@app.workflow(name=..., ...)``.

        The name defaults to ``module.qualname`` for a function of an importable module,
        and to the bare ``qualname`` in a notebook or script (``__main__``); a lambda
        needs ``name=``.  Registering the same definition again (re-running a notebook
        cell, reloading a module) replaces it for new claims, and runs already going keep
        the function they started with; a different function under a taken name is a
        :class:`~nbjobs.ConfigurationError`.

        ``retries``: how often a failed run is tried again (``None``: the App's
        ``retries``), after the App's backoff.  ``retry_on`` / ``give_up_on``: exception
        classes (one or a tuple); a failure that is not a ``retry_on`` or is a
        ``give_up_on`` fails the job at once, and so do programming errors
        (``DuplicateCheckpoint``, ``ConfigurationError``) whatever they say.

        ``cache=True`` (or ``nbjobs.Cache(ttl=, version=)``): every step may be reused
        from an earlier job with the same arguments and step code (see
        ``docs/content/how-to/cache.md``).
        Flow control, across every worker on the database: ``concurrency`` caps how many
        of its jobs run at once, ``rate`` ("N/s", "N/minute", "N/hour") how many start
        in any window of that length, ``partition_concurrency`` how many run at once
        per ``options(partition=...)`` value.  The workers that serve the workflow store
        these limits (the last one to start decides); see the how-to on flow control.
        """
        workflow_cache = as_cache(cache)
        defaults = Options.build(
            queue=queue, priority=priority, retries=retries, timeout=timeout, steps=steps
        )
        policy = dict(
            retry_on=exception_classes("retry_on", retry_on),
            give_up_on=exception_classes("give_up_on", give_up_on),
        )
        flow = FlowLimits(
            concurrency=check_number(
                "concurrency", concurrency, 1, integer=True, int32=True, optional=True
            ),
            rate=check_rate("rate", rate),
            partition_concurrency=check_number(
                "partition_concurrency",
                partition_concurrency,
                1,
                integer=True,
                int32=True,
                optional=True,
            ),
        )

        def register(func: Callable[..., Any]) -> Workflow:
            if not callable(func):
                raise ConfigurationError(f"@app.workflow needs a function, got {func!r}")
            wf_name = check_name(
                "workflow name", default_workflow_name(func) if name is None else name
            )
            check_call_state_parameter(wf_name, func)
            wf = Workflow(self._engine, func, wf_name, defaults, **policy)
            wf.cache = workflow_cache
            wf.flow = flow
            if name is None and wf_name != func.__qualname__:
                wf.alias = func.__qualname__
            old = self.runtime.registry.add(wf)
            if old is None or old.fingerprint != wf.fingerprint:
                self._warn_changed_code(wf)
            self._engine.registered(wf)
            return wf

        if fn is not None:
            return register(fn)
        return register

    def notebook(
        self,
        path: str | os.PathLike[str],
        name: str | None = None,
        *,
        queue: str = "default",
        priority: int = 0,
        retries: int = 0,
        timeout: float | None = None,
        cell_timeout: float | None = None,
        result: str = "result",
        kernel: str | None = None,
    ) -> NotebookWorkflow:
        """Register the notebook at ``path`` as a workflow; returns it.

        Each run executes the notebook in a fresh kernel (``kernel``, else the one the
        notebook names, else this Python), cell by cell, with the run's parameters
        (``nb.submit(day="2026-12-01")``) assigned in a cell injected after the cell
        tagged ``parameters``; a name that cell does not assign is a
        :class:`~nbjobs.ConfigurationError` at submit.  The job's result is the value
        of the notebook's variable ``result`` (None when unset); ``cell_timeout``
        bounds each cell, ``timeout`` the whole run.  ``name`` defaults to the file's
        name without ``.ipynb``.  In a cell, ``nbjobs.current()`` is the job's call
        state, so ``cs.checkpoint(...)`` is a durable step.  See the how-to on
        notebook jobs.
        """
        from .runtime.notebook_run import NotebookRunner
        from .runtime.notebook_source import NotebookSource

        for module in ("nbformat", "nbclient"):
            if importlib.util.find_spec(module) is None:
                raise ConfigurationError(
                    f"app.notebook needs {module}: pip install 'nbjobs[notebooks]'"
                )
        if not isinstance(path, (str, os.PathLike)):
            raise ConfigurationError(f"app.notebook needs the notebook's path, got {path!r}")
        check_number("cell_timeout", cell_timeout, 0.001, optional=True)
        check_name("result variable", result)
        if not result.isidentifier():
            raise ConfigurationError(f"result must name a variable, got {result!r}")
        if kernel is not None:
            check_name("kernel", kernel)
        defaults = Options.build(queue=queue, priority=priority, retries=retries, timeout=timeout)
        source = NotebookSource(path)
        if name is None:
            name = os.path.splitext(os.path.basename(source.path))[0]
        wf_name = check_name("workflow name", name)
        runner = NotebookRunner(
            source, result=result, cell_timeout=cell_timeout, kernel_name=kernel
        )
        wf = NotebookWorkflow(self._engine, runner, wf_name, defaults)
        old = self.runtime.registry.add(wf)
        if old is None or old.fingerprint != wf.fingerprint:
            self._warn_changed_code(wf)
        self._engine.registered(wf)
        return wf

    def _warn_changed_code(self, wf: Workflow) -> None:
        """Warn in the cell when unfinished runs of ``wf`` were submitted with other code."""
        count, ids = self.store.unfinished_other_code(wf.name, wf.fingerprint)
        if not count:
            return
        shown = ", ".join(ids) + (f" and {count - len(ids)} more" if count > len(ids) else "")
        warn_user(
            f"workflow {wf.name!r} changed while {count} of its runs are unfinished ({shown}). "
            "Choose for each: let it resume with the new code (do nothing; finished steps "
            "are replayed from their checkpoints), re-run from a step with "
            "app.job(id).retry(from_checkpoint=...) once it has finished, or cancel it "
            "with app.job(id).cancel()."
        )

    def on(
        self, event: str, fn: Callable[[JobHandle], Any] | None = None, *, name: str | None = None
    ) -> Any:
        """Call ``fn(handle)`` in a worker after a job's outcome commits; returns ``fn``.

        ``event`` is ``"succeeded"``, ``"failed"`` (for good: after its retries) or
        ``"cancelled"``.  Use as ``app.on("failed", notify)`` or as a decorator,
        ``@app.on("failed")``.  The hooks run in the worker of this App (``app.start()``
        or ``nbjobs worker``) for every outcome recorded anywhere on the database from
        the moment a worker serving the event starts, at least once per outcome even
        when a worker dies (the hook then runs again elsewhere); a hook's exception is
        logged and never changes the job.  Each hook has a name (``name=``, by default
        its ``module.qualname``; a lambda needs one): a named hook runs once per outcome
        whichever workers have it, and registering a name again (a re-run cell)
        replaces it.  See the how-to on workers.
        """
        checked = check_event(event)
        if name is not None:
            check_name("hook name", name)

        def register(func: Callable[[JobHandle], Any]) -> Callable[[JobHandle], Any]:
            if not callable(func):
                raise ConfigurationError(f"app.on({checked!r}, fn) needs a callable, got {func!r}")
            self.runtime.hooks.add(checked, name or hook_name(func), func)
            return func

        if fn is not None:
            return register(fn)
        return register

    def set_queue(
        self, name: str, *, concurrency: int | None = None, rate: str | None = None
    ) -> None:
        """Set a queue's fleet-wide limits, stored in the database: ``concurrency`` caps
        how many of its jobs run at once on all workers together, ``rate`` ("N/s",
        "N/minute", "N/hour") how many start in any window of that length.  None
        removes a limit; the claims that begin after this call apply the new limits
        (jobs running already finish).  Held-back jobs stay ``queued``.
        """
        check_name("queue", name)
        concurrency = check_number(
            "concurrency", concurrency, 1, integer=True, int32=True, optional=True
        )
        self.store.set_limit("queue", name, concurrency=concurrency, rate=check_rate("rate", rate))
        worker = self._engine.worker
        if worker is not None:
            worker.queues_changed()

    def queue_limits(self) -> dict[str, dict[str, Any]]:
        """The limits stored for each limited queue: ``{name: {"concurrency": ...,
        "rate": ...}}``."""
        return {
            lim.name: {"concurrency": lim.concurrency, "rate": lim.rate}
            for lim in self.store.list_limits()
            if lim.kind == "queue"
        }

    def workflow_names(self) -> list[str]:
        return self.runtime.registry.names()

    def get_workflow(self, name: str) -> Workflow:
        """The workflow registered as ``name``, or (for jobs submitted under the bare
        ``qualname``: from a script's ``__main__``, or by nbjobs before 0.x made default
        names module-qualified) the one workflow whose ``qualname`` that is."""
        workflow = self.runtime.registry.get(name)
        assert isinstance(workflow, Workflow)  # the App registers only Workflows
        return workflow

    # -- jobs --------------------------------------------------------------------------
    def submit_many(self, specs: Iterable[Spec], *, label: str | None = None) -> JobGroup:
        """Queue the jobs of ``specs`` (``wf.spec(...)``, of any workflows) in one
        transaction and return their :class:`~nbjobs.JobGroup`.

        All jobs or none: a bad spec raises, naming its index, before anything is
        written, and a database error rolls the whole group back.  A spec whose
        idempotency key (``wf.options(key=...).spec(...)``) a job holds already is that
        job; submitted again with the same keys, the same group is returned.
        """
        self._check_open()
        return JobGroup(self._engine, self._engine.submit_group(specs, label))

    def group(self, group_id: str) -> JobGroup:
        """The group of an earlier ``wf.map`` or ``submit_many`` (raises ``UnknownJob``)."""
        return JobGroup(self._engine, group_id)

    def groups(self, limit: int | None = 100) -> list[JobGroup]:
        """The newest groups, newest first (at most ``limit``; None: all)."""
        check_number("limit", limit, 1, integer=True, optional=True)
        return [JobGroup(self._engine, r.id, r) for r in self.store.list_groups(limit)]

    def job(self, job_id: str) -> JobHandle:
        """The handle of an existing job (raises ``UnknownJob``)."""
        self.store.job_status(job_id)
        return JobHandle(self._engine, job_id)

    def jobs(
        self,
        status: str | None = None,
        workflow: str | None = None,
        queue: str | None = None,
        limit: int = 100,
    ) -> list[JobHandle]:
        """The newest jobs, optionally filtered: a list that renders as a table in notebooks."""
        from .notebook.display import JobList

        rows = self.list_job_rows(status, workflow, queue, limit)
        return JobList(JobHandle(self._engine, r.id) for r in rows)

    def list_job_rows(
        self,
        status: str | Sequence[str] | None,
        workflow: str | None,
        queue: str | None,
        limit: int | None,
        *,
        since: Any = None,
    ) -> Sequence[Row]:
        """The store's rows of ``jobs()``, its filters checked first (a clear error, never a
        database one); for views that print rows (the CLI) rather than handles.

        ``status`` may be one status or several; ``since`` (a timezone-aware datetime or
        epoch seconds) keeps the jobs created at or after it; ``limit=None`` returns every
        matching job.
        """
        statuses = [status] if isinstance(status, str) else status
        known = {s.value for s in Status}
        for one in statuses or ():
            if one not in known:
                raise ConfigurationError(
                    f"unknown status {one!r}; one of {', '.join(s.value for s in Status)}"
                )
        if workflow is not None:
            check_name("workflow", workflow)
        if queue is not None:
            check_name("queue", queue)
        check_number("limit", limit, 1, integer=True, optional=True)
        since = None if since is None else check_time("since", since)
        return self.store.list_jobs(
            status=None if statuses is None else list(statuses),
            workflow=workflow,
            queue=queue,
            since=since,
            limit=limit,
        )

    def jobs_frame(
        self,
        status: str | None = None,
        workflow: str | None = None,
        queue: str | None = None,
        limit: int = 1000,
    ) -> pd.DataFrame:
        """The newest jobs as a pandas DataFrame (one row per job, times as datetimes)."""
        from .notebook.frames import jobs_frame

        return jobs_frame(self.list_job_rows(status, workflow, queue, limit))

    def history_frame(
        self,
        workflow: str | None = None,
        status: str | None = None,
        since: Any = None,
        limit: int = 1000,
    ) -> pd.DataFrame:
        """Jobs, attempts and step timings of the newest ``limit`` jobs as one DataFrame.

        One row per job, attempt, step and step try (the ``kind`` column: ``job``,
        ``attempt``, ``step``, ``try``), with ``name``, ``status``,
        ``started_at``, ``finished_at``, ``duration_s`` and ``artifact_bytes`` (the size of
        the artifacts a step's value, or a job's input and result, refer to); see
        :mod:`nbjobs.notebook.frames`.
        """
        from .notebook.frames import history_frame

        since = None if since is None else check_time("since", since)
        check_number("limit", limit, 1, integer=True)
        return history_frame(self.store, workflow=workflow, status=status, since=since, limit=limit)

    def artifacts_frame(
        self, workflow: str | None = None, since: Any = None, limit: int = 1000
    ) -> pd.DataFrame:
        """Every artifact the stored inputs, checkpoints and results refer to, newest job
        first, as a DataFrame: ``job_id``, ``workflow``, ``kind`` (``input``, ``step``,
        ``result``), ``step``, ``within`` (where in the value), ``type``, ``shape``,
        ``bytes``, ``sha256``, ``uri`` and ``created``.  Read from the references in the
        rows: no artifact is loaded.  At most ``limit`` rows; ``since`` filters on the
        jobs' creation time.  See :mod:`nbjobs.notebook.frames`.
        """
        from .notebook.frames import artifacts_frame

        if workflow is not None:
            check_name("workflow", workflow)
        since = None if since is None else check_time("since", since)
        check_number("limit", limit, 1, integer=True)
        values = self.store.artifact_values(workflow=workflow, since=since, limit=limit)
        return artifacts_frame(values, limit)

    def purge(
        self,
        older_than: Any,
        status: str | list[str] | None = None,
        *,
        batch_size: int = 500,
        dry_run: bool = False,
    ) -> int:
        """Delete finished jobs (with their checkpoints, attempts, step tries, signals, logs
        and hook runs).

        ``older_than`` is an age (seconds or a ``timedelta``) or a cutoff ``datetime``:
        jobs that finished before it go.  ``status`` narrows it to some finished statuses
        (default all three).  A fan-out tree goes as a whole, once its root is old enough
        and no job of it is unfinished, so a child is never orphaned.  A deleted job
        leaves the groups it was in (``wf.map``, ``submit_many``), and a group left with
        no job is deleted too.  Deletes in transactions of ``batch_size`` trees; returns
        the number of jobs deleted.  ``dry_run=True`` deletes nothing and returns how
        many jobs would go now.
        """
        cutoff, statuses = _purge_cutoff(self.clock.now(), older_than, status)
        check_number("batch_size", batch_size, 1, integer=True)
        if dry_run:
            return self.store.count_purgeable(finished_before=cutoff, statuses=statuses)
        deleted, _ = self.store.purge_jobs(
            finished_before=cutoff, statuses=statuses, batch_size=batch_size
        )
        return deleted

    def clear_cache(self, workflow: str | None = None, step: str | None = None) -> int:
        """Forget cached step results (``cache=True``), so that the next run computes
        them again: all of them, those of ``workflow``, or of its step ``step``.
        Returns how many entries went.  Jobs that reused an entry keep their values;
        artifacts nothing refers to any more go at the next ``sweep_artifacts``."""
        if workflow is not None:
            check_name("workflow", workflow)
        if step is not None:
            check_name("step", step)
        return self.store.clear_step_cache(workflow, step)

    def sweep_artifacts(self, grace_seconds: float = 3600.0) -> dict[str, int]:
        """Delete the artifacts that no stored value refers to any more (after a purge),
        and the leftovers of crashed writers; those written within ``grace_seconds``
        are kept, since their reference may not have committed yet.  Returns counts
        (``deleted``, ``bytes``, ``kept``, ``temporary``).  With retention on, workers
        sweep hourly by themselves; see :mod:`nbjobs.artifacts.sweep`."""
        check_number("grace_seconds", grace_seconds, 0)
        return self._engine.sweep_artifacts(grace_seconds)

    def cancel(self, job_id: str) -> str:
        """Cancel a job; returns its status after the request."""
        return self._engine.cancel(job_id)

    def cancel_jobs(self, job_ids: Sequence[str]) -> list[str]:
        """Cancel many jobs in a few transactions (500 jobs each), not one per job:
        those still unfinished, with their fan-out subtrees.  Unknown or finished ids
        are skipped.  Returns the ids the request reached (the dashboard's bulk cancel)."""
        return self._engine.cancel_jobs(self._job_ids(job_ids))

    def retry_jobs(self, job_ids: Sequence[str]) -> list[str]:
        """Queue many failed or cancelled jobs again, keeping their checkpoints, in a few
        transactions (500 jobs each); jobs in another status are skipped.  Returns the
        ids queued again (the dashboard's bulk retry)."""
        return self._engine.retry_jobs(self._job_ids(job_ids))

    @staticmethod
    def _job_ids(job_ids: Sequence[str]) -> list[str]:
        if isinstance(job_ids, str):
            raise ConfigurationError("give a list of job ids, not one id as a string")
        ids = list(job_ids)
        for job_id in ids:
            if not isinstance(job_id, str) or not job_id:
                raise ConfigurationError(f"a job id is a non-empty string, not {job_id!r}")
        return ids

    def signal(self, job_id: str, name: str, payload: Any = None) -> None:
        """Send a signal to a job (buffered FIFO until ``cs.wait_signal`` consumes it)."""
        self._engine.signal(job_id, name, payload)

    # -- workers -----------------------------------------------------------------------
    def start(self, concurrency: int = 4, queues: list[str] | str | None = None) -> App:
        """Start background worker threads in this process; idempotent.  Returns the app."""
        self._check_open()
        check_number("concurrency", concurrency, 1, integer=True)
        if isinstance(queues, str):
            queues = [q.strip() for q in queues.split(",") if q.strip()]
        if queues is not None:
            queues = [check_name("queue", q) for q in queues]
        if self._engine.working:
            worker = self._engine.worker
            assert worker is not None
            asked = list(queues) if queues else None
            if concurrency != worker.concurrency or (asked and asked != worker.queues):
                warn_user(
                    f"the worker of this App is running already (concurrency "
                    f"{worker.concurrency}, queues {', '.join(worker.queues)}); "
                    f"start(concurrency={concurrency}"
                    + (f", queues={asked}" if asked else "")
                    + ") changes nothing: call app.stop() first"
                )
            return self
        for other in list(_apps):
            same_db = other is not self and other.store.url == self.store.url
            if same_db and other._engine.working:
                log.warning("stopping the worker of an earlier App on the same database")
                other.stop()
        self._engine.start(concurrency, queues)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker: running jobs get ``timeout`` s to finish, then are released."""
        check_number("timeout", timeout, 0)
        self._engine.stop(timeout)

    @contextlib.contextmanager
    def running(self, concurrency: int = 4, queues: list[str] | str | None = None) -> Iterator[App]:
        """``with app.running(): ...`` runs a worker for the block."""
        self.start(concurrency=concurrency, queues=queues)
        try:
            yield self
        finally:
            self.stop()

    def workers(self, alive_within: float | None = None) -> list[dict[str, Any]]:
        """The worker registry: host, pid, queues, concurrency, last heartbeat, jobs held."""
        check_number("alive_within", alive_within, positive=True, optional=True)
        window = alive_within if alive_within is not None else 2 * self.stale_after_seconds
        return self._engine.workers(window)

    def queues(self) -> list[dict[str, Any]]:
        """Every known queue (with active jobs, paused, or served by a live worker): its
        queued jobs, those ready now, running and waiting jobs, and whether it is paused."""
        return self.store.queue_depths()

    def pause_queue(self, queue: str) -> None:
        """Hold a queue: no worker anywhere claims its jobs until ``resume_queue``."""
        self.store.set_queue_paused(check_name("queue", queue), True)

    def resume_queue(self, queue: str) -> None:
        """Let workers claim from a queue held by ``pause_queue`` again, at once.

        Workers everywhere see it at their next claim; this process's own worker is woken
        so that it need not wait for its next poll.
        """
        self.store.set_queue_paused(check_name("queue", queue), False)
        worker = self._engine.worker
        if worker is not None:
            worker.queues_changed()

    def backoff_seconds(self, failures: int) -> float:
        """The delay before the retry after ``failures`` failed attempts.

        Exponential from ``retry_backoff_seconds``, capped at ``retry_backoff_max_seconds``,
        with jitter, so that jobs that failed together do not all retry at the same moment.
        """
        return self.runtime.settings.backoff_seconds(failures)

    # -- schedules ---------------------------------------------------------------------
    def schedule(
        self,
        name: str,
        workflow: Workflow | str,
        *,
        cron: str,
        args: tuple | list = (),
        kwargs: dict[str, Any] | None = None,
        timezone: str = "UTC",
        queue: str | None = None,
        priority: int | None = None,
        catch_up: str = "latest",
    ) -> dict[str, Any]:
        """Create or update a cron schedule stored in the database; returns its row."""
        return self._schedules.define(
            name,
            workflow,
            cron=cron,
            args=args,
            kwargs=kwargs or {},
            timezone=timezone,
            queue=queue,
            priority=priority,
            catch_up=catch_up,
        )

    def unschedule(self, name: str) -> None:
        """Delete a schedule (its past jobs stay)."""
        self._schedules.remove(name)

    def pause_schedule(self, name: str) -> None:
        """Stop a schedule firing until ``resume_schedule``; its ticks meanwhile are skipped.

        The pause is stored in the database, so it holds for every worker; jobs already
        fired run as usual.  Raises ``ConfigurationError`` for an unknown schedule.
        """
        self._schedules.set_paused(name, True)

    def resume_schedule(self, name: str) -> None:
        """Let a paused schedule fire again, from its next tick after now.

        Ticks that fell while it was paused are not caught up, whatever its ``catch_up``
        policy.  Resuming a schedule that is not paused changes nothing.
        """
        self._schedules.set_paused(name, False)

    def run_schedule(self, name: str) -> JobHandle:
        """Fire the schedule ``name`` once, now, whether paused or not; its cron ticks go
        on as before and this run becomes its last run.  Raises ``ConfigurationError`` for
        an unknown schedule."""
        return JobHandle(self._engine, self._schedules.run_now(name))

    def schedules(self) -> list[dict[str, Any]]:
        """Every schedule: name, cron, timezone, next run, last run, last status, paused.

        A list of dicts that renders as a table in notebooks.
        """
        from .notebook.display import ScheduleList

        return ScheduleList(self._schedules.every(), clock=self.clock)

    def schedules_frame(self) -> pd.DataFrame:
        """``schedules()`` as a pandas DataFrame."""
        from .notebook.frames import schedules_frame

        return schedules_frame(self.schedules())

    # -- views -------------------------------------------------------------------------
    def dashboard(self, **params: Any) -> Dashboard:
        """The live Panel dashboard: renders inline in a notebook, or ``.servable()``."""
        from .views import Dashboard

        self._check_open()
        return Dashboard(app=self, **params)

    def close(self) -> None:
        """Stop the worker and close the database connections; closing twice is harmless.

        A closed app refuses every further call (``ConfigurationError``) rather than
        reopen connections behind the caller's back: its SQLite checkpointer and DuckDB
        lock are gone, so its writes would no longer be looked after.
        """
        if self._closed:
            return
        self._closed = True
        self._engine.close(30.0)
        self.store.close()

    def _check_open(self) -> None:
        # Everything else reaches the database, whose transactions check the same.
        if self._closed:
            raise ConfigurationError("the app is closed (app.close() was called); make a new App")

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _purge_cutoff(
    now: float, older_than: Any, status: str | list[str] | tuple[str, ...] | None
) -> tuple[float, list[str]]:
    """(cutoff epoch, statuses) from ``app.purge``'s arguments: an age (seconds or a
    ``timedelta``) or a cutoff ``datetime``, and finished statuses only."""
    finished = list(FINISHED)
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
        return cutoff, finished
    statuses = [status] if isinstance(status, str) else list(status)
    bad = [s for s in statuses if str(s) not in finished]
    if bad or not statuses:
        raise ConfigurationError(
            f"purge deletes finished jobs only: status must be among {', '.join(finished)}, "
            f"got {status!r}"
        )
    return cutoff, [str(s) for s in statuses]


#: The keyword options of ``App(...)`` itself, offered when an unknown one is given.
_APP_OPTIONS = tuple(inspect.signature(App.__init__).parameters)[2:-1]
