"""``wf.run()``: a durable job run in the calling thread, under the worker's heartbeat.

The job is enqueued already claimed by this process's inline holder, run here (an
``async def`` workflow on the engine's own loop, never the caller's), and its lease is
renewed by the same heartbeat a worker uses (:mod:`nbjobs.runtime.leases`).  A retry with
backoff runs here too when it is due, unless a worker takes it first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from typing import TYPE_CHECKING

from ..jobs import Status
from ..options import Options
from .execution import Execution
from .leases import expire_overdue, renew
from .threads import LoopThread

if TYPE_CHECKING:
    from .context import Runtime
    from .registry import Definition

log = logging.getLogger(__name__)


#: How often ``wf.run`` looks again at a job a limit holds back.
HELD_POLL_SECONDS = 0.05


class InlineRunner:
    """Runs jobs in the threads that ask for them (``wf.run``), with one heartbeat."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.id = f"{socket.gethostname()}:{os.getpid()}:inline"
        self.running: dict[str, Execution] = {}
        self._monitor: threading.Thread | None = None
        self._closing = threading.Event()
        self._loop: LoopThread | None = None
        self._lock = threading.Lock()

    def run(self, definition: Definition, args: tuple, kwargs: dict, options: Options) -> str:
        """Enqueue a job of ``definition`` claimed by this holder and run it here,
        retries included; returns its id once it is no longer this thread's to run."""
        runtime, store = self.runtime, self.runtime.store
        lease = runtime.settings.stale_after_seconds
        fields = runtime.job_fields(definition, args, kwargs, options)
        with runtime.tracing.submitting(definition.name, fields["queue"]) as traced:
            if traced is not None:
                fields["trace_context"] = traced.carrier
            claim, job_id = store.enqueue_running(worker_id=self.id, lease_seconds=lease, **fields)
            if traced is not None:
                traced.submitted(job_id)
        while True:
            if claim is not None:
                self._run_here(Execution(runtime, claim, definition, inline=True))
            row = store.get_job(job_id)
            if row.status != Status.QUEUED.value or row.workflow != definition.name:
                return job_id
            # A retry with backoff, or the queued job an idempotency key named: run it
            # here when it is due, unless a worker takes it first.
            due = max(0.0, (row.run_at or 0) - runtime.clock.now())
            if store.is_limited(row.queue, (row.workflow,)):
                due = max(due, HELD_POLL_SECONDS)  # a limit may hold it back: look again soon
            runtime.clock.wait(threading.Event(), due)
            claim = store.claim_job(job_id, worker_id=self.id, lease_seconds=lease)

    def _run_here(self, execution: Execution) -> None:
        with self._lock:
            self.running[execution.job.id] = execution
            if self._monitor is None:  # the heartbeat ends when nothing runs here
                self._monitor = threading.Thread(
                    target=self._beat, name="nbjobs-inline-beat", daemon=True
                )
                self._monitor.start()
        try:
            if execution.workflow.is_async:
                # Never the caller's loop: a notebook's loop is already running.
                asyncio.run_coroutine_threadsafe(execution.run_async(), self._event_loop()).result()
            else:
                execution.run_sync()
        finally:
            with self._lock:
                self.running.pop(execution.job.id, None)
            self.runtime.finished.notify()

    def close(self) -> None:
        """Stop the heartbeat and the loop of ``async def`` runs (the App is closing).

        The heartbeat is joined: the App disposes of its connection pool next, and a
        heartbeat still writing then would give its connection back to the pool after
        that, which nobody closes (a connection left open to the garbage collector).
        """
        self._closing.set()
        with self._lock:
            loop, self._loop = self._loop, None
            monitor = self._monitor
        if monitor is not None and monitor is not threading.current_thread():
            monitor.join(timeout=5)
        if loop is not None:
            loop.stop()

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = LoopThread("nbjobs-inline-loop")
            return self._loop.loop

    def _beat(self) -> None:
        """While jobs run here: their timeouts, and the worker's heartbeat of their leases."""
        runtime = self.runtime
        while True:
            with self._lock:
                if not self.running or self._closing.is_set():
                    self._monitor = None
                    return
                executions = {j: x for j, x in self.running.items() if not x.lost}
            try:
                expire_overdue(executions.values(), runtime.clock.now())
                held = {j: x.token for j, x in executions.items()}
                renew(runtime, self.id, executions, held)
            except Exception:
                log.exception("inline heartbeat failed")
            runtime.clock.wait(self._closing, min(runtime.settings.heartbeat_seconds, 0.5))
