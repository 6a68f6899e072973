"""Outcome hooks: ``app.on("failed", fn)`` calls ``fn(handle)`` in a worker after the outcome.

The registry (:class:`Hooks`) holds this process's hooks by event; a worker whose
process has hooks runs a :class:`HookRunner`: a thread of its own (never the monitor's,
so a slow hook or a slow scan never delays a heartbeat) and a small pool for the hooks.

How outcomes are found and run, at least once each:

* An outcome is a finished job row, named by (job id, ``finished_at``): a retry that
  finishes again is a second outcome.  Outcomes are read from the job rows, so every
  way a job ends counts: a worker finishing it, a cancel of a queued job from a
  notebook, the reaper giving up, a timeout.
* ``nbjobs_hooks`` holds, per event, ``since``: outcomes that finished before it get no
  hooks.  The first worker serving an event sets it to now, so a hook registered today
  does not fire for all history; when no worker served the event for
  ``FORGET_SECONDS`` (a day), the next one starts it at now again.
* The runner scans the job rows updated since its cursor (the ``updated_at`` index) for
  outcomes without a ``nbjobs_hook_runs`` row, at most every ``POLL_SECONDS`` and at
  once when a job finished in this process.  It claims one by inserting that row with a
  lease (the primary key makes two workers' claims exclusive), runs the hooks outside
  any transaction, and marks the row done.  A lease is renewed while its hooks run;
  a worker that dies before ``done`` lets it expire, and another worker runs the hooks
  again: at least once.  The window: hooks that ran (wholly or partly) before the
  crash and had not been marked done.
* Its cursor trails the clock by ``FAST_SLACK_SECONDS``; every ``SLOW_SCAN_SECONDS`` it
  scans again from the database's ``scanned_to``, which trails by ``SLACK_SECONDS``, so an
  outcome whose transaction committed late (up to a minute after it stamped
  ``finished_at``) is still found.  Only an outcome committed later than that is missed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ..schema import new_token
from .threads import DaemonPool

if TYPE_CHECKING:
    from .context import Runtime

log = logging.getLogger(__name__)

#: The events a hook can be registered for: the finished statuses.
EVENTS = ("succeeded", "failed", "cancelled")
#: How often a runner scans for outcomes at most, when no job finishes in its process.
POLL_SECONDS = 0.5
#: The least time between two scans, however fast jobs finish here.
MIN_GAP_SECONDS = 0.05
#: Outcomes read per scan, at most.
BATCH = 200
#: How far the runner's own cursor trails the clock (commit latency of a finish).
FAST_SLACK_SECONDS = 2.0
#: How far the shared ``scanned_to`` trails the clock: the latest commit of an outcome
#: after its ``finished_at`` that hooks still see.
SLACK_SECONDS = 60.0
#: How often the runner scans from the shared ``scanned_to`` (and moves it on).
SLOW_SCAN_SECONDS = 15.0
#: An event no worker served for this long starts again at now (see the module doc).
FORGET_SECONDS = 86400.0
#: How often a runner says that it serves its events.
SEEN_SECONDS = 60.0
#: Threads running hooks per worker, and outcomes a worker holds at most.
HOOK_THREADS = 2
MAX_HELD = 16

Hook = Callable[[Any], Any]


def check_event(event: object) -> str:
    if event not in EVENTS:
        raise ConfigurationError(
            f"unknown hook event {event!r}; one of {', '.join(repr(e) for e in EVENTS)}"
        )
    return str(event)


def hook_name(fn: Hook) -> str:
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None) or repr(fn)
    return f"{module}.{name}" if module else name


class Hooks:
    """The hooks of this process by event; safe to read from the runner while a cell
    registers another."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_event: dict[str, list[Hook]] = {}
        #: Called after each registration: a running worker starts its runner then.
        self._watchers: list[Callable[[], None]] = []

    def add(self, event: str, fn: Hook) -> None:
        """Register ``fn`` for ``event``; the same definition again (a re-run cell)
        replaces the one before rather than running twice."""
        key = (getattr(fn, "__module__", None), getattr(fn, "__qualname__", None))
        with self._lock:
            kept = [
                h
                for h in self._by_event.get(event, [])
                if key == (None, None)
                or (getattr(h, "__module__", None), getattr(h, "__qualname__", None)) != key
            ]
            self._by_event[event] = [*kept, fn]
            watchers = list(self._watchers)
        for watcher in watchers:
            watcher()

    def watch(self, watcher: Callable[[], None]) -> None:
        with self._lock:
            self._watchers.append(watcher)

    def unwatch(self, watcher: Callable[[], None]) -> None:
        with self._lock:
            if watcher in self._watchers:
                self._watchers.remove(watcher)

    def events(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(e for e in EVENTS if self._by_event.get(e))

    def get(self, event: str) -> list[Hook]:
        with self._lock:
            return list(self._by_event.get(event, ()))


class HookRunner:
    """Finds the outcomes whose hooks have not run, and runs them (module doc)."""

    def __init__(self, runtime: Runtime, worker_id: str) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.hooks = runtime.hooks
        self.worker_id = worker_id
        self.token = new_token()
        settings = runtime.settings
        self.lease_seconds = settings.stale_after_seconds
        self.renew_seconds = settings.heartbeat_seconds
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: DaemonPool | None = None
        self._lock = threading.Lock()
        #: Outcomes claimed and not done: (job_id, outcome_at) -> (event, started).
        self._held: dict[tuple[str, float], list[Any]] = {}
        self._marks: dict[str, tuple[float, float]] = {}
        self._served: tuple[str, ...] = ()
        self._cursor = float("-inf")
        self._seen_at = self._slow_at = self._renewed_at = float("-inf")

    # -- life cycle --------------------------------------------------------------------
    def start(self) -> None:
        """Serve the hooks of this process: at once when it has some, else from the
        first ``app.on`` (a worker without hooks runs no thread and no query for them)."""
        self.hooks.watch(self._begin)
        self._begin()

    def _begin(self) -> None:
        with self._lock:
            if self._thread is not None or self._stopping.is_set() or not self.hooks.events():
                return
            self._thread = threading.Thread(target=self._loop, name="nbjobs-hooks", daemon=True)
        try:  # outcomes from now on get hooks, even those before the first scan
            self._serve(self.store.now())
        except Exception:
            log.exception("worker %s: could not register its hooks", self.worker_id)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop scanning; wait up to ``timeout`` s for running hooks, and give the
        outcomes not started back at once (a dying worker's would wait for the lease)."""
        self._stopping.set()
        self.hooks.unwatch(self._begin)
        with self._lock:
            thread = self._thread
        if thread is None:
            return
        self.runtime.finished.notify()
        thread.join(timeout=5)
        if self._pool is not None:
            self._pool.shutdown()
        with self._lock:
            waiting = [key for key, (_, started) in self._held.items() if not started]
            for key in waiting:
                del self._held[key]
        try:
            if waiting:
                self.store.release_hook_runs(waiting, token=self.token)
        except Exception:
            log.warning("could not give back %d hook runs; they wait for their lease", len(waiting))
        deadline = time.monotonic() + timeout
        while self._held and time.monotonic() < deadline:
            time.sleep(0.02)
        if self._held:
            log.warning(
                "worker %s stopped with %d hooks still running; they run again elsewhere "
                "once their lease expires",
                self.worker_id,
                len(self._held),
            )

    # -- the loop ------------------------------------------------------------------------
    def _loop(self) -> None:
        finished = self.runtime.finished
        while not self._stopping.is_set():
            seen = finished.generation
            try:
                self._pass()
            except Exception:
                log.exception("worker %s: hook scan failed", self.worker_id)
                self._stopping.wait(1.0)
            self._stopping.wait(MIN_GAP_SECONDS)
            finished.wait(seen, POLL_SECONDS - MIN_GAP_SECONDS)

    def _pass(self) -> None:
        events = self.hooks.events()
        if not events:
            return
        now = self.store.now()
        if events != self._served or now - self._seen_at >= SEEN_SECONDS:
            self._serve(now)
        if now - self._renewed_at >= self.renew_seconds:
            self._renewed_at = now
            self._renew()
            self._reclaim(events)
        if now - self._slow_at >= SLOW_SCAN_SECONDS:
            self._slow_at = now
            marks = self.store.hook_marks(events)
            self._marks.update(marks)
            start = min(scanned for _, scanned in marks.values())
            reached = self._scan(start, now, SLACK_SECONDS)
            if reached > start:
                self.store.advance_hook_scan(events, reached)
            self._cursor = max(self._cursor, start)
        self._cursor = self._scan(self._cursor, now, FAST_SLACK_SECONDS)

    def _serve(self, now: float) -> None:
        events = self.hooks.events()
        marks = self.store.serve_hook_events(events, forget_seconds=FORGET_SECONDS)
        for event, (since, _) in marks.items():
            if since >= now - 1.0 and self._marks.get(event, (None,))[0] != since:
                log.info("worker %s: %s hooks run for outcomes from now on", self.worker_id, event)
        self._marks.update(marks)
        if not self._served:
            self._cursor = min(scanned for _, scanned in marks.values())
        self._served, self._seen_at = events, now

    def _scan(self, start: float, now: float, slack: float) -> float:
        """Claim and start the hooks of the outcomes updated since ``start``; returns
        where the next scan may start (every outcome before it has a run row)."""
        marks = {e: m for e, m in self._marks.items() if e in self._served}
        if not marks:
            return start
        rows = self.store.unhooked_outcomes(
            after=start, since={e: since for e, (since, _) in marks.items()}, limit=BATCH
        )
        # Every row is an outcome to hook: a full batch ends where it ends.
        reached = now - slack if len(rows) < BATCH else min(now - slack, rows[-1].updated_at)
        for row in rows:
            with self._lock:
                full = len(self._held) >= MAX_HELD
            if full:
                reached = min(reached, row.updated_at)
                break
            if self.store.claim_hook_run(
                job_id=row.id,
                outcome_at=row.finished_at,
                event=row.status,
                token=self.token,
                lease_seconds=self.lease_seconds,
            ):
                self._submit(row.id, row.finished_at, row.status)
        return max(start, reached)

    def _reclaim(self, events: tuple[str, ...]) -> None:
        with self._lock:
            room = MAX_HELD - len(self._held)
        if room <= 0:
            return
        for job_id, outcome_at, event in self.store.reclaim_hook_runs(
            events=events, token=self.token, lease_seconds=self.lease_seconds, limit=room
        ):
            log.warning(
                "job %s: running its %s hooks again (the worker running them stopped "
                "before they were recorded as done)",
                job_id,
                event,
            )
            self._submit(job_id, outcome_at, event)

    def _renew(self) -> None:
        with self._lock:
            held = list(self._held)
        if not held:
            return
        lost = self.store.renew_hook_runs(held, token=self.token, lease_seconds=self.lease_seconds)
        for job_id, _ in lost:
            log.warning("job %s: this worker lost the lease on its hooks", job_id)

    # -- running hooks -------------------------------------------------------------------
    def _submit(self, job_id: str, outcome_at: float, event: str) -> None:
        with self._lock:
            self._held[(job_id, outcome_at)] = [event, False]
        if self._pool is None:
            self._pool = DaemonPool(HOOK_THREADS, "nbjobs-hook")
        self._pool.submit(self._run, job_id, outcome_at, event)

    def _run(self, job_id: str, outcome_at: float, event: str) -> None:
        key = (job_id, outcome_at)
        with self._lock:
            if key not in self._held:
                return  # given back at stop
            self._held[key][1] = True
        try:
            handle = self.runtime.make_handle(job_id)
            for fn in self.hooks.get(event):
                try:
                    fn(handle)
                except Exception:
                    log.exception(
                        "job %s: %s hook %s failed (the job stays %s)",
                        job_id,
                        event,
                        hook_name(fn),
                        event,
                        extra={"job_id": job_id, "event": event, "hook": hook_name(fn)},
                    )
            try:
                if not self.store.finish_hook_run(
                    job_id=job_id, outcome_at=outcome_at, token=self.token
                ):
                    log.warning(
                        "job %s: its %s hooks ran, but their lease had been lost: "
                        "another worker may run them again",
                        job_id,
                        event,
                    )
            except Exception:
                log.exception(
                    "job %s: could not record that its %s hooks ran; they run again "
                    "once the lease expires",
                    job_id,
                    event,
                )
        finally:
            with self._lock:
                self._held.pop(key, None)
