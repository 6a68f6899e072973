"""Timers and signals: the SQL of jobs that wait without holding a slot.

A waiting job is parked in the same transaction that records what it waits for (a
checkpoint row of kind ``sleep``, ``signal`` or ``fanout`` with ``done`` false): its
status becomes ``waiting``, its lease is cleared and its attempt ends as ``suspended``.
It comes back to the queue when its timer is due (``run_at``, see ``wake_due_jobs``) or
when the signal it waits for is sent.  Fan-out and fan-in, which park the same way, are
in :mod:`.fanout`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from ..errors import UnknownJob
from ..jobs import Status
from ..schema import checkpoints, jobs, new_id, signals
from .core import CoreStore

# What a durable wait came to (``WaitResult.state``).
DONE = "done"  # finished now: ``value`` holds the stored text
TIMEOUT = "timeout"  # a signal wait reached its deadline
SUSPENDED = "suspended"  # the job is parked as waiting; the caller raises _Suspend
LOST = "lost"  # the lease belongs to someone else: nothing was written
CANCELLED = "cancelled"  # cancellation was requested: nothing was written


@dataclass(frozen=True)
class WaitResult:
    state: str
    value: str | None = None


class WaitQueries(CoreStore):
    """Timers and signals, and the pieces every durable wait shares."""

    # -- shared pieces -----------------------------------------------------------------
    def _own(self, conn: Connection, job_id: str, token: str) -> str | None:
        """Lock the job row; LOST or CANCELLED when this run may not go on, else None."""
        row = conn.execute(
            self.dialect.lock(
                select(jobs.c.lease_token, jobs.c.cancel_requested).where(jobs.c.id == job_id)
            )
        ).first()
        if row is None or row.lease_token != token:
            return LOST
        return CANCELLED if row.cancel_requested else None

    def _put_checkpoint(
        self,
        conn: Connection,
        *,
        job_id: str,
        name: str,
        seq: int,
        kind: str,
        attempt: int,
        done: bool,
        exists_: bool,
        value: str | None = None,
        detail: dict[str, Any] | None = None,
        code_fingerprint: str | None = None,
    ) -> None:
        """Insert or update a wait's checkpoint; a finished one counts as a step."""
        now = self.now()
        values: dict[str, Any] = dict(
            done=done,
            value=value,
            detail=None if detail is None else json.dumps(detail),
            finished_at=now if done else None,
        )
        if exists_:
            conn.execute(
                update(checkpoints)
                .where(checkpoints.c.job_id == job_id, checkpoints.c.name == name)
                .values(**values)
            )
        else:
            conn.execute(
                insert(checkpoints).values(
                    job_id=job_id,
                    name=name,
                    seq=seq,
                    kind=kind,
                    attempt=attempt,
                    code_fingerprint=code_fingerprint,
                    started_at=now,
                    **values,
                )
            )
        if done:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(steps_done=jobs.c.steps_done + 1, updated_at=now)
            )

    def _park(
        self, conn: Connection, job_id: str, attempt: int, run_at: float | None, waiting_for: str
    ) -> None:
        """Make the (locked, owned) job ``waiting``: no lease, no slot, its attempt ended."""
        now = self.now()
        # The attempt row is written from the job row (worker, claim time): first.
        self._finish_attempt(conn, job_id, attempt, "suspended")
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(
                status=Status.WAITING.value,
                run_at=run_at,
                waiting_for=waiting_for[:255],
                lease_token=None,
                lease_expires_at=None,
                progress=None,
                updated_at=now,
            )
        )

    # -- timers ------------------------------------------------------------------------
    def begin_sleep(
        self,
        *,
        job_id: str,
        token: str,
        attempt: int,
        name: str,
        seq: int,
        wake_at: float,
        exists_: bool,
        code_fingerprint: str | None = None,
    ) -> WaitResult:
        """Finish the timer if it is due, else record it and park the job until ``wake_at``."""

        def work(conn: Connection) -> Any:
            refused = self._own(conn, job_id, token)
            if refused:
                return WaitResult(refused)
            due = self.now() >= wake_at
            self._put_checkpoint(
                conn,
                job_id=job_id,
                name=name,
                seq=seq,
                kind="sleep",
                attempt=attempt,
                done=due,
                exists_=exists_,
                detail={"wake_at": wake_at},
                code_fingerprint=code_fingerprint,
            )
            if due:
                return WaitResult(DONE)
            self._park(conn, job_id, attempt, wake_at, f"sleep:{name}")
            return WaitResult(SUSPENDED)

        return self._retry_conflicts(work)

    # -- signals -----------------------------------------------------------------------
    def send_signal(self, job_id: str, name: str, payload: str) -> None:
        """Buffer a signal (FIFO per job and name); wake the job if it waits for it."""
        now = self.now()

        def work(conn: Connection) -> Any:
            row = conn.execute(
                self.dialect.lock(
                    select(jobs.c.status, jobs.c.waiting_for, jobs.c.queue).where(
                        jobs.c.id == job_id
                    )
                )
            ).first()
            if row is None:
                raise UnknownJob(f"no job with id {job_id!r}")
            conn.execute(
                insert(signals).values(
                    id=new_id(), job_id=job_id, name=name, payload=payload, sent_at=now
                )
            )
            if row.status == Status.WAITING.value and row.waiting_for == f"signal:{name}"[:255]:
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id)
                    .values(
                        status=Status.QUEUED.value, run_at=now, waiting_for=None, updated_at=now
                    )
                )
                self._made_ready(conn, row.queue)

        return self._retry_conflicts(work)

    def take_signal(
        self,
        *,
        job_id: str,
        token: str,
        attempt: int,
        checkpoint: str,
        name: str,
        seq: int,
        deadline: float | None,
        exists_: bool,
        code_fingerprint: str | None = None,
    ) -> WaitResult:
        """Consume the oldest unconsumed signal ``name`` with its checkpoint, in one
        transaction; else time out at ``deadline``, else park the job until either."""
        now = self.now()

        def work(conn: Connection) -> Any:
            refused = self._own(conn, job_id, token)
            if refused:
                return WaitResult(refused)
            signal = conn.execute(
                select(signals.c.id, signals.c.payload)
                .where(
                    signals.c.job_id == job_id,
                    signals.c.name == name,
                    signals.c.consumed_at.is_(None),
                )
                .order_by(signals.c.id)
                .limit(1)
            ).first()
            put = functools.partial(
                self._put_checkpoint,
                conn,
                job_id=job_id,
                name=checkpoint,
                seq=seq,
                kind="signal",
                attempt=attempt,
                exists_=exists_,
                code_fingerprint=code_fingerprint,
            )
            if signal is not None:
                conn.execute(
                    update(signals)
                    .where(signals.c.id == signal.id)
                    .values(consumed_at=now, consumed_by=checkpoint)
                )
                put(
                    done=True,
                    value=signal.payload,
                    detail={"deadline": deadline, "signal": signal.id},
                )
                return WaitResult(DONE, signal.payload)
            if deadline is not None and now >= deadline:
                detail = {"deadline": deadline, "timed_out": True}
                put(done=True, detail=detail)
                return WaitResult(TIMEOUT)
            put(done=False, detail={"deadline": deadline})
            self._park(conn, job_id, attempt, deadline, f"signal:{name}")
            return WaitResult(SUSPENDED)

        return self._retry_conflicts(work)
