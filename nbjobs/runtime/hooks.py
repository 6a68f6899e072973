"""Outcome hooks: ``app.on("failed", fn)`` calls ``fn(handle)`` in a worker after the outcome.

The registry (:class:`Hooks`) holds this process's hooks by event; a worker whose
process has hooks runs a :class:`HookRunner`: a thread of its own (never the monitor's,
so a slow hook or a slow scan never delays a heartbeat) and a small pool for the hooks.

How outcomes are found and run, at least once each:

* An outcome is a finished job row, named by (job id, ``finished_at``): a retry that
  finishes again is a second outcome.  Outcomes are read from the job rows, so every
  way a job ends counts: a worker finishing it, a cancel of a queued job from a
  notebook, the reaper giving up, a timeout.
* A hook has a name (``name=``, by default its ``module.qualname``), and each named
  hook is called once per outcome, whichever workers have it: a notebook's worker with
  a debugging hook does not take the outcomes of the production worker's alert.
* ``nbjobs_hooks`` holds, per event and hook, ``since``: outcomes that finished before
  it do not call the hook.  The first worker serving a hook sets it to now, so a hook
  registered today does not fire for all history; when no worker served the hook for
  ``FORGET_SECONDS`` (a day), the next one starts it at now again.
* The runner scans the job rows updated since its cursor (the ``updated_at`` index) for
  outcomes without a ``nbjobs_hook_runs`` row of one of its hooks, at most every
  ``POLL_SECONDS`` and at once when a job finished in this process.  It claims a call by
  inserting that row with a lease (the primary key makes two workers' claims
  exclusive), calls the hook outside any transaction, and marks the row done.  A lease
  is renewed while the hook runs; a worker that dies before ``done`` lets it expire
  (``stale_after_seconds``), and another worker calls the hook again: at least once.
  The window: a hook that ran (wholly or partly) before the crash and was not yet
  marked done.
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

from ..clock import to_datetime
from ..errors import ConfigurationError
from ..schema import new_token
from ..store.hooks import RunKey, Served
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
    """A hook's default name: ``module.qualname`` (a lambda needs ``name=``)."""
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(qualname, str) or "<lambda>" in qualname:
        raise ConfigurationError(
            f"hook {fn!r} needs a name (each named hook runs once per outcome): "
            "app.on('failed', fn, name='alert')"
        )
    module = getattr(fn, "__module__", None)
    return f"{module}.{qualname}" if module else qualname


class Hooks:
    """The hooks of this process by event and name; safe to read from the runner while
    a cell registers another."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_event: dict[str, dict[str, Hook]] = {}
        #: Called after each registration: a running worker starts its runner then.
        self._watchers: list[Callable[[], None]] = []

    def add(self, event: str, name: str, fn: Hook) -> None:
        """Register ``fn`` as ``name`` for ``event``; the same name again (a re-run
        cell) replaces the one before rather than running twice."""
        with self._lock:
            self._by_event.setdefault(event, {})[name] = fn
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

    def served(self) -> tuple[tuple[str, str], ...]:
        """Every (event, name) registered."""
        with self._lock:
            return tuple((e, n) for e in EVENTS for n in self._by_event.get(e, {}))

    def get(self, event: str, name: str) -> Hook | None:
        with self._lock:
            return self._by_event.get(event, {}).get(name)


class HookRunner:
    """Finds the outcomes its hooks have not seen, and calls them (module doc)."""

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
        #: Calls claimed and not done: (job_id, outcome_at, hook) -> started.
        self._held: dict[RunKey, bool] = {}
        self._marks: dict[Served, tuple[float, float]] = {}
        self._served: tuple[Served, ...] = ()
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
        try:  # outcomes from now on call the hooks, even those before the first scan
            self._serve(self.store.now())
        except Exception:
            log.exception("worker %s: could not register its hooks", self.worker_id)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop scanning; wait up to ``timeout`` s for running hooks, and give the calls
        not started back at once (a dying worker's would wait for their lease)."""
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
            waiting = [key for key, started in self._held.items() if not started]
            for key in waiting:
                del self._held[key]
        try:
            if waiting:
                self.store.release_hook_runs(waiting, token=self.token)
        except Exception:
            log.warning(
                "could not give back %d hook calls; they wait for their lease", len(waiting)
            )
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
        served = self.hooks.served()
        if not served:
            return
        now = self.store.now()
        if served != self._served or now - self._seen_at >= SEEN_SECONDS:
            self._serve(now)
        if now - self._renewed_at >= self.renew_seconds:
            self._renewed_at = now
            self._renew()
            self._reclaim()
        if now - self._slow_at >= SLOW_SCAN_SECONDS:
            self._slow_at = now
            self._marks.update(self.store.hook_marks(self._served))
            start = min(self._marks[pair][1] for pair in self._served)
            reached = self._scan(start, now, SLACK_SECONDS)
            if reached > start:
                self.store.advance_hook_scan(self._served, reached)
            self._cursor = max(self._cursor, start)
        self._cursor = self._scan(self._cursor, now, FAST_SLACK_SECONDS)

    def _serve(self, now: float) -> None:
        served = self.hooks.served()
        new = [pair for pair in served if pair not in self._marks]
        marks = self.store.serve_hooks(served, forget_seconds=FORGET_SECONDS)
        for event, name in new:
            log.info(
                "worker %s: hook %s runs for the %s outcomes since %s",
                self.worker_id,
                name,
                event,
                to_datetime(marks[(event, name)][0]),
            )
        self._marks.update(marks)
        starts = [marks[pair][1] for pair in new]
        if starts:  # a new hook: scan from where its outcomes begin
            self._cursor = min(self._cursor, *starts) if self._served else min(starts)
        self._served, self._seen_at = served, now

    def _scan(self, start: float, now: float, slack: float) -> float:
        """Claim and start the calls the outcomes updated since ``start`` owe this
        worker's hooks; returns where the next scan may start (every outcome before it
        has the run rows of these hooks)."""
        since = {pair: self._marks[pair][0] for pair in self._served}
        rows = self.store.unhooked_outcomes(after=start, since=since, limit=BATCH)
        # Every row owes a call: a full batch ends where it ends.
        reached = now - slack if len(rows) < BATCH else min(now - slack, rows[-1].updated_at)
        for row in rows:
            with self._lock:
                room = MAX_HELD - len(self._held)
            if room <= 0:
                reached = min(reached, row.updated_at)
                break
            for event, name in self._served:
                if event != row.status or row.finished_at < since[(event, name)]:
                    continue
                key = (row.id, row.finished_at, name)
                with self._lock:
                    if key in self._held:
                        continue
                if self.store.claim_hook_run(
                    key, event=event, token=self.token, lease_seconds=self.lease_seconds
                ):
                    self._submit(key, event)
        return max(start, reached)

    def _reclaim(self) -> None:
        with self._lock:
            room = MAX_HELD - len(self._held)
        if room <= 0:
            return
        for key, event in self.store.reclaim_hook_runs(
            self._served, token=self.token, lease_seconds=self.lease_seconds, limit=room
        ):
            log.warning(
                "job %s: calling its %s hook %s again (the worker calling it stopped "
                "before it was recorded as done)",
                key[0],
                event,
                key[2],
            )
            self._submit(key, event)

    def _renew(self) -> None:
        with self._lock:
            held = list(self._held)
        if not held:
            return
        lost = self.store.renew_hook_runs(held, token=self.token, lease_seconds=self.lease_seconds)
        for job_id, _, name in lost:
            log.warning("job %s: this worker lost the lease on its hook %s", job_id, name)

    # -- calling hooks -------------------------------------------------------------------
    def _submit(self, key: RunKey, event: str) -> None:
        with self._lock:
            self._held[key] = False
        if self._pool is None:
            self._pool = DaemonPool(HOOK_THREADS, "nbjobs-hook")
        self._pool.submit(self._run, key, event)

    def _run(self, key: RunKey, event: str) -> None:
        job_id, _, name = key
        with self._lock:
            if key not in self._held:
                return  # given back at stop
            self._held[key] = True
        try:
            fn = self.hooks.get(event, name)
            if fn is not None:  # else unregistered since: nothing to call, done
                try:
                    fn(self.runtime.make_handle(job_id))
                except Exception:
                    log.exception(
                        "job %s: %s hook %s failed (the job stays %s)",
                        job_id,
                        event,
                        name,
                        event,
                        extra={"job_id": job_id, "event": event, "hook": name},
                    )
            try:
                if not self.store.finish_hook_run(key, token=self.token):
                    log.warning(
                        "job %s: its %s hook %s ran, but its lease had been lost: another "
                        "worker may call it again",
                        job_id,
                        event,
                        name,
                    )
            except Exception:
                log.exception(
                    "job %s: could not record that its %s hook %s ran; it runs again "
                    "once the lease expires",
                    job_id,
                    event,
                    name,
                )
        finally:
            with self._lock:
                self._held.pop(key, None)
