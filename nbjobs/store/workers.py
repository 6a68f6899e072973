"""The worker registry, heartbeats, the reaper, timers coming due, and paused queues."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection, Row

from ..errors import WORKER_LOST_PREFIX
from ..jobs import FINISHED, Status
from ..schema import (
    QUEUED_SQL,
    RUNNING_SQL,
    WAITING_SQL,
    checkpoints,
    jobs,
    jobs_by_key,
    queues,
    worker_workflows,
    workers,
)
from .fanout import FanoutQueries

log = logging.getLogger(__name__)

#: The reason (``error``) of a job cancelled because it had not started by its
#: ``expires`` time.
EXPIRED = "expired"

# What the reaper needs of a job whose worker was lost.
_LOST_COLUMNS = (
    jobs.c.id,
    jobs.c.workflow,
    jobs.c.lease_token,
    jobs.c.attempts,
    jobs.c.reclaims,
    jobs.c.cancel_requested,
)


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, kernel start time) of ``pid`` from ``/proc``, or None (gone, not Linux)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return None


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a live process from a reused pid)."""
    stat = _proc_stat(pid)
    return stat[1] if stat is not None else None


def _pid_namespace() -> str:
    """What makes this process's pids mean the same to another process: the boot and
    the PID namespace, as a short digest ("" where ``/proc`` has neither).

    A hostname is not enough: containers sharing one (docker ``--network host``,
    Kubernetes ``hostNetwork``, cloned VMs) each number their processes apart, and a
    live worker in one looks dead from the other.
    """
    parts = []
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            parts.append(f.read().strip())
    except OSError:
        pass
    try:
        ns = os.stat("/proc/self/ns/pid")
        parts.append(f"{ns.st_dev}:{ns.st_ino}")
    except OSError:
        pass
    # SHA-256, shortened: an identity to compare, not a secret.
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:16] if parts else ""


#: This process's ``_pid_namespace()`` (fixed for its lifetime).
PID_NAMESPACE = _pid_namespace()


def process_identity(pid: int) -> str | None:
    """What the worker registry stores in ``pid_start`` for ``pid`` of this namespace:
    the start time and, after an ``@``, the namespace (see ``_pid_namespace``)."""
    start = _process_start(pid)
    if not PID_NAMESPACE:
        return start
    return f"{start or ''}@{PID_NAMESPACE}"


def process_alive(pid: int, pid_start: str | None) -> bool:
    """Whether ``pid``, with the kernel start time ``pid_start`` (None: unknown), still
    runs in this PID namespace.  A zombie (killed, not reaped by its parent yet) is dead:
    it runs nothing and will not heartbeat again."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc: the pid answers, so it is taken to be alive
    state, start = stat
    if state in ("Z", "X"):
        return False
    return pid_start is None or start == pid_start


def _dead_here(pid: int, identity: str | None) -> bool:
    """Whether a worker registered with ``pid`` and ``identity`` (``pid_start``) is known
    dead from this process: only when it shares this PID namespace.  A worker of another
    namespace, or one registered before namespaces were recorded, is left to the reaper,
    which takes its jobs back once their lease expires."""
    start, at, namespace = (identity or "").rpartition("@")
    if at:
        if namespace != PID_NAMESPACE:
            return False
        return not process_alive(pid, start or None)
    if PID_NAMESPACE:
        return False  # registered without a namespace: unknown
    return not process_alive(pid, identity or None)


def runner_problem(workflow: str, queue: str, runners: dict[str, tuple[set, set]]) -> str | None:
    """Why none of ``runners`` (:meth:`WorkerQueries.live_worker_capabilities`) will run a
    job of ``workflow`` in ``queue``, or None when one will."""
    if not runners:
        return "no live worker is running (app.workers() is empty)"
    serving = [names for served, names in runners.values() if queue in served]
    if not serving:
        return f"no live worker serves queue {queue!r}"
    if not any(workflow in names for names in serving):
        return (
            f"{len(serving)} live worker(s) serve queue {queue!r}, but none has "
            f"registered workflow {workflow!r}"
        )
    return None


class WorkerQueries(FanoutQueries):
    """What workers share through the database: who is alive, and which jobs are lost."""

    def register_worker(
        self,
        *,
        worker_id: str,
        queues_: Sequence[str],
        concurrency: int,
        workflows: Sequence[str] = (),
    ) -> None:
        now = self.now()
        pid = os.getpid()
        with self._write() as conn:
            conn.execute(
                insert(workers).values(
                    id=worker_id,
                    host=socket.gethostname(),
                    pid=pid,
                    pid_start=process_identity(pid),
                    queues=",".join(queues_),
                    concurrency=concurrency,
                    jobs_held=0,
                    started_at=now,
                    heartbeat_at=now,
                )
            )
            self._insert_worker_workflows(conn, worker_id, workflows)

    def _insert_worker_workflows(
        self, conn: Connection, worker_id: str, names: Sequence[str]
    ) -> None:
        if names:
            conn.execute(
                insert(worker_workflows), [dict(worker_id=worker_id, workflow=n) for n in names]
            )

    def add_worker_workflows(
        self, *, worker_id: str, workflows: Sequence[str], queues_: Sequence[str]
    ) -> None:
        """Workflows registered after the worker started (a later notebook cell), and
        the worker's queues now."""
        with self._write() as conn:
            known = set(
                conn.execute(
                    select(worker_workflows.c.workflow).where(
                        worker_workflows.c.worker_id == worker_id
                    )
                ).scalars()
            )
            self._insert_worker_workflows(conn, worker_id, [n for n in workflows if n not in known])
            conn.execute(
                update(workers).where(workers.c.id == worker_id).values(queues=",".join(queues_))
            )

    def live_worker_capabilities(self, *, alive_within: float) -> dict[str, tuple[set, set]]:
        """What each live worker runs: worker id -> (its queues, its workflow names)."""
        stmt = (
            select(workers.c.id, workers.c.queues, worker_workflows.c.workflow)
            .select_from(
                workers.outerjoin(worker_workflows, worker_workflows.c.worker_id == workers.c.id)
            )
            .where(
                workers.c.stopped_at.is_(None), workers.c.heartbeat_at >= self.now() - alive_within
            )
        )
        out: dict[str, tuple[set, set]] = {}
        with self._read() as conn:
            for r in conn.execute(stmt):
                _queues, names = out.setdefault(
                    r.id, (set(r.queues.split(",")) if r.queues else set(), set())
                )
                if r.workflow is not None:
                    names.add(r.workflow)
        return out

    def queued_workflow_counts(self, queue_names: Sequence[str]) -> dict[str, int]:
        """Queued jobs per workflow in these queues (a worker's start-up check)."""
        with self._read() as conn:
            rows = conn.execute(
                select(jobs.c.workflow, func.count())
                .where(jobs.c.status == QUEUED_SQL, jobs.c.queue.in_(list(queue_names)))
                .group_by(jobs.c.workflow)
            ).all()
        return {workflow: count for workflow, count in rows}

    def stop_worker(self, worker_id: str) -> None:
        with self._write() as conn:
            conn.execute(
                update(workers)
                .where(workers.c.id == worker_id)
                .values(stopped_at=self.now(), jobs_held=0)
            )
            conn.execute(delete(worker_workflows).where(worker_workflows.c.worker_id == worker_id))

    def heartbeat(
        self, *, worker_id: str, held: dict[str, str], lease_seconds: float
    ) -> tuple[set[str], set[str]]:
        """Extend the leases this worker still holds.

        ``held`` maps job id to lease token.  Returns (lost, cancel_requested): the jobs
        whose lease another worker took, and the jobs someone asked to cancel.

        The beat is a piece of this process's next group commit, in one transaction
        with the finishes of the jobs it renews.  As a transaction of its own it skipped
        the rows a group held (``SKIP LOCKED``) and so never waited for one, yet MariaDB
        reported deadlocks between the two: its report showed the beat's locking read
        waiting for a row the group held, while the group waited for one the beat held.
        """
        now = self.now()

        def beat(conn: Connection) -> Sequence[Row]:
            conn.execute(
                update(workers)
                .where(workers.c.id == worker_id)
                .values(heartbeat_at=now, jobs_held=len(held))
            )
            if not held:
                return []
            mine = (jobs.c.worker_id == worker_id, jobs.c.status == Status.RUNNING.value)
            renew: list[str] = list(held)
            if self.dialect.skip_locked:
                # Rows another transaction holds are left for the next beat: most often
                # a fan-out healer or a cancel.  A beat never waits for them.
                chosen = jobs_by_key(select(jobs.c.id).where(jobs.c.id.in_(renew), *mine))
                renew = list(conn.execute(self.dialect.lock(chosen, skip_locked=True)).scalars())
            if renew:
                conn.execute(
                    jobs_by_key(update(jobs))
                    .where(jobs.c.id.in_(renew), *mine)
                    .values(lease_expires_at=now + lease_seconds)
                )
            return conn.execute(
                select(jobs.c.id, jobs.c.lease_token, jobs.c.cancel_requested, jobs.c.status).where(
                    jobs.c.id.in_(list(held))
                )
            ).all()

        rows = self._grouped(beat)
        owned = {r.id for r in rows if r.lease_token == held[r.id]}
        cancel = {r.id for r in rows if r.cancel_requested and r.id in owned}
        # A job that finished since the caller looked is not lost, just done.
        finished = {r.id for r in rows if r.status in FINISHED}
        return set(held) - owned - finished, cancel

    def _requeue_lost(
        self, conn: Connection, rows: Sequence[Row], reason: str, max_reclaims: int
    ) -> int:
        """Put jobs of a dead or silent worker back in the queue (or fail poison ones).

        ``reclaims`` counts the lost attempts since the job last made progress: an attempt
        that committed a new checkpoint before its worker died is not held against it
        (it did not crash at once, and a neighbour in the same process may have), while
        a job that keeps dying before its next step is failed after ``max_reclaims``.
        """
        now = self.now()
        count = 0
        for r in rows:
            progressed = (
                conn.execute(
                    select(checkpoints.c.name)
                    .where(checkpoints.c.job_id == r.id, checkpoints.c.attempt == r.attempts)
                    .limit(1)
                ).first()
                is not None
            )
            reclaims = 0 if progressed else r.reclaims + 1
            give_up = reclaims > max_reclaims
            error = (
                f"{WORKER_LOST_PREFIX}{reclaims} times ({reason}); the job may crash its worker "
                f"- giving up after {max_reclaims} reclaims"
                if give_up
                else f"{WORKER_LOST_PREFIX}({reason}); the job was put back in the queue"
            )
            values: dict[str, Any] = dict(
                lease_token=None,
                lease_expires_at=None,
                reclaims=reclaims,
                updated_at=now,
            )
            if give_up:
                values.update(status=Status.FAILED.value, error=error, finished_at=now)
            elif r.cancel_requested:  # cancelled while its worker was gone: do not rerun
                values.update(status=Status.CANCELLED.value, error="cancelled", finished_at=now)
            else:
                values.update(status=Status.QUEUED.value, run_at=now)
            done = conn.execute(
                update(jobs)
                .where(jobs.c.id == r.id, jobs.c.lease_token == r.lease_token)
                .values(**values)
            )
            if done.rowcount:
                count += 1
                # One line per job in the reclaiming worker's log (its operator's view).
                log.log(
                    logging.ERROR if give_up else logging.WARNING,
                    "job %s (%s): %s",
                    r.id,
                    r.workflow,
                    error,
                )
                self._finish_attempt(conn, r.id, r.attempts, "lost", error)
                if give_up or r.cancel_requested:
                    self._after_terminal(conn, r.id)
        return count

    def reap_expired(self, *, max_reclaims: int, limit: int = 200) -> int:
        """Requeue running jobs whose lease expired (their worker stopped heartbeating)."""
        now = self.now()
        with self._write() as conn:
            rows = conn.execute(
                self.dialect.lock(
                    select(*_LOST_COLUMNS)
                    .where(jobs.c.status == RUNNING_SQL, jobs.c.lease_expires_at < now)
                    .limit(limit),
                    skip_locked=True,  # a row someone holds is being finished or renewed
                )
            ).all()
            return self._requeue_lost(conn, rows, "heartbeat stopped", max_reclaims)

    def expire_jobs(self, limit: int = 500) -> int:
        """Cancel, with the reason ``expired``, the queued jobs whose ``expires_at``
        passed before they started; returns how many.  Idempotent: every worker's
        monitor calls it, and the claim never takes an expired job meanwhile."""
        now = self.now()
        with self._write() as conn:
            rows = conn.execute(
                self.dialect.lock(
                    select(jobs.c.id, jobs.c.parent_id)
                    .where(jobs.c.expires_at <= now, jobs.c.status == QUEUED_SQL)
                    .limit(limit),
                    skip_locked=True,
                )
            ).all()
            if not rows:
                return 0
            conn.execute(
                jobs_by_key(update(jobs))
                .where(jobs.c.id.in_([r.id for r in rows]), jobs.c.status == QUEUED_SQL)
                .values(
                    status=Status.CANCELLED.value,
                    cancel_requested=True,
                    finished_at=now,
                    updated_at=now,
                    error=EXPIRED,
                )
            )
            for row in rows:
                self._after_terminal(conn, row.id, row.parent_id)
        log.info("cancelled %d queued job(s) that expired before they started", len(rows))
        return len(rows)

    def reclaim_dead_local_workers(self, *, max_reclaims: int) -> int:
        """Requeue jobs of workers on this host whose process is gone, without waiting.

        "On this host" means the same hostname *and* the same PID namespace of the same
        boot (see ``_pid_namespace``); a worker whose pid means nothing here is left to
        the reaper and its lease.
        """
        host = socket.gethostname()
        with self._read() as conn:
            candidates = conn.execute(
                select(workers.c.id, workers.c.pid, workers.c.pid_start).where(
                    workers.c.host == host, workers.c.stopped_at.is_(None)
                )
            ).all()
        dead = [w.id for w in candidates if _dead_here(w.pid, w.pid_start)]
        if not dead:
            return 0
        with self._write() as conn:
            rows = conn.execute(
                self.dialect.lock(
                    select(*_LOST_COLUMNS).where(
                        jobs.c.status == RUNNING_SQL, jobs.c.worker_id.in_(dead)
                    ),
                    skip_locked=True,
                )
            ).all()
            count = self._requeue_lost(conn, rows, "its process died", max_reclaims)
            conn.execute(
                update(workers).where(workers.c.id.in_(dead)).values(stopped_at=self.now())
            )
            conn.execute(delete(worker_workflows).where(worker_workflows.c.worker_id.in_(dead)))
        if count:
            log.warning("reclaimed %d job(s) of dead worker process(es) %s", count, dead)
        return count

    def wake_due_jobs(self) -> int:
        """Move waiting jobs whose timer is due back to the queue."""
        now = self.now()
        due = (jobs.c.status == WAITING_SQL, jobs.c.run_at <= now)
        with self._read() as conn:  # a cheap indexed look first: no write lock when idle
            if conn.execute(select(jobs.c.id).where(*due).limit(1)).first() is None:
                return 0
        with self._write() as conn:
            result = conn.execute(
                update(jobs).where(*due).values(status=Status.QUEUED.value, updated_at=now)
            )
            return result.rowcount

    def next_due_at(self, queue_names: Sequence[str]) -> float | None:
        """When the next delayed or sleeping job becomes ready (for an exact idle wait)."""
        with self._read() as conn:
            # Only jobs not yet due (the due index): one that is due but not claimed (an
            # unknown workflow, a paused queue) must not make the dispatcher spin.
            queued = conn.execute(
                select(func.min(jobs.c.run_at)).where(
                    jobs.c.status == QUEUED_SQL,
                    jobs.c.queue.in_(list(queue_names)),
                    jobs.c.run_at > jobs.c.updated_at,
                    jobs.c.run_at > self.now(),
                )
            ).scalar()
            waiting = conn.execute(
                select(func.min(jobs.c.run_at)).where(jobs.c.status == WAITING_SQL)
            ).scalar()
        due = [t for t in (queued, waiting) if t is not None]
        return min(due) if due else None

    def paused_queues(self) -> set[str]:
        with self._read() as conn:
            return set(conn.execute(select(queues.c.name).where(queues.c.paused)).scalars())

    def set_queue_paused(self, name: str, paused: bool) -> None:
        now = self.now()
        with self._write() as conn:
            done = conn.execute(
                update(queues).where(queues.c.name == name).values(paused=paused, updated_at=now)
            )
            if not done.rowcount:
                conn.execute(insert(queues).values(name=name, paused=paused, updated_at=now))
            if not paused:
                self._made_ready(conn, name)

    def list_workers(self, *, alive_within: float | None = None) -> Sequence[Row]:
        stmt = select(workers).order_by(workers.c.started_at)
        if alive_within is not None:
            stmt = stmt.where(
                workers.c.stopped_at.is_(None), workers.c.heartbeat_at >= self.now() - alive_within
            )
        with self._read() as conn:
            return conn.execute(stmt).all()
