"""The worker: claim -> run -> record, plus heartbeats, the reaper, timers and wake-ups.

A :class:`Worker` is a set of background threads inside the current process; it never
touches the caller's event loop and never installs signal handlers, so it is safe inside
a Jupyter kernel.  Sync workflows run on a thread pool; ``async def`` workflows run on
the worker's own event loop in its own thread.

Threads:

* the dispatcher claims jobs while slots are free, and otherwise waits on a wake-up event
  (set by finished jobs, retries, signals) or until the next delayed job is due; an
  in-process submit claims for a free slot in the submitting thread, and where the
  database pushes wake-ups (PostgreSQL's LISTEN, MariaDB's sentinel: see
  ``Worker._idle``) the listening thread claims for the free slots itself: each one
  thread wake-up sooner than waking the dispatcher;
* the monitor heartbeats the leases it holds, passes cancel requests and timeouts to the
  running executions, wakes due timers, runs the reaper and, every minute, measures
  the clock's offset to the database server again.  The reaper is part of every
  worker, idempotent, and not a job;
* the hooks thread (:mod:`.hooks`) finds the outcomes whose ``app.on`` hooks have not
  run and runs them on a small pool of its own, off the monitor's heartbeat path;
* the write-behind thread commits, a few milliseconds late, the successes of short jobs
  that no slot has committed with its next claim (see :meth:`Worker._record_chained`).

Short jobs are batched the way the fastest queues do it (River's batch completer, Oban's
fetch limits): a slot whose job ran for less than ``SHORT_JOB_SECONDS`` claims more
jobs with the same commit (up to ``PREFETCH``; the worker holds at most ``PREFETCH`` per
slot ahead), and the successes of the jobs it then runs back to back share one commit.
Prefetched jobs are leased to this worker, counted in its heartbeats, run by whichever
slot is free first, and given back to the queue on ``stop()``.  Long jobs are claimed and
recorded one at a time.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..artifacts.location import check_hosts, is_private_folder
from ..errors import DatabaseLost
from ..schema import new_token
from ..store import ClaimedJob
from .execution import Execution
from .hooks import HookRunner
from .leases import expire_overdue, renew
from .registry import FlowLimits
from .scheduler import Retention, Scheduler
from .threads import DaemonPool, LoopThread, forget_at_exit, stop_at_exit

if TYPE_CHECKING:
    from .context import Runtime
    from .registry import Definition

log = logging.getLogger(__name__)

#: A job that ran for less than this is short: its slot may claim several jobs at once
#: and its success may share a later commit.
SHORT_JOB_SECONDS = 0.005
#: How many jobs a slot running short jobs claims ahead at once; a worker holds at most
#: this many per slot.
PREFETCH = 16
#: How long a short job's success may wait for a commit shared with others, at most.
WRITE_BEHIND_SECONDS = 0.005
#: How long a queue whose claim came back short is passed over by the claims a finishing
#: job makes (unless a wake-up says it has a new job): see ``_chain_request``.
DRY_SECONDS = 0.2


class Worker:
    """Background worker threads for one :class:`~nbjobs.App` in this process."""

    def __init__(
        self, runtime: Runtime, *, concurrency: int = 4, queues: list[str] | None = None
    ) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.settings = runtime.settings
        self.scheduler = Scheduler(runtime)
        self.retention = Retention(runtime)
        self.concurrency = concurrency
        #: Without explicit queues, the worker serves ``default`` and the queue of every
        #: workflow its App registers (later registrations too, see ``registered``).
        self.auto_queues = not queues
        self.queues = list(queues) if queues else runtime.registry.queues()
        self.id = f"{socket.gethostname()}:{os.getpid()}:{new_token()[-8:]}"
        self.running: dict[str, Execution] = {}
        #: Successes left to a later shared commit (see ``_record_chained``), heartbeated
        #: until it is made: their slot has moved on, but their lease must not lapse.
        self._deferred: dict[str, Execution] = {}
        #: Jobs claimed ahead (leased to this worker, not started yet), in claim order.
        self._ready: collections.deque[ClaimedJob] = collections.deque()
        self._reserved = 0  # places in _ready that claims under way may fill
        self._cancels_seen = 0  # the store's cancel_requests when _ready was last checked
        #: (parent, fan-out) -> whether its fan-in counts successes (see ``_may_defer``).
        self._counting: dict[tuple[str, str], bool] = {}
        self._behind = threading.Event()  # successes wait for the write-behind thread
        self._lock = threading.Lock()
        self._claiming = threading.Lock()
        self._wake = threading.Event()
        #: Set while the worker has free slots and its last claim left some empty (no
        #: ready work): where the database wakes idle workers by name (MariaDB), the
        #: wake-up thread stands ready only then, so busy workers cost submits nothing.
        self._idle = threading.Event()
        self._stopping = threading.Event()
        self._stopped = False
        self._pool = DaemonPool(concurrency, "nbjobs-job")
        self._loop: LoopThread | None = None
        self._threads: list[threading.Thread] = []
        self._paused: set[str] = set()
        self._paused_checked = 0.0
        self._queue_turn = 0
        #: Queue -> until when (monotonic) its last claim found it empty.
        self._dry: dict[str, float] = {}
        self._unlisten = None
        self.hooks = HookRunner(runtime, self.id)

    # -- life cycle --------------------------------------------------------------------
    def start(self) -> None:
        store = self.store
        store.register_worker(
            worker_id=self.id,
            queues_=self.queues,
            concurrency=self.concurrency,
            workflows=self.runtime.registry.claim_names,
        )
        artifacts = self.runtime.codec.artifacts
        if artifacts is not None:
            live = store.list_workers(alive_within=self.settings.stale_after_seconds)
            try:
                check_hosts(str(store.url), is_private_folder(artifacts), [w.host for w in live])
            except BaseException:
                store.stop_worker(self.id)
                raise
        self._store_flow_limits(self.runtime.registry.definitions())
        self.runtime.on_wake(self.wake)
        try:
            store.reclaim_dead_local_workers(max_reclaims=self.settings.max_reclaims)
        except Exception:
            log.exception("could not reclaim jobs of dead local workers")
        self._unlisten = store.listen_ready(
            self._on_ready,
            idle=self._idle,
            queues=lambda: self.queues,
            workflows=lambda: self.runtime.registry.claim_names,
        )
        stop_at_exit(self)
        self.hooks.start()  # before the first claim: its outcome gets the hooks
        for target, name in (
            (self._dispatch_loop, "dispatch"),
            (self._monitor_loop, "monitor"),
            (self._write_behind_loop, "write-behind"),
        ):
            thread = threading.Thread(target=target, name=f"nbjobs-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info(
            "worker %s started: concurrency %d, queues %s%s",
            self.id,
            self.concurrency,
            ", ".join(self.queues),
            " (those of its workflows; pass queues= to choose)" if self.auto_queues else "",
        )

    def registered(self, workflow: Definition) -> None:
        """A workflow was registered after start: record it, and serve its queue."""
        queue = workflow.queue
        if self.auto_queues and queue not in self.queues:
            self.queues = [*self.queues, queue]
            log.info("worker %s now also serves queue %s", self.id, queue)
        try:
            self._store_flow_limits([workflow])
        except Exception:
            log.exception("could not store the limits of workflow %r", workflow.name)
        try:
            claimed = self.runtime.registry.claim_names
            names = [n for n in (workflow.name, workflow.alias) if n in claimed]
            self.store.add_worker_workflows(worker_id=self.id, workflows=names, queues_=self.queues)
        except Exception:
            log.warning("could not record workflow %r in the worker registry", workflow.name)
        self._wake.set()

    def _store_flow_limits(self, definitions: list[Definition]) -> None:
        """Write the workflows' limits to the database where they differ from what it
        holds (a workflow without limits removes a stored one): the last worker to
        start with a workflow decides its limits for the whole fleet."""
        stored = self.store.current_limits()
        for definition in definitions:
            flow = definition.flow
            old = stored.get(("workflow", definition.name))
            rate = None
            if old is not None and old.rate_count is not None and old.rate_seconds is not None:
                rate = (old.rate_count, old.rate_seconds)
            if old is None and flow == FlowLimits():
                continue
            if old is not None and (old.concurrency, rate, old.partition_concurrency) == (
                flow.concurrency,
                flow.rate,
                flow.partition_concurrency,
            ):
                continue
            self.store.set_limit(
                "workflow",
                definition.name,
                concurrency=flow.concurrency,
                rate=flow.rate,
                partition_concurrency=flow.partition_concurrency,
            )

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming; let running jobs finish for ``timeout`` s, then release them.

        A ``KeyboardInterrupt`` while it waits (Ctrl-C again) releases them at once: they
        go back to the queue rather than stay ``running`` until their lease expires.
        """
        if self._stopped:
            return  # stopped at interpreter exit already, and now by the App
        self._stopped = True
        self._stopping.set()
        self._wake.set()
        self.runtime.on_wake(None)
        if self._unlisten is not None:
            self._unlisten()
        try:
            for thread in self._threads:
                thread.join(timeout=5)
            self._wait_for_running(timeout)
        except KeyboardInterrupt:
            log.warning("interrupted: giving the running jobs back to the queue")
        store = self.store
        try:
            store.flush()
            for job_id, execution in list(self.running.items()):
                if not execution.done.is_set():
                    log.warning(
                        "job %s (%s): still running at stop; released to the queue",
                        job_id,
                        execution.workflow.name,
                    )
                    execution.mark_lost()
                    store.release_job(
                        job_id=job_id, token=execution.token, attempt=execution.job.attempt
                    )
            while (job := self._take_ready()) is not None:
                store.unclaim_job(job_id=job.id, token=job.lease_token)
        except DatabaseLost:
            pass  # nothing can be given back; the error was logged when it was found
        self._pool.shutdown()
        self.hooks.stop()
        if self._loop is not None:
            self._loop.stop()
        try:
            if store.dialect.gone is None:
                store.stop_worker(self.id)
        except Exception:
            log.exception("could not mark worker %s stopped", self.id)
        forget_at_exit(self)
        log.info("worker %s stopped", self.id)

    def _wait_for_running(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for the running jobs, saying which and how long."""
        running = [x for x in list(self.running.values()) if not x.done.is_set()]
        if not running or timeout <= 0:
            return
        log.warning(
            "waiting up to %g s for %d running job%s (%s) (Ctrl-C again to give %s back to "
            "the queue now)",
            timeout,
            len(running),
            "" if len(running) == 1 else "s",
            ", ".join(f"{x.job.id} {x.workflow.name}" for x in running[:5])
            + (" ..." if len(running) > 5 else ""),
            "it" if len(running) == 1 else "them",
        )
        clock = self.runtime.clock
        deadline = clock.now() + timeout
        for execution in running:
            execution.done.wait(max(0.0, deadline - clock.now()))

    @property
    def alive(self) -> bool:
        return not self._stopping.is_set()

    def wake(self) -> None:
        self._wake.set()

    def submitted(self, queue: str) -> None:
        """A job was submitted to ``queue`` in this process: claim it from the submitting
        thread when a slot is free and no other thread is claiming (one thread wake-up
        sooner than the dispatcher); else leave it to the dispatcher."""
        if queue in self.queues:
            self._claim_here(wait=False, why="a submit")

    def _claim_here(self, wait: bool, why: str) -> None:
        """Claim for the free slots in the calling thread, waiting for the claim lock
        or not; the dispatcher is woken when this did not claim, or claimed nothing
        with slots free (the job may be delayed: it works out its wait again)."""
        if not self._claiming.acquire(blocking=wait):
            self._wake.set()
            return
        try:
            free, claimed = self._fill_slots_locked()
        except Exception:
            log.debug("claim on %s failed; the dispatcher retries", why, exc_info=True)
            free, claimed = 1, 0
        finally:
            self._claiming.release()
        if free > 0 and not claimed:
            self._wake.set()

    def queues_changed(self) -> None:
        """A queue was resumed: read the pauses again now, not at the next refresh."""
        self._paused_checked = float("-inf")
        self._wake.set()

    def _on_ready(self, queue: str) -> None:
        """A job became ready somewhere (PostgreSQL NOTIFY); "" means "a queue was resumed,
        or notifications may have been missed".

        The listener thread claims for the free slots itself: waking the dispatcher
        first would cost one more thread wake-up on the way from submit to start.  When
        it claims nothing with slots free, the job may be delayed (or taken by another
        worker): the dispatcher is woken to work out its wait again, so a job delayed
        by another process starts when due, not at the next poll.
        """
        if not queue:
            self.queues_changed()
        elif queue in self.queues:
            self._dry.pop(queue, None)
            if queue in self._paused:
                # Paused when last read: this may be its resume (MariaDB's wake-up
                # cannot tell a resume from a submit), so read the pauses again.
                self._paused_checked = float("-inf")
            self._claim_here(wait=True, why="a wake-up")

    # -- dispatching -------------------------------------------------------------------
    def _free_slots(self) -> int:
        with self._lock:
            return self.concurrency - len(self.running)

    def _active_queues(self) -> list[str]:
        now = self.runtime.clock.now()
        if now - self._paused_checked > 1.0:
            self._paused = self.store.paused_queues()
            self._paused_checked = now
        return self._in_turn()

    def _in_turn(self) -> list[str]:
        """The queues not paused (as last read), rotated one step from the last call."""
        queues = [q for q in self.queues if q not in self._paused]
        # Rotate so one busy queue cannot starve the others.
        self._queue_turn = (self._queue_turn + 1) % max(1, len(queues))
        return queues[self._queue_turn :] + queues[: self._queue_turn]

    def _take_ready(self) -> ClaimedJob | None:
        """The oldest job claimed ahead, or None.

        Before one starts, the jobs claimed ahead are checked for cancel requests
        whenever this process wrote one since the last look (a user's ``h.cancel()``, a
        fan-out failing fast): a job cancelled before it started never runs.  Requests
        written by other processes reach the worker with its next heartbeat, as for
        running jobs.
        """
        if self._ready and self.store.cancel_requests != self._cancels_seen:
            self._cancels_seen = self.store.cancel_requests
            with self._lock:
                ids = [job.id for job in self._ready]
            self._cancel_ahead(self.store.cancels_requested(ids))
        with self._lock:
            return self._ready.popleft() if self._ready else None

    def _drop_ahead(self, drop: Callable[[ClaimedJob], bool]) -> list[ClaimedJob]:
        """Take the jobs claimed ahead for which ``drop(job)`` is true out of the queue."""
        with self._lock:
            dropped = [job for job in self._ready if drop(job)]
            if dropped:
                self._ready = collections.deque(j for j in self._ready if not drop(j))
        return dropped

    def _cancel_ahead(self, job_ids: set[str]) -> None:
        """Cancel the jobs claimed ahead among ``job_ids``, as if never claimed."""
        if not job_ids:
            return
        dropped = self._drop_ahead(lambda job: job.id in job_ids)
        for job in dropped:
            self.store.unclaim_job(job_id=job.id, token=job.lease_token, cancel=True)
        if dropped:
            self.runtime.finished.notify()

    def _claim(self, free: int) -> list[ClaimedJob]:
        claimed: list[ClaimedJob] = []
        while len(claimed) < free and (job := self._take_ready()) is not None:
            claimed.append(job)
        free -= len(claimed)
        workflows = self.runtime.registry.claim_names
        for queue in self._active_queues():
            if free <= 0:
                break
            got = self.store.claim_jobs(
                worker_id=self.id,
                queue=queue,
                workflows=workflows,
                limit=free,
                lease_seconds=self.settings.stale_after_seconds,
            )
            self._note_claimed(queue, len(got), free)
            claimed.extend(got)
            free -= len(got)
        return claimed

    def _fill_slots(self) -> tuple[int, int]:
        """Claim jobs for the free slots and start them; returns (free, claimed).

        The dispatcher and the wake-up listener both call this; the lock keeps them from
        claiming the same free slot twice.
        """
        with self._claiming:
            return self._fill_slots_locked()

    def _fill_slots_locked(self) -> tuple[int, int]:
        if self._stopping.is_set():
            return 0, 0
        free = self._free_slots()
        claimed = self._claim(free) if free > 0 else []
        if len(claimed) < free:
            self._idle.set()
        else:
            self._idle.clear()
        for job in claimed:
            self._dispatch(job)
        return free, len(claimed)

    def _dispatch_loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                self._wake.clear()
                free, claimed = self._fill_slots()
                failures = 0
                if claimed:
                    continue  # maybe more ready work: claim again as slots free
                self.runtime.clock.wait(self._wake, self._idle_wait() if free > 0 else 1.0)
            except Exception:
                failures += 1
                pause = min(30.0, 0.5 * 2**failures) * (0.5 + random.random() / 2)
                log.exception("worker %s: claim failed; retrying in %.1f s", self.id, pause)
                self._stopping.wait(pause)

    def _idle_wait(self) -> float:
        poll = self.settings.poll_seconds
        due = self.store.next_due_at(self.queues)
        # A rate that held a claim back frees a start at a known moment.
        free_at, self.store.rate_free_at = self.store.rate_free_at, None
        if free_at is not None:
            due = free_at if due is None else min(due, free_at)
        if due is None:
            return poll
        return min(poll, max(0.0, due - self.runtime.clock.now()) + 0.001)

    def _dispatch(self, job: ClaimedJob) -> None:
        execution = self._execution(job)
        if execution.workflow.is_async:
            self._start_async(execution)
        else:
            self._pool.submit(self._run_slot, execution)

    def _start_async(self, execution: Execution) -> None:
        """Run an ``async def`` job on the worker's own loop (never the caller's)."""
        future = asyncio.run_coroutine_threadsafe(execution.run_async(), self._event_loop())
        future.add_done_callback(functools.partial(self._async_done, execution))

    def _async_done(self, execution: Execution, _future: object) -> None:
        self._finished(execution.job.id, execution)

    def _execution(self, job: ClaimedJob, replaces: Execution | None = None) -> Execution:
        execution = Execution(self.runtime, job, self.runtime.registry.get(job.workflow))
        with self._lock:
            if replaces is not None and self.running.get(replaces.job.id) is replaces:
                del self.running[replaces.job.id]
            self.running[job.id] = execution
        return execution

    def _run_slot(self, execution: Execution) -> None:
        """Run sync jobs in this pool thread, chaining to the next ready job while any.

        A success is recorded in the same transaction that claims the next job (or, for
        a short job followed by one claimed ahead, with a later shared commit), so a busy
        slot never hands off to the dispatcher.
        """
        while True:
            execution.chain = self._record_chained
            try:
                execution.run_sync()
            except BaseException:
                log.exception("job %s: unexpected error in its slot", execution.job.id)
            nxt = execution.next_job
            if nxt is None and not self._stopping.is_set():
                nxt = self._take_ready()
            if nxt is None:
                self._finished(execution.job.id, execution)
                return
            if not execution.deferred:
                self.runtime.finished.notify()
            following = self._execution(nxt, replaces=execution)
            if following.workflow.is_async:
                self._start_async(following)
                return
            execution = following

    def _record_chained(self, execution: Execution, text: str) -> None:
        """Record a slot's success and set the job the slot runs next.

        A short job followed by a job claimed ahead leaves its success to a later
        shared commit (the next claim, or the write-behind thread within
        ``WRITE_BEHIND_SECONDS``); a fan-out child's fan-in is checked in that commit,
        once for all the children it records.  Otherwise the success is committed now,
        with the claim of the next job (and, after a short job, of jobs to hold ahead).

        Jobs run in claim order: the ones claimed now queue behind those claimed ahead
        before (a fan-out's children start in input order on one slot).
        """
        job, store = execution.job, self.store
        short = store.now() - execution.started < SHORT_JOB_SECONDS
        if short and not self._stopping.is_set() and self._may_defer(job):
            nxt = self._take_ready()
            if nxt is not None:
                execution.deferred = True
                execution.next_job = nxt
                with self._lock:
                    self._deferred[job.id] = execution
                store.finish_later(
                    job_id=job.id,
                    token=execution.token,
                    attempt=job.attempt,
                    result=text,
                    done=lambda outcome, x=execution: self._written_behind(x, outcome),
                    parent_id=job.parent_id,
                )
                self._behind.set()
                return
        ahead = 0
        if short:
            with self._lock:  # at most PREFETCH per slot ahead, in all
                room = PREFETCH * self.concurrency - len(self._ready) - self._reserved
                ahead = max(0, min(PREFETCH, room))
                self._reserved += ahead
        try:
            claim = self._chain_request(1 + ahead)
            if claim is not None:
                # Under a limit, jobs are claimed ahead only where the limit has room
                # to spare (see ``LimitedClaims._claim_limited``).
                claim["ahead"] = ahead
            claimed = execution.commit_success(text, claim=claim)
            if claim is not None:
                self._note_claimed(claim["queue"], len(claimed), claim["limit"])
        finally:
            with self._lock:
                self._reserved -= ahead
        if claimed:
            with self._lock:
                self._ready.extend(claimed)
            execution.next_job = self._take_ready()
        if len(claimed) > 1:
            self._wake.set()  # idle slots take the rest

    def _note_claimed(self, queue: str, got: int, asked: int) -> None:
        """Remember a queue whose claim came back short as dry for a moment (see
        ``_chain_request``)."""
        if got < asked:
            self._dry[queue] = time.monotonic() + DRY_SECONDS
        else:
            self._dry.pop(queue, None)

    def _may_defer(self, job: ClaimedJob) -> bool:
        """Whether a short job's success may wait for a later shared commit: not a child
        of a fan-out that counts successes (``Threshold(n)``), whose siblings must not
        run after the n-th success has decided it.  Asked of the store once a fan-out."""
        if job.parent_id is None or job.fanout is None:
            return job.parent_id is None
        key = (job.parent_id, job.fanout)
        counts = self._counting.get(key)
        if counts is None:
            counts = self.store.fanout_counts_successes(job.parent_id, job.fanout)
            if len(self._counting) > 1024:
                self._counting.clear()
            self._counting[key] = counts
        return not counts

    def _written_behind(self, execution: Execution, outcome: bool | BaseException) -> None:
        with self._lock:
            if self._deferred.get(execution.job.id) is execution:
                del self._deferred[execution.job.id]
        if isinstance(outcome, BaseException):
            log.error(
                "job %s: its success could not be recorded (%s); it runs again once its "
                "lease expires",
                execution.job.id,
                outcome,
            )
            return
        execution.note_write(outcome)
        if outcome:
            self.runtime.finished.notify()
            if execution.job.parent_id is not None:
                self._wake.set()  # the commit may have resumed its parent: claim it

    def _write_behind_loop(self) -> None:
        while not self._stopping.is_set():
            if not self._behind.wait(1.0):
                continue
            self._stopping.wait(WRITE_BEHIND_SECONDS)
            self._behind.clear()
            try:
                self.store.flush()
            except Exception:
                log.exception("worker %s: write-behind commit failed", self.id)

    def _chain_request(self, limit: int) -> dict | None:
        """What a finishing job may claim next in its own transaction, or None.

        The queues take turns, as in the dispatcher's claims, so that one busy queue
        cannot keep every slot; a queue whose last claim came back short is passed
        over for ``DRY_SECONDS`` (a wake-up for it ends that at once), so a worker
        serving an empty queue and a busy one does not ask the empty one at every
        other finish and hand the slot back to the dispatcher.
        """
        if self._stopping.is_set():
            return None
        queues = self._in_turn()  # the pauses as the dispatcher last read them
        if len(queues) > 1:
            now = time.monotonic()
            dry = self._dry
            queues = [q for q in queues if dry.get(q, 0.0) <= now] or queues
        if not queues:
            return None
        return dict(
            worker_id=self.id,
            queue=queues[0],
            workflows=self.runtime.registry.claim_names,
            lease_seconds=self.settings.stale_after_seconds,
            limit=limit,
        )

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = LoopThread("nbjobs-loop")
        return self._loop.loop

    def _finished(self, job_id: str, execution: Execution | None = None) -> None:
        with self._lock:
            # A timed-out run that returns late must not drop its retry's entry.
            if execution is None or self.running.get(job_id) is execution:
                self.running.pop(job_id, None)
        self._wake.set()
        self.runtime.finished.notify()

    # -- monitoring --------------------------------------------------------------------
    def _monitor_loop(self) -> None:
        clock, settings = self.runtime.clock, self.settings
        last_beat = last_reap = 0.0
        tick = min(0.25, settings.heartbeat_seconds / 4)
        while not self._stopping.is_set():
            if self.store.dialect.gone is not None:
                self._database_gone()
                return
            try:
                self.store.sync_clock_if_stale()
                now = clock.now()
                expire_overdue(list(self.running.values()), now)
                if self.store.wake_due_jobs():
                    self._wake.set()
                if now - last_beat >= settings.heartbeat_seconds:
                    last_beat = now
                    self._heartbeat()
                if now - last_reap >= settings.heartbeat_seconds:
                    last_reap = now
                    if self.store.reap_expired(max_reclaims=settings.max_reclaims):
                        self._wake.set()
                    self.store.expire_jobs()
                    if self.store.heal_fanouts():  # heals a missed fan-in or sibling cancel
                        self._wake.set()
                if self.scheduler.tick(self.queues):
                    self._wake.set()
                self.retention.tick()
            except Exception:
                log.exception("worker %s: monitor pass failed", self.id)
                self._stopping.wait(1.0)
            clock.wait(self._stopping, tick)

    def _database_gone(self) -> None:
        """The database went away under the App (see ``Dialect.gone``): nothing can be
        recorded any more, so stop claiming and stop the runs at their next step."""
        log.error("worker %s stopped: %s", self.id, self.store.dialect.gone)
        self._stopping.set()
        self._wake.set()
        with self._lock:
            executions = list(self.running.values())
        for execution in executions:
            execution.mark_lost()

    def _heartbeat(self) -> None:
        with self._lock:
            executions = {jid: x for jid, x in self.running.items() if not x.lost}
            held = {jid: x.token for jid, x in executions.items()}
            # A job retried while its old run is still winding down can be both running
            # (old token) and claimed ahead (new token): the new lease is the one held.
            held.update((job.id, job.lease_token) for job in self._ready)
            held.update((jid, x.token) for jid, x in self._deferred.items() if jid not in held)
        lost_leases, cancel = renew(self.runtime, self.id, executions, held)
        if lost_leases:
            self._drop_ahead(lambda job: (job.id, job.lease_token) in lost_leases)
        self._cancel_ahead(set(cancel))
