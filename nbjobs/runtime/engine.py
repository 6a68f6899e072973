"""The engine: submit, run here, wait, cancel, signal, and this process's worker.

The :class:`~nbjobs.App` is the facade users call; it checks their arguments and hands
every operation down to the :class:`Engine`, which works on the runtime context only.
Job handles and workflows hold the engine, not the App, so a submit goes straight down:
``Workflow.submit`` -> ``Engine.submit`` -> the store -> this process's worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

from ..clock import to_datetime
from ..errors import (
    TIMEOUT_ERROR_PREFIX,
    WORKER_LOST_PREFIX,
    ConfigurationError,
    JobCancelled,
    JobFailed,
    JobTimeout,
    ResultTimeout,
    SerializationError,
    WorkerLost,
)
from ..jobs import Status
from ..options import Options, Spec
from ..store.workers import runner_problem
from ..validation import check_name, check_number
from .context import Runtime
from .execution import Execution
from .inline import InlineRunner
from .registry import Definition
from .scheduler import sweep_artifacts
from .worker import Worker

log = logging.getLogger(__name__)

#: How long a submitter trusts what it last read of the live workers (which queues and
#: workflows they serve) before it reads the registry again: the "no worker will run
#: this job" warning costs at most one query per this many seconds.
RUNNERS_TTL_SECONDS = 5.0
#: ``h.result()`` without a timeout says after this long why nothing may run the job.
RESULT_HINT_SECONDS = 5.0

START_HINT = (
    "Start a worker in this process with app.start(), or run `nbjobs worker module:app` "
    "where the module registers this workflow and its queue."
)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused meanwhile (unless it was off already).

    A group's rows are hundreds of thousands of dicts and tuples, none in a cycle, and
    their allocation alone would run the collector once per 700 of them: 6% of the time
    of a 100,000-job ``submit_many``.  Cycles made meanwhile, by any thread, are
    collected once it is back on.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def warn_user(message: str) -> None:
    """Log ``message`` and show it as a ``UserWarning`` at the caller's line (a cell)."""
    log.warning("%s", message)
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_globals.get("__name__", "").startswith("nbjobs."):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    warnings.warn(message, UserWarning, stacklevel=level)


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


class Engine:
    """The operations on jobs, over one runtime context, and this process's worker."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.codec = runtime.codec
        self.registry = runtime.registry
        self.worker: Worker | None = None
        self.inline = InlineRunner(runtime)
        self._runners: dict[str, tuple[set, set]] = {}
        self._runners_at = float("-inf")
        self._warned_unrunnable: set[tuple[str, str]] = set()

    # -- the worker ----------------------------------------------------------------------
    @property
    def working(self) -> bool:
        """Whether this process's worker runs."""
        return self.worker is not None and self.worker.alive

    def start(self, concurrency: int, queues: list[str] | None) -> Worker:
        worker = Worker(self.runtime, concurrency=concurrency, queues=queues)
        worker.start()  # may refuse (several hosts on one private artifact folder)
        self.worker = worker
        self._report_unknown_jobs(worker)
        return worker

    def _report_unknown_jobs(self, worker: Worker) -> None:
        """Say once, at start, which queued jobs of this worker's queues it cannot run."""
        try:
            counts = self.store.queued_workflow_counts(worker.queues)
        except Exception:
            log.debug("could not count queued jobs by workflow", exc_info=True)
            return
        known = set(self.runtime.registry.claim_names)
        unknown = {name: n for name, n in counts.items() if name not in known}
        if unknown:
            log.warning(
                "%d queued jobs of workflows this worker does not know: %s (they wait for a "
                "worker that registers them)",
                sum(unknown.values()),
                ", ".join(f"{name} ({n})" for name, n in sorted(unknown.items())),
            )

    def stop(self, timeout: float) -> None:
        if self.worker is not None:
            worker, self.worker = self.worker, None
            worker.stop(timeout)

    def close(self, timeout: float) -> None:
        """Stop the worker and the inline runner's loop."""
        self.stop(timeout)
        self.inline.close()

    def registered(self, definition: Definition) -> None:
        """A workflow was registered: the running worker serves it from now on, and
        the store's limits hold jobs stored under its alias (see ``Registry.aliases``)."""
        self.store.workflow_aliases = self.runtime.registry.aliases
        if self.working:
            assert self.worker is not None
            self.worker.registered(definition)

    def local_executions(self) -> list[Execution]:
        """The runs going on in this process (its worker's and ``wf.run``'s)."""
        running = list(self.inline.running.values())
        if self.worker is not None:
            running += list(self.worker.running.values())
        return running

    # -- submitting and running ------------------------------------------------------------
    def submit(self, definition: Definition, args: tuple, kwargs: dict, options: Options) -> str:
        """Queue a job of ``definition``; returns its id."""
        if self.worker is None:  # a worker's monitor keeps the clock measured
            self.store.sync_clock_if_stale()
        fields = self.runtime.job_fields(definition, args, kwargs, options)
        with self.runtime.tracing.submitting(definition.name, fields["queue"]) as traced:
            if traced is not None:
                fields["trace_context"] = traced.carrier
            job_id, _created = self.store.enqueue_job(**fields)
            if traced is not None:
                traced.submitted(job_id)
        if self.worker is not None:
            self.worker.submitted(fields["queue"])
        self._warn_if_unrunnable(job_id, definition.name, fields["queue"])
        return job_id

    def submit_group(self, specs: Iterable[Spec], label: str | None, noun: str = "spec") -> str:
        """Queue every spec's job in one transaction; returns the group's id.

        Each spec becomes a job row first, so that a bad one (not a spec, an unknown
        workflow, a bad option, an argument that cannot be stored) raises, naming its
        index, before anything is written.
        """
        with _collector_paused():
            return self._submit_group(specs, label, noun)

    def _submit_group(self, specs: Iterable[Spec], label: str | None, noun: str) -> str:
        if label is not None:
            check_name("group label", label)
        if self.worker is None:
            self.store.sync_clock_if_stale()
        rows = []
        # Specs of one workflow with the same options differ only by their input: the
        # first one's row is the template of the others (a map's items all share one).
        templates: dict[tuple[str, Options], tuple[Definition, dict[str, Any]]] = {}
        encode = self.runtime.encode_input
        last: tuple[Definition, dict[str, Any]] | None = None
        last_workflow, last_options = None, None
        for index, spec in enumerate(specs):
            try:
                if not isinstance(spec, Spec):
                    raise ConfigurationError(f"not a spec (make one with wf.spec(...)): {spec!r}")
                # The specs of a list comprehension share their Options: no hash then.
                if spec.options is last_options and spec.workflow == last_workflow:
                    known = last
                else:
                    known = templates.get((spec.workflow, spec.options))
                if known is None:
                    definition = self.registry.get(spec.workflow)
                    fields = self.runtime.job_fields(
                        definition, spec.args, spec.kwargs, spec.options
                    )
                    templates[spec.workflow, spec.options] = definition, fields
                    known = definition, fields
                else:
                    definition, template = known
                    definition.check_arguments(spec.args, spec.kwargs)
                    fields = dict(template)
                    fields["input"] = encode(template["workflow"], spec.args, spec.kwargs)
                last, last_workflow, last_options = known, spec.workflow, spec.options
                rows.append(fields)
            except (ConfigurationError, SerializationError) as exc:
                raise type(exc)(f"{noun} {index}: {exc}; nothing was submitted") from None
            except Exception as exc:
                raise ConfigurationError(
                    f"{noun} {index}: {type(exc).__name__}: {exc}; nothing was submitted"
                ) from exc
        first = rows[0] if rows else {"workflow": "", "queue": ""}
        tracing = self.runtime.tracing
        with tracing.submitting(first["workflow"], first["queue"], len(rows)) as traced:
            if traced is not None:
                for fields in rows:
                    fields["trace_context"] = traced.carrier
            group_id, ids, inserted = self.store.enqueue_group(rows, label=label)
        if inserted:
            firsts: dict[tuple[str, str], str] = {}
            for fields, job_id in zip(rows, ids, strict=True):
                firsts.setdefault((fields["workflow"], fields["queue"]), job_id)
            for (workflow, queue), job_id in firsts.items():
                if self.worker is not None:
                    self.worker.submitted(queue)
                self._warn_if_unrunnable(job_id, workflow, queue)
        return group_id

    def run(self, definition: Definition, args: tuple, kwargs: dict, options: Options) -> Any:
        """``wf.run``: run a job here, durably, and return its result."""
        return self.wait(self.inline.run(definition, args, kwargs, options), None)

    # -- acting on jobs --------------------------------------------------------------------
    def cancel(self, job_id: str) -> str:
        """Cancel a job; returns its status after the request."""
        status = self.store.cancel_job(job_id)
        for execution in self.local_executions():
            if execution.job.id == job_id:
                execution.request_cancel()
        self.runtime.wake()
        return status

    def cancel_group(self, group_id: str) -> int:
        """Cancel a group's unfinished jobs; returns how many the request reached."""
        ids = set(self.store.cancel_group(group_id))
        for execution in self.local_executions():
            if execution.job.id in ids:
                execution.request_cancel()
        self.runtime.wake()
        return len(ids)

    def retry_group(self, group_id: str, statuses: list[str]) -> int:
        """Queue a group's jobs of ``statuses`` again; returns how many."""
        ids = self.store.retry_group(group_id, statuses)
        self.runtime.wake()
        return len(ids)

    def cancel_jobs(self, job_ids: list[str]) -> list[str]:
        """Cancel many jobs at once (a chunk per transaction); returns those reached."""
        ids = self.store.cancel_jobs(job_ids)
        reached = set(ids)
        for execution in self.local_executions():
            if execution.job.id in reached:
                execution.request_cancel()
        self.runtime.wake()
        return ids

    def retry_jobs(self, job_ids: list[str]) -> list[str]:
        """Queue many failed or cancelled jobs again; returns those queued."""
        ids = self.store.retry_jobs(job_ids)
        self.runtime.wake()
        return ids

    def retry(self, job_id: str, from_checkpoint: str | None) -> None:
        self.store.retry_job(job_id, from_checkpoint=from_checkpoint)
        self.runtime.wake()

    def signal(self, job_id: str, name: str, payload: Any) -> None:
        """Send a signal (buffered FIFO until ``cs.wait_signal`` consumes it)."""
        check_name("signal name", name)
        try:
            text = self.codec.dumps(payload)
        except SerializationError as exc:
            raise SerializationError(
                f"signal {name!r}: the payload cannot be stored: {exc}"
            ) from None
        self.store.send_signal(job_id, name, text)
        self.runtime.wake()

    # -- waiting for results ---------------------------------------------------------------
    def job_info(self, job_id: str) -> dict[str, Any]:
        """The job's row (without input and result) for people: see :func:`readable`."""
        return readable(self.store.get_job(job_id), _JOB_TIMES)

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        """One readable dict per attempt of the job, oldest first."""
        return [readable(r, _ATTEMPT_TIMES) for r in self.store.job_attempts(job_id)]

    def step_tries(self, job_id: str) -> list[dict[str, Any]]:
        """The recorded tries of the job's steps (see ``JobHandle.step_tries``)."""
        out = []
        for r in self.store.list_step_tries([job_id]):
            row = readable(r, _ATTEMPT_TIMES)
            row.pop("job_id", None)
            row["try"] = row.pop("try_number")
            out.append(row)
        return out

    def checkpoint_info(self, job_id: str) -> list[dict[str, Any]]:
        """Readable checkpoint previews of the job (see ``JobHandle.checkpoint_info``)."""
        out = []
        for r in self.store.checkpoint_previews(job_id):
            row = readable(r, _ATTEMPT_TIMES)
            row.pop("job_id", None)
            out.append(row)
        return out

    def workers(self, alive_within: float) -> list[dict[str, Any]]:
        """The readable worker registry (``queues`` as a list)."""
        out = []
        for r in self.store.list_workers(alive_within=alive_within):
            row = readable(r, _WORKER_TIMES)
            row["queues"] = row["queues"].split(",") if row["queues"] else []
            row.pop("pid_start", None)
            out.append(row)
        return out

    def sweep_artifacts(self, grace_seconds: float) -> dict[str, int]:
        """One sweep of the app's artifact store (nothing to do without one)."""
        return sweep_artifacts(self.runtime, grace_seconds)

    def outcome(self, job_id: str) -> tuple[bool, Any]:
        """(finished, result); a failed or cancelled job raises what ``h.result`` raises."""
        row = self.store.job_outcome(job_id)
        if row is None:
            return False, None
        if row.status == Status.SUCCEEDED.value:
            return True, self.codec.loads(row.result, where=f"job {job_id}, its result")
        if row.status == Status.CANCELLED.value:
            raise JobCancelled(job_id)
        raise _failure_class(row.error)(job_id, row.error, row.traceback)

    def wait(self, job_id: str, timeout: float | None) -> Any:
        """Wait for a job's outcome: woken at once by a job finishing in this process,
        else polling (the job may run anywhere); a hint after ``RESULT_HINT_SECONDS``
        when no live worker will run it."""
        check_number("timeout", timeout, 0, optional=True)
        finished = self.runtime.finished
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        hinted = timeout is not None
        pause = 0.002
        while True:
            generation = finished.generation
            done, value = self.outcome(job_id)
            if done:
                return value
            wait = pause
            now = time.monotonic()
            if deadline is not None:
                remaining = deadline - now
                if remaining <= 0:
                    raise ResultTimeout(self.timeout_message(job_id, timeout))
                wait = min(wait, remaining)
            elif not hinted and now - started >= RESULT_HINT_SECONDS:
                hinted = True
                self._hint_waiting(job_id)
            finished.wait(generation, wait)
            pause = min(pause * 1.5, 0.1)

    async def wait_async(self, job_id: str, timeout: float | None) -> Any:
        """``wait`` for async code: polls without blocking the event loop."""
        check_number("timeout", timeout, 0, optional=True)
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = None if timeout is None else started + timeout
        hinted = timeout is not None
        pause = 0.005
        while True:
            done, value = await asyncio.to_thread(self.outcome, job_id)
            if done:
                return value
            now = loop.time()
            if deadline is not None and now >= deadline:
                message = await asyncio.to_thread(self.timeout_message, job_id, timeout)
                raise ResultTimeout(message)
            if not hinted and now - started >= RESULT_HINT_SECONDS:
                hinted = True
                await asyncio.to_thread(self._hint_waiting, job_id)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.2)

    def timeout_message(self, job_id: str, timeout: float | None) -> str:
        """``ResultTimeout``'s text: whether any live worker will run the job, and what to do."""
        message = f"job {job_id} did not finish within {timeout} s"
        try:
            row = self.store.get_job(job_id)
            problem = self.runner_problem(row.workflow, row.queue, fresh=True)
        except Exception:
            return message
        if problem is not None:
            return f"{message}: it is {row.status} and {problem}. {START_HINT}"
        return (
            f"{message}: it is {row.status}; a live worker serves workflow {row.workflow!r} "
            f"on queue {row.queue!r}"
        )

    def _hint_waiting(self, job_id: str) -> None:
        """``h.result()`` has waited a while: say so when no live worker will run the job."""
        try:
            row = self.store.get_job(job_id)
            if row.status != Status.QUEUED.value:
                return
            problem = self.runner_problem(row.workflow, row.queue, fresh=True)
        except Exception:
            return
        if problem is not None:
            log.warning(
                "still waiting for job %s (%s, queue %r): %s. %s",
                job_id,
                row.workflow,
                row.queue,
                problem,
                START_HINT,
            )

    # -- who will run a job ----------------------------------------------------------------
    def runner_problem(self, workflow: str, queue: str, *, fresh: bool = False) -> str | None:
        """Why no live worker will run a job of ``workflow`` in ``queue``; None if one will.

        This process's own worker answers without a query; otherwise the registry is
        read at most every ``RUNNERS_TTL_SECONDS`` (``fresh`` reads it now).
        """
        worker = self.worker
        local = worker is not None and worker.alive and queue in worker.queues
        if local and workflow in self.runtime.registry.claim_names:
            return None
        now = time.monotonic()
        if fresh or now - self._runners_at >= RUNNERS_TTL_SECONDS:
            self._runners = self.store.live_worker_capabilities(
                alive_within=2 * self.runtime.settings.stale_after_seconds
            )
            self._runners_at = now
        return runner_problem(workflow, queue, self._runners)

    def _warn_if_unrunnable(self, job_id: str, workflow: str, queue: str) -> None:
        """Warn (once per workflow and queue) when no live worker will run the job."""
        if (workflow, queue) in self._warned_unrunnable:
            return
        try:
            problem = self.runner_problem(workflow, queue)
        except Exception:
            log.debug("could not read the worker registry", exc_info=True)
            return
        if problem is None:
            return
        self._warned_unrunnable.add((workflow, queue))
        warn_user(
            f"job {job_id} of workflow {workflow!r} waits in queue {queue!r}: {problem}. "
            f"{START_HINT}"
        )


_JOB_TIMES = ("run_at", "created_at", "started_at", "finished_at", "updated_at", "tick_at")
_ATTEMPT_TIMES = ("started_at", "finished_at")
_WORKER_TIMES = ("started_at", "heartbeat_at", "stopped_at")


def readable(row: Any, times: tuple[str, ...]) -> dict[str, Any]:
    """A store row as a dict for people and scripts: ``times`` as datetimes, and no
    lease token (a fence for the worker that holds the job, never shown)."""
    out = row._asdict()
    for name in times:
        out[name] = to_datetime(out[name])
    out.pop("lease_token", None)
    return out
