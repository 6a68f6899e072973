"""App: the registry of workflows, submit and run, workers, schedules and the dashboard."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from . import dialects
from .clock import Clock, to_datetime
from .codec import Codec
from .errors import ConfigurationError, SerializationError
from .execution import Execution, jittered_backoff
from .handle import JobHandle, ResultTimeout
from .schedules import Schedules
from .schema import Status
from .store import Store
from .store.workers import runner_problem
from .validation import check_name as _check_name
from .validation import check_number, check_time
from .waits import Waits
from .worker import Worker, _LoopThread
from .workflow import Options, Workflow

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///nbjobs.db"
#: How long a submitter trusts what it last read of the live workers (which queues and
#: workflows they serve) before it reads the registry again: the "no worker will run
#: this job" warning costs at most one query per this many seconds.
RUNNERS_TTL_SECONDS = 5.0
#: ``h.result()`` without a timeout says after this long why nothing may run the job.
RESULT_HINT_SECONDS = 5.0

# Apps of this process, so that re-running ``app = App(); app.start()`` in a notebook
# stops the worker of the App object that cell made before (and its old definitions).
_apps: weakref.WeakSet[App] = weakref.WeakSet()


def default_workflow_name(func: Callable[..., Any]) -> str:
    """``module.qualname`` for a function of an importable module; the bare ``qualname``
    in a notebook or a script (``__main__``: a worker importing the script under its
    module name matches its jobs by the bare name, see :meth:`App.get_workflow`)."""
    qualname = getattr(func, "__qualname__", None)
    if not isinstance(qualname, str):
        raise ConfigurationError(f"cannot name the workflow {func!r}: pass name=...")
    if getattr(func, "__name__", None) == "<lambda>":
        raise ConfigurationError(
            "a lambda workflow needs an explicit name (lambdas would all be '<lambda>'): "
            "app.workflow(lambda cs, x: ..., name='square')"
        )
    module = getattr(func, "__module__", None)
    if module in (None, "__main__", "__mp_main__") or module not in sys.modules:
        return qualname
    return f"{module}.{qualname}"


_START_HINT = (
    "Start a worker in this process with app.start(), or run `nbjobs worker module:app` "
    "where the module registers this workflow and its queue."
)


def _warn_user(message: str) -> None:
    """Log ``message`` and show it as a ``UserWarning`` at the caller's line (a cell)."""
    import warnings

    log.warning("%s", message)
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_globals.get("__name__", "").startswith("nbjobs."):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


def _definition(func: Callable[..., Any]) -> tuple[Any, Any]:
    """What makes two functions one definition: a re-run cell or a reloaded module
    defines a new function object with the same module and qualname."""
    return getattr(func, "__module__", None), getattr(func, "__qualname__", None)


def _describe(func: Callable[..., Any]) -> str:
    module, qualname = _definition(func)
    return f"{module}.{qualname}" if module else repr(func)


def _claim_names(registry: dict[str, Workflow]) -> tuple[str, ...]:
    aliases = [wf.alias for wf in registry.values() if wf.alias and wf.alias not in registry]
    unique = [a for a in aliases if aliases.count(a) == 1]
    return (*registry, *unique)


def _check_call_state_parameter(name: str, func: Callable[..., Any]) -> None:
    """Refuse at decoration a function that cannot take the call state first."""
    try:
        parameters = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return  # a builtin or an odd callable: let the run tell
    positional = (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.VAR_POSITIONAL,
    )
    if not parameters or parameters[0].kind not in positional:
        raise ConfigurationError(
            f"workflow {name!r} must take the call state as its first parameter, e.g. "
            f"def {getattr(func, '__name__', 'fn')}(cs, ...): it makes the durable steps "
            "(cs.checkpoint)"
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
    ``retry_backoff_max_seconds``, ``sqlite_synchronous`` (``"NORMAL"`` or ``"FULL"``),
    and ``clock`` (a :class:`~nbjobs.clock.FakeClock` in tests).  ``max_payload_bytes``
    bounds one stored value (an input, checkpoint, result or signal payload; 16 MiB by
    default): a bigger one raises :class:`~nbjobs.SerializationError` naming the limit.
    ``retention_seconds`` turns on automatic retention: every worker's monitor purges
    finished job trees older than this, a few batches at a time (see :meth:`purge`).
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
        clock: Clock | None = None,
        max_payload_bytes: int = 16 * 1024 * 1024,
        retention_seconds: float | None = None,
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
        check_number("retention_seconds", retention_seconds, positive=True, optional=True)
        # A misspelled option must not be ignored (it used to reach the database layer,
        # which read only the names it knew).
        dialects.check_options(database_options, also=_APP_OPTIONS)
        self.codec = Codec(serializer, max_payload_bytes=max_payload_bytes)
        self.retention_seconds = None if retention_seconds is None else float(retention_seconds)
        self._retention_next_at = 0.0
        self.clock = clock or Clock()
        self.heartbeat_seconds = float(heartbeat_seconds)
        self.stale_after_seconds = float(stale_after_seconds)
        self.max_reclaims = max_reclaims
        self.poll_seconds = float(poll_seconds)
        self.retry_backoff_seconds = float(retry_backoff_seconds)
        self.retry_backoff_max_seconds = float(retry_backoff_max_seconds)
        # An explicit "" is a mistake to report, not a request for the default file.
        self.url = url if url is not None else os.environ.get("NBJOBS_URL") or DEFAULT_URL
        self.store = Store(self.url, clock=self.clock, **database_options)
        self._registry: dict[str, Workflow] = {}
        #: The workflow names this App's worker claims: the registered names, and the
        #: bare qualname of a module-qualified one when no other workflow has it.
        self._claim_names: tuple[str, ...] = ()
        self._registry_lock = threading.Lock()
        self._worker: Worker | None = None
        self._finished = threading.Condition()
        self._finished_generation = 0
        self._inline_id = f"{socket.gethostname()}:{os.getpid()}:inline"
        self._inline: dict[str, Execution] = {}
        self._inline_monitor: threading.Thread | None = None
        self._inline_loop: _LoopThread | None = None
        self._waits = Waits(self)
        self._schedules = Schedules(self)
        self._closed = False
        self._runners: dict[str, tuple[set, set]] = {}
        self._runners_at = float("-inf")
        self._warned_unrunnable: set[tuple[str, str]] = set()
        _apps.add(self)

    def __repr__(self) -> str:
        state = "running" if self._worker and self._worker.alive else "stopped"
        return f"<nbjobs.App {self.store.safe_url} worker={state} workflows={len(self._registry)}>"

    # -- workflows ---------------------------------------------------------------------
    def workflow(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        queue: str = "default",
        priority: int = 0,
        retries: int = 0,
        timeout: float | None = None,
        steps: int | None = None,
    ) -> Any:
        """Register a workflow; use as ``@app.workflow`` or ``@app.workflow(name=..., ...)``.

        The name defaults to ``module.qualname`` for a function of an importable module,
        and to the bare ``qualname`` in a notebook or script (``__main__``); a lambda
        needs ``name=``.  Registering the same definition again (re-running a notebook
        cell, reloading a module) replaces it for new claims, and runs already going keep
        the function they started with; a different function under a taken name is a
        :class:`~nbjobs.ConfigurationError`.
        """
        defaults = Options.build(
            queue=queue, priority=priority, retries=retries, timeout=timeout, steps=steps
        )

        def register(func: Callable[..., Any]) -> Workflow:
            if not callable(func):
                raise ConfigurationError(f"@app.workflow needs a function, got {func!r}")
            wf_name = _check_name(
                "workflow name", default_workflow_name(func) if name is None else name
            )
            _check_call_state_parameter(wf_name, func)
            wf = Workflow(self, func, wf_name, defaults)
            if name is None and wf_name != func.__qualname__:
                wf.alias = func.__qualname__
            with self._registry_lock:
                old = self._registry.get(wf_name)
                if old is not None and _definition(old.fn) != _definition(func):
                    raise ConfigurationError(
                        f"workflow name {wf_name!r} is taken by {_describe(old.fn)}; "
                        f"register {_describe(func)} under another name with name=..."
                    )
                self._registry[wf_name] = wf
                self._claim_names = _claim_names(self._registry)
            if old is not None and old.fingerprint != wf.fingerprint:
                log.info("workflow %r redefined; new claims use the new code", wf_name)
            if old is None or old.fingerprint != wf.fingerprint:
                self._warn_changed_code(wf)
            if self._worker is not None and self._worker.alive:
                self._worker.registered(wf)
            return wf

        if fn is not None:
            return register(fn)
        return register

    def _warn_changed_code(self, wf: Workflow) -> None:
        """Warn in the cell when unfinished runs of ``wf`` were submitted with other code."""
        count, ids = self.store.unfinished_other_code(wf.name, wf.fingerprint)
        if not count:
            return
        shown = ", ".join(ids) + (f" and {count - len(ids)} more" if count > len(ids) else "")
        _warn_user(
            f"workflow {wf.name!r} changed while {count} of its runs are unfinished ({shown}). "
            "Choose for each: let it resume with the new code (do nothing; finished steps "
            "are replayed from their checkpoints), re-run from a step with "
            "app.job(id).retry(from_checkpoint=...) once it has finished, or cancel it "
            "with app.job(id).cancel()."
        )

    def workflow_names(self) -> list[str]:
        with self._registry_lock:
            return list(self._registry)

    def get_workflow(self, name: str) -> Workflow:
        """The workflow registered as ``name``, or (for jobs submitted under the bare
        ``qualname``: from a script's ``__main__``, or by nbjobs before 0.x made default
        names module-qualified) the one workflow whose ``qualname`` that is."""
        with self._registry_lock:
            wf = self._registry.get(name)
            if wf is None and name in self._claim_names:
                wf = next(w for w in self._registry.values() if w.alias == name)
        if wf is None:
            raise ConfigurationError(f"no workflow named {name!r} is registered")
        return wf

    # -- submitting --------------------------------------------------------------------
    def _encode_input(self, workflow: Workflow, args: tuple, kwargs: dict) -> str:
        try:
            return self.codec.dumps({"args": list(args), "kwargs": kwargs})
        except SerializationError as exc:
            raise SerializationError(
                f"cannot submit {workflow.name!r}: an argument cannot be stored: {exc}"
            ) from None

    def _job_fields(self, workflow: Workflow, args: tuple, kwargs: dict, options: Options) -> dict:
        opts = workflow.defaults.merged(options)
        run_at = None
        if opts.run_at is not None:
            run_at = check_time("run_at", opts.run_at)
        elif opts.delay:
            run_at = self.clock.now() + opts.delay
        return dict(
            workflow=workflow.name,
            input=self._encode_input(workflow, args, kwargs),
            queue=opts.queue or "default",
            priority=opts.priority or 0,
            run_at=run_at,
            key=opts.key,
            max_retries=opts.retries or 0,
            timeout_seconds=opts.timeout,
            steps_expected=opts.steps,
            code_fingerprint=workflow.fingerprint,
        )

    def _submit(self, workflow: Workflow, args: tuple, kwargs: dict, options: Options) -> JobHandle:
        if self._worker is None:  # a worker's monitor keeps the clock measured
            self.store.sync_clock_if_stale()
        fields = self._job_fields(workflow, args, kwargs, options)
        job_id, _created = self.store.enqueue_job(**fields)
        if self._worker is not None:
            self._worker.submitted(fields["queue"])
        self._warn_if_unrunnable(job_id, workflow.name, fields["queue"])
        return JobHandle(self, job_id)

    def _runner_problem(self, workflow: str, queue: str, *, fresh: bool = False) -> str | None:
        """Why no live worker will run a job of ``workflow`` in ``queue``; None if one will.

        This process's own worker answers without a query; otherwise the registry is
        read at most every ``RUNNERS_TTL_SECONDS`` (``fresh`` reads it now).
        """
        worker = self._worker
        local = worker is not None and worker.alive and queue in worker.queues
        if local and workflow in self._claim_names:
            return None
        now = time.monotonic()
        if fresh or now - self._runners_at >= RUNNERS_TTL_SECONDS:
            self._runners = self.store.live_worker_capabilities(
                alive_within=2 * self.stale_after_seconds
            )
            self._runners_at = now
        return runner_problem(workflow, queue, self._runners)

    def _warn_if_unrunnable(self, job_id: str, workflow: str, queue: str) -> None:
        """Warn (once per workflow and queue) when no live worker will run the job."""
        if (workflow, queue) in self._warned_unrunnable:
            return
        try:
            problem = self._runner_problem(workflow, queue)
        except Exception:
            log.debug("could not read the worker registry", exc_info=True)
            return
        if problem is None:
            return
        self._warned_unrunnable.add((workflow, queue))
        _warn_user(
            f"job {job_id} of workflow {workflow!r} waits in queue {queue!r}: {problem}. "
            f"{_START_HINT}"
        )

    def _wake_workers(self) -> None:
        if self._worker is not None:
            self._worker.wake()

    def _run_inline(self, workflow: Workflow, args: tuple, kwargs: dict, options: Options) -> Any:
        """``wf.run``: a durable job executed in the calling thread, retries included."""
        claim, job_id = self.store.enqueue_running(
            worker_id=self._inline_id,
            lease_seconds=self.stale_after_seconds,
            **self._job_fields(workflow, args, kwargs, options),
        )
        handle = JobHandle(self, job_id)
        while True:
            if claim is not None:
                self._run_execution_here(Execution(self, claim, workflow))
            row = self.store.get_job(job_id)
            if row.status != Status.QUEUED.value or row.workflow != workflow.name:
                break
            # A retry with backoff, or the queued job an idempotency key named: run it
            # here when it is due, unless a worker takes it first.
            self.clock.wait(threading.Event(), max(0.0, (row.run_at or 0) - self.clock.now()))
            claim = self.store.claim_job(
                job_id, worker_id=self._inline_id, lease_seconds=self.stale_after_seconds
            )
        return handle.result()

    def _run_execution_here(self, execution: Execution) -> None:
        self._inline[execution.job.id] = execution
        self._ensure_inline_monitor()
        try:
            if execution.workflow.is_async:
                # Never the caller's loop: a notebook's loop is already running.
                if self._inline_loop is None:
                    self._inline_loop = _LoopThread("nbjobs-inline-loop")
                import asyncio

                asyncio.run_coroutine_threadsafe(
                    execution.run_async(), self._inline_loop.loop
                ).result()
            else:
                execution.run_sync()
        finally:
            self._inline.pop(execution.job.id, None)
            self._job_finished()

    def _ensure_inline_monitor(self) -> None:
        if self._inline_monitor is not None and self._inline_monitor.is_alive():
            return

        def beat() -> None:
            stop = threading.Event()
            while self._inline:
                held = {j: x.token for j, x in list(self._inline.items()) if not x.lost}
                try:
                    now = self.clock.now()
                    for x in list(self._inline.values()):
                        if x.deadline is not None and now >= x.deadline:
                            x.expire()
                    lost, cancel = self.store.heartbeat(
                        worker_id=self._inline_id, held=held, lease_seconds=self.stale_after_seconds
                    )
                    for job_id in lost:
                        if job_id in self._inline:
                            self._inline[job_id].mark_lost()
                    for job_id in cancel:
                        if job_id in self._inline:
                            self._inline[job_id].request_cancel()
                except Exception:
                    log.exception("inline heartbeat failed")
                self.clock.wait(stop, min(self.heartbeat_seconds, 0.5))

        self._inline_monitor = threading.Thread(target=beat, name="nbjobs-inline-beat", daemon=True)
        self._inline_monitor.start()

    # -- waiting for results -----------------------------------------------------------
    def _job_finished(self) -> None:
        with self._finished:
            self._finished_generation += 1
            self._finished.notify_all()

    def _wait_for(self, handle: JobHandle, timeout: float | None) -> Any:
        check_number("timeout", timeout, 0, optional=True)
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        hinted = timeout is not None
        pause = 0.002
        while True:
            generation = self._finished_generation
            done, value = handle._outcome()
            if done:
                return value
            wait = pause
            now = time.monotonic()
            if deadline is not None:
                remaining = deadline - now
                if remaining <= 0:
                    raise ResultTimeout(self._timeout_message(handle, timeout))
                wait = min(wait, remaining)
            elif not hinted and now - started >= RESULT_HINT_SECONDS:
                hinted = True
                self._hint_waiting(handle)
            with self._finished:
                if self._finished_generation == generation:
                    self._finished.wait(wait)
            pause = min(pause * 1.5, 0.1)

    def _timeout_message(self, handle: JobHandle, timeout: float | None) -> str:
        """``ResultTimeout``'s text: whether any live worker will run the job, and what to do."""
        message = f"job {handle.id} did not finish within {timeout} s"
        try:
            row = self.store.get_job(handle.id)
            problem = self._runner_problem(row.workflow, row.queue, fresh=True)
        except Exception:
            return message
        if problem is not None:
            return f"{message}: it is {row.status} and {problem}. {_START_HINT}"
        return (
            f"{message}: it is {row.status}; a live worker serves workflow {row.workflow!r} "
            f"on queue {row.queue!r}"
        )

    def _hint_waiting(self, handle: JobHandle) -> None:
        """``h.result()`` has waited a while: say so when no live worker will run the job."""
        try:
            row = self.store.get_job(handle.id)
            if row.status != Status.QUEUED.value:
                return
            problem = self._runner_problem(row.workflow, row.queue, fresh=True)
        except Exception:
            return
        if problem is not None:
            log.warning(
                "still waiting for job %s (%s, queue %r): %s. %s",
                handle.id,
                row.workflow,
                row.queue,
                problem,
                _START_HINT,
            )

    # -- jobs --------------------------------------------------------------------------
    def job(self, job_id: str) -> JobHandle:
        """The handle of an existing job (raises ``UnknownJob``)."""
        self.store.job_status(job_id)
        return JobHandle(self, job_id)

    def jobs(
        self,
        status: str | None = None,
        workflow: str | None = None,
        queue: str | None = None,
        limit: int = 100,
    ) -> list[JobHandle]:
        """The newest jobs, optionally filtered: a list that renders as a table in notebooks."""
        from .notebook.display import JobList

        rows = self._list_jobs(status, workflow, queue, limit)
        return JobList(JobHandle(self, r.id) for r in rows)

    def _list_jobs(
        self, status: str | None, workflow: str | None, queue: str | None, limit: int
    ) -> list:
        """Validated filters (a clear error, never a database one), then the store's list."""
        if status is not None and status not in {s.value for s in Status}:
            raise ConfigurationError(
                f"unknown status {status!r}; one of {', '.join(s.value for s in Status)}"
            )
        if workflow is not None:
            _check_name("workflow", workflow)
        if queue is not None:
            _check_name("queue", queue)
        check_number("limit", limit, 1, integer=True)
        return self.store.list_jobs(status=status, workflow=workflow, queue=queue, limit=limit)

    def jobs_frame(
        self,
        status: str | None = None,
        workflow: str | None = None,
        queue: str | None = None,
        limit: int = 1000,
    ):
        """The newest jobs as a pandas DataFrame (one row per job, times as datetimes)."""
        from .notebook.frames import jobs_frame

        return jobs_frame(self._list_jobs(status, workflow, queue, limit))

    def history_frame(
        self,
        workflow: str | None = None,
        status: str | None = None,
        since: Any = None,
        limit: int = 1000,
    ):
        """Jobs, attempts and step timings of the newest ``limit`` jobs as one DataFrame.

        One row per job, attempt and step (the ``kind`` column), with ``name``, ``status``,
        ``started_at``, ``finished_at`` and ``duration_s``; see :mod:`nbjobs.notebook.frames`.
        """
        from .notebook.frames import history_frame

        return history_frame(self.store, workflow=workflow, status=status, since=since, limit=limit)

    def purge(
        self,
        older_than: Any,
        status: str | list[str] | None = None,
        *,
        batch_size: int = 500,
    ) -> int:
        """Delete finished jobs (with their checkpoints, attempts, signals and logs).

        ``older_than`` is an age (seconds or a ``timedelta``) or a cutoff ``datetime``:
        jobs that finished before it go.  ``status`` narrows it to some finished statuses
        (default all three).  A fan-out tree goes as a whole, once its root is old enough
        and no job of it is unfinished, so a child is never orphaned.  Deletes in
        transactions of ``batch_size`` trees; returns the number of jobs deleted.
        """
        from .retention import purge_arguments

        cutoff, statuses = purge_arguments(self.clock.now(), older_than, status)
        check_number("batch_size", batch_size, 1, integer=True)
        deleted, _ = self.store.purge_jobs(
            finished_before=cutoff, statuses=statuses, batch_size=batch_size
        )
        return deleted

    def cancel(self, job_id: str) -> str:
        """Cancel a job; returns its status after the request."""
        status = self.store.cancel_job(job_id)
        for execution in self._local_executions():
            if execution.job.id == job_id:
                execution.request_cancel()
        self._wake_workers()
        return status

    def _local_executions(self) -> list[Execution]:
        running = list(self._inline.values())
        if self._worker is not None:
            running += list(self._worker.running.values())
        return running

    def signal(self, job_id: str, name: str, payload: Any = None) -> None:
        """Send a signal to a job (buffered FIFO until ``cs.wait_signal`` consumes it)."""
        self._waits.send_signal(job_id, name, payload)
        self._wake_workers()

    # -- workers -----------------------------------------------------------------------
    def start(self, concurrency: int = 4, queues: list[str] | str | None = None) -> App:
        """Start background worker threads in this process; idempotent.  Returns the app."""
        self._check_open()
        check_number("concurrency", concurrency, 1, integer=True)
        if isinstance(queues, str):
            queues = [q.strip() for q in queues.split(",") if q.strip()]
        if queues is not None:
            queues = [_check_name("queue", q) for q in queues]
        if self._worker is not None and self._worker.alive:
            worker = self._worker
            asked = list(queues) if queues else None
            if concurrency != worker.concurrency or (asked and asked != worker.queues):
                _warn_user(
                    f"the worker of this App is running already (concurrency "
                    f"{worker.concurrency}, queues {', '.join(worker.queues)}); "
                    f"start(concurrency={concurrency}"
                    + (f", queues={asked}" if asked else "")
                    + ") changes nothing: call app.stop() first"
                )
            return self
        for other in list(_apps):
            same_db = other is not self and other.store.url == self.store.url
            if same_db and other._worker is not None and other._worker.alive:
                log.warning("stopping the worker of an earlier App on the same database")
                other.stop()
        self._worker = Worker(self, concurrency=concurrency, queues=queues)
        self._worker.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker: running jobs get ``timeout`` s to finish, then are released."""
        check_number("timeout", timeout, 0)
        if self._worker is not None:
            worker, self._worker = self._worker, None
            worker.stop(timeout)

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
        out = []
        for r in self.store.list_workers(alive_within=window):
            row = r._asdict()
            row["queues"] = row["queues"].split(",") if row["queues"] else []
            for name in ("started_at", "heartbeat_at", "stopped_at"):
                row[name] = to_datetime(row[name])
            row.pop("pid_start", None)
            out.append(row)
        return out

    def pause_queue(self, queue: str) -> None:
        """Hold a queue: no worker anywhere claims its jobs until ``resume_queue``."""
        self.store.set_queue_paused(_check_name("queue", queue), True)

    def resume_queue(self, queue: str) -> None:
        """Let workers claim from a queue held by ``pause_queue`` again, at once.

        Workers everywhere see it at their next claim; this process's own worker is woken
        so that it need not wait for its next poll.
        """
        self.store.set_queue_paused(_check_name("queue", queue), False)
        if self._worker is not None:
            self._worker.queues_changed()

    def backoff_seconds(self, failures: int) -> float:
        """The delay before the retry after ``failures`` failed attempts.

        Exponential from ``retry_backoff_seconds``, capped at ``retry_backoff_max_seconds``,
        with jitter, so that jobs that failed together do not all retry at the same moment.
        """
        return jittered_backoff(
            failures, self.retry_backoff_seconds, self.retry_backoff_max_seconds
        )

    def _on_monitor_tick(self, worker: Worker) -> None:
        """Called by the worker's monitor thread about four times a second."""
        self._schedules.tick(worker)
        if self.retention_seconds is not None:
            from .retention import retention_tick

            retention_tick(self)

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

    def schedules(self) -> list[dict[str, Any]]:
        """Every schedule: name, cron, timezone, next run, last run, last status, paused.

        A list of dicts that renders as a table in notebooks.
        """
        from .notebook.display import ScheduleList

        return ScheduleList(self._schedules.list(), clock=self.clock)

    def schedules_frame(self):
        """``schedules()`` as a pandas DataFrame."""
        from .notebook.frames import schedules_frame

        return schedules_frame(self.schedules())

    # -- views -------------------------------------------------------------------------
    def dashboard(self, **params: Any):
        """The live Panel dashboard: renders inline in a notebook, or ``.servable()``."""
        from .dashboard import Dashboard

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
        self.stop()
        self.store.close()

    def _check_open(self) -> None:
        # Everything else reaches the database, whose transactions check the same.
        if self._closed:
            raise ConfigurationError("the app is closed (app.close() was called); make a new App")

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: The keyword options of ``App(...)`` itself, offered when an unknown one is given.
_APP_OPTIONS = tuple(inspect.signature(App.__init__).parameters)[2:-1]
