"""Submitting, claiming, running and finishing jobs, and the user's cancel and retry.

Every write a worker makes for a job it runs is *fenced* by the job's lease token (see
:meth:`CoreStore._fence`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, case, delete, exists, func, insert, select, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import Executable

from ..dialects.base import Prepared
from ..errors import ConfigurationError, UnknownJob
from ..schema import (
    TERMINAL,
    Status,
    checkpoints,
    jobs,
    new_id,
    new_token,
)
from .core import _FENCED, _FINISH_ATTEMPT, UNKNOWN, CoreStore, storable_text


@dataclass
class ClaimedJob:
    """A job a worker now owns, with the lease token that fences its writes."""

    id: str
    workflow: str
    queue: str
    input: str | None
    attempt: int
    max_retries: int
    failures: int
    timeout_seconds: float | None
    steps_done: int
    lease_token: str
    root_id: str | None
    parent_id: str | None
    reclaims: int


@dataclass
class _Success:
    """A finish that a group may record together with others (see ``_run_group``)."""

    job_id: str
    token: str
    attempt: int
    result: str | None
    claim: dict[str, Any] | None


def _claimed(row: Row) -> ClaimedJob:
    return ClaimedJob(
        id=row.id,
        workflow=row.workflow,
        queue=row.queue,
        input=row.input,
        attempt=row.attempts,
        max_retries=row.max_retries,
        failures=row.failures,
        timeout_seconds=row.timeout_seconds,
        steps_done=row.steps_done,
        lease_token=row.lease_token,
        root_id=row.root_id,
        parent_id=row.parent_id,
        reclaims=row.reclaims,
    )


# Hot-path statements, built once with bind parameters (building a statement costs more
# than running it on SQLite).
_CLAIM_VALUES = dict(
    status=Status.RUNNING.value,
    lease_token=bindparam("c_token", None),
    lease_expires_at=bindparam("c_expires", None),
    worker_id=bindparam("c_worker", None),
    started_at=func.coalesce(jobs.c.started_at, bindparam("c_now", None)),
    claimed_at=bindparam("c_now", None),
    waiting_for=None,
    updated_at=bindparam("c_now", None),
)
_INSERT_JOB = insert(jobs)
_INSERT_CHECKPOINT = insert(checkpoints)
#: The job row's side of steps: its count of steps and ``updated_at``, which the
#: dashboard's change feed follows.
_FENCE_STEP = (
    update(jobs)
    .where(*_FENCED)
    .values(updated_at=bindparam("f_now"), steps_done=jobs.c.steps_done + bindparam("f_steps"))
)
#: A checkpoint row fenced by reading the lease with a share lock, leaving the job row
#: alone (where ``Dialect.read_fence``).
_READ_FENCED_CHECKPOINT = insert(checkpoints).from_select(
    [c.name for c in checkpoints.c],
    select(*(bindparam(c.name, type_=c.type) for c in checkpoints.c)).where(
        exists(select(jobs.c.id).where(*_FENCED).with_for_update(read=True))
    ),
)
_FINISH = (
    update(jobs)
    .where(*_FENCED)
    .values(
        status=bindparam("f_status"),
        result=bindparam("f_result"),
        error=bindparam("f_error"),
        traceback=bindparam("f_traceback"),
        finished_at=bindparam("f_now"),
        updated_at=bindparam("f_now"),
        lease_token=None,
        lease_expires_at=None,
        failures=jobs.c.failures + bindparam("f_failed"),
    )
)
_LOST_COLUMNS = (
    jobs.c.id,
    jobs.c.lease_token,
    jobs.c.attempts,
    jobs.c.reclaims,
    jobs.c.cancel_requested,
)


def fresh_job_counters(now: float) -> dict[str, Any]:
    """The columns every new job row starts with (submits and fan-out children)."""
    return dict(
        attempts=0,
        failures=0,
        reclaims=0,
        steps_done=0,
        cancel_requested=False,
        created_at=now,
        updated_at=now,
    )


class JobQueries(CoreStore):
    """The life of a job: enqueue, claim, checkpoint, finish, cancel and retry."""

    @functools.cached_property
    def _fenced_checkpoint(self) -> Any:
        """The step's fence and its checkpoint row as one statement, where possible."""
        return self.dialect.fenced_insert(_FENCE_STEP, checkpoints, checkpoints.c.job_id)

    @functools.cached_property
    def _finish_many(self) -> Any:
        """Several successes as one statement, where possible (see ``_run_group``)."""
        return self.dialect.finish_many_statement()

    def enqueue_job(
        self,
        *,
        workflow: str,
        input: str,
        queue: str = "default",
        priority: int = 0,
        run_at: float | None = None,
        key: str | None = None,
        max_retries: int = 0,
        timeout_seconds: float | None = None,
        steps_expected: int | None = None,
        code_fingerprint: str | None = None,
        parent_id: str | None = None,
        root_id: str | None = None,
        fanout: str | None = None,
        fanout_index: int | None = None,
        schedule: str | None = None,
        tick_at: float | None = None,
    ) -> tuple[str, bool]:
        """Insert a queued job; returns (id, created).  A known ``key`` returns its job."""
        now = self.now()
        job_id = new_id()
        values = dict(
            id=job_id,
            workflow=workflow,
            queue=queue,
            status=Status.QUEUED.value,
            priority=priority,
            run_at=now if run_at is None else run_at,
            key=key,
            input=input,
            max_retries=max_retries,
            timeout_seconds=timeout_seconds,
            steps_expected=steps_expected,
            code_fingerprint=code_fingerprint,
            parent_id=parent_id,
            root_id=root_id or job_id,
            fanout=fanout,
            fanout_index=fanout_index,
            schedule=schedule,
            tick_at=tick_at,
            **fresh_job_counters(now),
        )
        try:
            self._write_one(_INSERT_JOB, values)
            return job_id, True
        except IntegrityError:
            if key is None:
                raise
            with self._read() as conn:
                existing = conn.execute(select(jobs.c.id).where(jobs.c.key == key)).scalar()
            if existing is None:
                raise
            return existing, False

    def enqueue_running(
        self, *, worker_id: str, lease_seconds: float, **fields: Any
    ) -> tuple[ClaimedJob | None, str]:
        """Insert a job already claimed by the caller (``wf.run``); returns (claim, id).

        With a known idempotency key, the existing job is returned unclaimed (None).
        """
        job_id, created = self.enqueue_job(**fields)
        if not created:
            return None, job_id
        return self.claim_job(job_id, worker_id=worker_id, lease_seconds=lease_seconds), job_id

    def _claim_plan(self, queue: str | None, workflows: tuple[str, ...], limit: int) -> Any:
        """The claim statement for one shape, built once (``queue`` None: one job by id)."""
        key = (queue, workflows, limit)
        plan = self._claim_plans.get(key)
        if plan is None:
            if queue is None:
                candidates = select(jobs.c.id).where(
                    jobs.c.id == bindparam("c_job", None), jobs.c.status == Status.QUEUED.value
                )
            else:
                candidates = self.dialect.claim_candidates(
                    queue, list(workflows), bindparam("c_now", None), limit
                )
            plan = self.dialect.claim_statement(candidates, _CLAIM_VALUES)
            if isinstance(plan, Executable):
                plan = Prepared(plan, self.engine.dialect)
            if len(self._claim_plans) > 256:
                self._claim_plans.clear()
            self._claim_plans[key] = plan
        return plan

    def _claim(
        self,
        conn: Connection,
        plan: Any,
        worker_id: str,
        lease_seconds: float,
        **params: Any,
    ) -> list[ClaimedJob]:
        """Run a claim plan and record an attempt row per claimed job, in ``conn``'s txn."""
        now = self.now()
        rows = self.dialect.claim(
            conn,
            plan,
            dict(
                params,
                c_now=now,
                c_token=new_token(),
                c_expires=now + lease_seconds,
                c_worker=worker_id,
            ),
        )
        if not rows:
            return []
        rows.sort(key=lambda r: (-r.priority, r.run_at or 0.0, r.id))
        claimed = [_claimed(r) for r in rows]
        return claimed

    def claim_jobs(
        self,
        *,
        worker_id: str,
        queue: str,
        workflows: Sequence[str],
        limit: int,
        lease_seconds: float,
    ) -> list[ClaimedJob]:
        """Claim up to ``limit`` ready jobs of ``queue`` whose workflow this worker knows."""
        if limit <= 0 or not workflows:
            return []
        limit = min(limit, self.dialect.claim_batch)
        plan = self._claim_plan(queue, tuple(workflows), limit)
        if self.dialect.autocommit_single:  # the claim is one statement there
            return self._single_statement(
                lambda conn: self._claim(conn, plan, worker_id, lease_seconds)
            )
        with self._write(hot=True) as conn:
            return self._claim(conn, plan, worker_id, lease_seconds)

    def claim_job(self, job_id: str, *, worker_id: str, lease_seconds: float) -> ClaimedJob | None:
        """Claim one given job if it is queued (``wf.run`` and its inline retries)."""
        with self._write() as conn:
            claimed = self._claim(
                conn, self._claim_plan(None, (), 1), worker_id, lease_seconds, c_job=job_id
            )
        return claimed[0] if claimed else None

    def load_checkpoints(self, job_id: str) -> dict[str, Row]:
        with self._read() as conn:
            rows = conn.execute(
                select(checkpoints)
                .where(checkpoints.c.job_id == job_id)
                .order_by(checkpoints.c.seq)
            )
            return {r.name: r for r in rows}

    def record_checkpoint(
        self,
        *,
        job_id: str,
        token: str,
        name: str,
        seq: int,
        value: str,
        args_hash: str | None,
        code_fingerprint: str | None,
        attempt: int,
        started_at: float,
        count: int | None = 1,
        kind: str = "step",
    ) -> bool:
        """Persist a finished step; False (nothing written) when the lease was lost.

        ``count`` is added to the job's count of steps (this one and any left out
        before).  With None, where ``defers_touches``, the job row is left as it is and
        the step costs one row instead of two; the caller adds the step later with
        :meth:`count_steps` (the change feed and progress bars lag until then).
        Elsewhere None counts the step now.
        """
        now = self.now()
        fence = dict(f_id=job_id, f_token=token, f_now=now, f_steps=1 if count is None else count)
        row = dict(
            job_id=job_id,
            name=name,
            seq=seq,
            kind=kind,
            done=True,
            value=value,
            detail=None,
            args_hash=args_hash,
            code_fingerprint=code_fingerprint,
            attempt=attempt,
            started_at=started_at,
            finished_at=now,
        )
        if count is None and self.defers_touches:
            return self._write_one(_READ_FENCED_CHECKPOINT, {**fence, **row}) == 1
        if self._fenced_checkpoint is not None:
            return self._write_one(self._fenced_checkpoint, {**fence, **row}) == 1
        with self._write(hot=True) as conn:
            if self._run(conn, _FENCE_STEP, fence).rowcount != 1:
                return False
            self._run(conn, _INSERT_CHECKPOINT, row)
        return True

    @property
    def defers_touches(self) -> bool:
        """A step may leave the job row alone (``record_checkpoint(count=None)``)."""
        return self.dialect.read_fence

    def count_steps(self, job_id: str, token: str, added: int) -> bool:
        """Add steps to a running job's count (and stamp ``updated_at``); False when the
        lease was lost."""
        fence = dict(f_id=job_id, f_token=token, f_now=self.now(), f_steps=added)
        return self._write_one(_FENCE_STEP, fence) == 1

    def set_progress(
        self, job_id: str, token: str, progress: float | None, message: str | None
    ) -> bool:
        message = storable_text(message or None)
        message = message and message[:500]
        with self._write() as conn:
            return self._fence(conn, job_id, token, progress=progress, message=message)

    def finish_job(
        self,
        *,
        job_id: str,
        token: str,
        attempt: int,
        status: Status,
        result: str | None = None,
        error: str | None = None,
        traceback: str | None = None,
        outcome: str | None = None,
    ) -> bool:
        """Record a terminal status; False when the lease was lost (nothing written)."""
        accepted, _ = self.finish_and_claim(
            job_id=job_id,
            token=token,
            attempt=attempt,
            status=status,
            result=result,
            error=error,
            traceback=traceback,
            outcome=outcome,
        )
        return accepted

    def finish_and_claim(
        self,
        *,
        job_id: str,
        token: str,
        attempt: int,
        status: Status,
        result: str | None = None,
        error: str | None = None,
        traceback: str | None = None,
        outcome: str | None = None,
        claim: dict[str, Any] | None = None,
        parent_id: str | object | None = UNKNOWN,
    ) -> tuple[bool, list[ClaimedJob]]:
        """Record a terminal status and, in the same transaction, claim the next jobs.

        ``claim`` (worker_id, queue, workflows, lease_seconds, and optionally ``limit``,
        default 1) lets a worker thread that just finished a job take the next ones with
        one commit instead of two.  Returns (accepted, the jobs claimed); nothing is
        written or claimed when the lease was lost.
        """
        simple = status == Status.SUCCEEDED and parent_id is None and outcome is None
        error, traceback = storable_text(error), storable_text(traceback)
        return self._grouped(
            lambda conn: self._finish_and_claim(
                conn, job_id, token, attempt, status, result, error, traceback, outcome,
                claim, parent_id,
            ),
            _Success(job_id, token, attempt, result, claim) if simple else None,
            (job_id, attempt, outcome or status.value),
        )  # fmt: skip

    def finish_later(
        self,
        *,
        job_id: str,
        token: str,
        attempt: int,
        result: str | None,
        done: Any,
    ) -> None:
        """Record a top-level job's success with the next group commit, without waiting.

        A worker running short jobs back to back uses this so that many successes share
        one commit.  ``done(accepted)`` is called once the success is committed (False:
        the lease was lost, nothing written) or ``done(error)`` once it has failed.
        """

        def work(conn: Connection) -> tuple[bool, list[ClaimedJob]]:
            return self._finish_and_claim(
                conn, job_id, token, attempt, Status.SUCCEEDED, result, None, None, None,
                None, None,
            )  # fmt: skip

        self._grouped_later(
            work,
            _Success(job_id, token, attempt, result, None),
            lambda piece: done(piece.error if piece.error is not None else piece.result[0]),
            (job_id, attempt, Status.SUCCEEDED.value),
        )

    def _run_group(self, conn: Connection, batch: list) -> None:
        """Record the group's plain successes together and claim the next jobs they asked
        for with one claim per queue; the other pieces run one by one."""
        successes = [r for r in batch if r.item is not None]
        if len(successes) < 2:  # alone, the two plain statements cost less
            return super()._run_group(conn, batch)
        accepted = self._record_successes(conn, [r.item for r in successes])
        wanting: dict[tuple, list] = {}
        for request in successes:
            item = request.item
            request.result = (item.job_id in accepted, [])
            if item.job_id in accepted and item.claim is not None:
                claim = item.claim
                key = (claim["worker_id"], claim["queue"], tuple(claim["workflows"]))
                wanting.setdefault(key, []).append(request)
        for (worker_id, queue, workflows), requests in wanting.items():
            limits = [r.item.claim.get("limit", 1) for r in requests]
            plan = self._claim_plan(queue, workflows, min(sum(limits), self.dialect.claim_batch))
            lease = requests[0].item.claim["lease_seconds"]
            claimed = self._claim(conn, plan, worker_id, lease)
            for request, limit in zip(requests, limits, strict=True):  # claimed may be fewer
                request.result = (True, claimed[:limit])
                claimed = claimed[limit:]
        super()._run_group(conn, [r for r in batch if r.item is None])

    def _record_successes(self, conn: Connection, items: list[_Success]) -> set[str]:
        """Mark several jobs succeeded, fenced by their lease tokens, and write their
        attempt rows; returns the ids accepted.  One statement where the database allows
        (PostgreSQL), else one batched statement for the jobs and one for the attempts."""
        now = self.now()
        if self._finish_many is not None:
            batch = dict(
                b_ids=[i.job_id for i in items],
                b_tokens=[i.token for i in items],
                b_results=[i.result for i in items],
                b_attempts=[i.attempt for i in items],
                b_now=now,
            )
            return {row.job_id for row in self._run(conn, self._finish_many, batch).all()}
        finished = self._run(
            conn,
            _FINISH,
            [
                dict(
                    f_id=i.job_id,
                    f_token=i.token,
                    f_now=now,
                    f_status=Status.SUCCEEDED.value,
                    f_result=i.result,
                    f_error=None,
                    f_traceback=None,
                    f_failed=0,
                )
                for i in items
            ],
        )
        if finished.rowcount != len(items):
            # Some leases were lost: the accepted jobs are the ones this batch finished.
            ids = [i.job_id for i in items]
            done = select(jobs.c.id).where(
                jobs.c.id.in_(ids), jobs.c.finished_at == now, jobs.c.lease_token.is_(None)
            )
            kept = set(conn.execute(done).scalars())
            items = [i for i in items if i.job_id in kept]
            if not items:
                return set()
        self._run(
            conn,
            _FINISH_ATTEMPT,
            [
                dict(
                    a_job=i.job_id,
                    a_attempt=i.attempt,
                    a_outcome=Status.SUCCEEDED.value,
                    a_now=now,
                    a_error=None,
                    a_traceback=None,
                )
                for i in items
            ],
        )
        return {i.job_id for i in items}

    def _finish_and_claim(
        self,
        conn: Connection,
        job_id: str,
        token: str,
        attempt: int,
        status: Status,
        result: str | None,
        error: str | None,
        traceback: str | None,
        outcome: str | None,
        claim: dict[str, Any] | None,
        parent_id: str | object | None,
    ) -> tuple[bool, list[ClaimedJob]]:
        now = self.now()
        fenced = self._run(
            conn,
            _FINISH,
            dict(
                f_id=job_id,
                f_token=token,
                f_now=now,
                f_status=status.value,
                f_result=result,
                f_error=error,
                f_traceback=traceback,
                f_failed=1 if status == Status.FAILED else 0,
            ),
        )
        if fenced.rowcount != 1:
            return False, []
        self._finish_attempt(conn, job_id, attempt, outcome or status.value, error, traceback)
        self._after_terminal(conn, job_id, parent_id)
        if claim is None:
            return True, []
        limit = min(claim.get("limit", 1), self.dialect.claim_batch)
        plan = self._claim_plan(claim["queue"], tuple(claim["workflows"]), limit)
        return True, self._claim(conn, plan, claim["worker_id"], claim["lease_seconds"])

    def retry_job_later(
        self,
        *,
        job_id: str,
        token: str,
        attempt: int,
        run_at: float,
        error: str,
        traceback: str | None,
        outcome: str = "failed",
    ) -> bool:
        """Put a failed attempt's job back in the queue to run at ``run_at``."""
        error, traceback = storable_text(error), storable_text(traceback)
        with self._write() as conn:
            if not self._fence(
                conn,
                job_id,
                token,
                status=Status.QUEUED.value,
                run_at=run_at,
                error=error,
                traceback=traceback,
                lease_token=None,
                lease_expires_at=None,
                failures=jobs.c.failures + 1,
            ):
                return False
            self._finish_attempt(conn, job_id, attempt, outcome, error, traceback)
        return True

    def release_job(
        self,
        *,
        job_id: str,
        token: str,
        attempt: int,
        run_at: float | None = None,
        error: str | None = None,
    ) -> bool:
        """Give a running job back to the queue without counting a failure (a graceful
        stop, or the database failing under the run: ``run_at`` delays the next run and
        ``error`` says why on the attempt row)."""
        error = storable_text(error)
        with self._write() as conn:
            if not self._fence(
                conn,
                job_id,
                token,
                status=Status.QUEUED.value,
                run_at=self.now() if run_at is None else run_at,
                lease_token=None,
                lease_expires_at=None,
            ):
                return False
            self._finish_attempt(conn, job_id, attempt, "released", error)
        return True

    def unclaim_job(self, *, job_id: str, token: str, cancel: bool = False) -> bool:
        """Undo the claim of a job that never started (claimed ahead by a worker): back
        to the queue, or cancelled when ``cancel``, as if never claimed (no attempt)."""
        now = self.now()
        values: dict[str, Any] = dict(
            attempts=jobs.c.attempts - 1,
            started_at=case((jobs.c.attempts == 1, None), else_=jobs.c.started_at),
            lease_token=None,
            lease_expires_at=None,
        )
        if cancel:
            values.update(status=Status.CANCELLED.value, finished_at=now, error="cancelled")
        else:
            values.update(status=Status.QUEUED.value)
        with self._write() as conn:
            if not self._fence(conn, job_id, token, **values):
                return False
            if cancel:
                self._after_terminal(conn, job_id)
        return True

    def cancel_job(self, job_id: str) -> str:
        """Cancel a job: at once when queued or waiting, at its next step when running."""
        now = self.now()
        with self._write() as conn:
            row = conn.execute(
                self.dialect.lock(select(jobs.c.status).where(jobs.c.id == job_id))
            ).first()
            if row is None:
                raise UnknownJob(f"no job with id {job_id!r}")
            status = Status(row.status)
            if status in TERMINAL:
                return status.value
            if status in (Status.QUEUED, Status.WAITING):
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id)
                    .values(
                        status=Status.CANCELLED.value,
                        cancel_requested=True,
                        finished_at=now,
                        updated_at=now,
                        error="cancelled",
                    )
                )
                self._after_terminal(conn, job_id)
                return Status.CANCELLED.value
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(cancel_requested=True, updated_at=now)
            )
            self._request_cancel(conn)
            return status.value

    def cancels_requested(self, job_ids: Sequence[str]) -> set[str]:
        """Those of ``job_ids`` (running jobs) whose cancellation was requested."""
        with self._read() as conn:
            return set(
                conn.execute(
                    select(jobs.c.id).where(jobs.c.id.in_(job_ids), jobs.c.cancel_requested)
                ).scalars()
            )

    def retry_job(self, job_id: str, from_checkpoint: str | None = None) -> None:
        """Queue a finished job again, keeping its checkpoints (or those before a step).

        Everything happens in one transaction, the ``_before_retry`` hook included (it
        reopens failed fan-outs so that only their unsuccessful children run again).
        """
        self._retry_conflicts(lambda conn: self._retry_job(conn, job_id, from_checkpoint))

    def _retry_job(self, conn: Connection, job_id: str, from_checkpoint: str | None) -> None:
        now = self.now()
        row = conn.execute(
            self.dialect.lock(select(jobs.c.status).where(jobs.c.id == job_id))
        ).first()
        if row is None:
            raise UnknownJob(f"no job with id {job_id!r}")
        status = Status(row.status)
        if from_checkpoint is None and status not in (Status.FAILED, Status.CANCELLED):
            raise ConfigurationError(
                f"job {job_id} is {status.value}; retry() takes a failed or cancelled job "
                "(use retry(from_checkpoint=...) to re-run a succeeded one from a step)"
            )
        if status not in TERMINAL:
            raise ConfigurationError(
                f"job {job_id} is {status.value}; wait for it to finish or cancel it first"
            )
        if from_checkpoint is not None:
            names = (
                conn.execute(
                    select(checkpoints.c.name, checkpoints.c.seq)
                    .where(checkpoints.c.job_id == job_id)
                    .order_by(checkpoints.c.seq)
                )
            ).all()
            seq = next((r.seq for r in names if r.name == from_checkpoint), None)
            if seq is None:
                raise ConfigurationError(
                    f"job {job_id} has no checkpoint {from_checkpoint!r}; it has "
                    f"{[r.name for r in names]}"
                )
            conn.execute(
                delete(checkpoints).where(checkpoints.c.job_id == job_id, checkpoints.c.seq >= seq)
            )
        self._before_retry(conn, job_id, status, from_checkpoint)
        kept = conn.execute(
            select(func.count()).where(checkpoints.c.job_id == job_id, checkpoints.c.done)
        ).scalar()
        self._reset_job(conn, job_id, now, fresh=False, steps_done=kept)

    def _before_retry(
        self, conn: Connection, job_id: str, status: Status, from_checkpoint: str | None
    ) -> None:
        """Hook run inside ``retry_job``'s transaction before the job is queued again."""

    def _reset_job(
        self, conn: Connection, job_id: str, now: float, *, fresh: bool, **values: Any
    ) -> None:
        """Queue a finished job again; ``fresh`` also drops its checkpoints (a re-run)."""
        self._unsettle(conn)
        if fresh:
            conn.execute(delete(checkpoints).where(checkpoints.c.job_id == job_id))
            values["steps_done"] = 0
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(
                status=Status.QUEUED.value,
                run_at=now,
                cancel_requested=False,
                result=None,
                finished_at=None,
                failures=0,
                reclaims=0,
                waiting_for=None,
                progress=None,
                message=None,
                updated_at=now,
                **values,
            )
        )
