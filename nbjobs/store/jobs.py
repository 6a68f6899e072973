"""Submitting, claiming and running jobs: enqueue, claim, checkpoint and progress.

Every write a worker makes for a job it runs is *fenced* by the job's lease token (see
:meth:`CoreStore._fence`).  The ends of an attempt are in :mod:`.finish`, the user's
cancel and retry in :mod:`.cancel`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, exists, insert, select, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from ..jobs import Status
from ..schema import checkpoints, jobs, new_id, new_token
from .core import _FENCED, storable_text
from .limited_claim import LimitedClaims


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
    #: The OpenTelemetry context the run continues (JSON), or None.
    trace_context: str | None = None
    #: The fan-out a child belongs to (with ``parent_id``), or None.
    fanout: str | None = None


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
        fanout=row.fanout,
        reclaims=row.reclaims,
        trace_context=row.trace_context,
    )


def _in_claim_order(rows: Sequence[Row]) -> list[ClaimedJob]:
    """Claimed rows as jobs, best first (``RETURNING`` promises no order)."""
    if not rows:
        return []
    rows = sorted(rows, key=lambda r: (-r.priority, r.run_at or 0.0, r.id))
    return [_claimed(r) for r in rows]


# Hot-path statements, built once with bind parameters (building a statement costs more
# than running it on SQLite).
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


class JobQueries(LimitedClaims):
    """The life of a job: enqueue, claim, checkpoint, finish, cancel and retry."""

    @functools.cached_property
    def _fenced_checkpoint(self) -> Any:
        """The step's fence and its checkpoint row as one statement, where possible."""
        return self.dialect.fenced_insert(_FENCE_STEP, checkpoints, checkpoints.c.job_id)

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
        trace_context: str | None = None,
        partition_key: str | None = None,
        expires_at: float | None = None,
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
            trace_context=trace_context,
            partition_key=partition_key,
            expires_at=expires_at,
            **fresh_job_counters(now),
        )
        try:

            def insert(conn: Connection) -> None:
                self._run(conn, _INSERT_JOB, values)
                self._made_ready(conn, queue)

            self._single_statement(insert)
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
                # One known row: wait for its lock rather than skip it.  Skipping would
                # report "not queued" whenever a reaper or a claim scan held the row for
                # a moment; waiting gives the answer once they commit.
                candidates = self.dialect.lock(
                    select(jobs.c.id).where(
                        jobs.c.id == bindparam("c_job", None),
                        jobs.c.status == Status.QUEUED.value,
                    )
                )
            else:
                candidates = self.dialect.claim_candidates(
                    queue, list(workflows), bindparam("c_now", None), limit
                )
            plan = self._claim_of(candidates)
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
        """Run a claim plan in ``conn``'s transaction; returns the claimed jobs."""
        rows = self.dialect.claim(conn, plan, self._claim_params(worker_id, lease_seconds, params))
        return _in_claim_order(rows)

    def _claim_params(
        self, worker_id: str, lease_seconds: float, params: dict[str, Any]
    ) -> dict[str, Any]:
        now = self.now()
        return dict(
            params,
            c_now=now,
            c_token=new_token(),
            c_expires=now + lease_seconds,
            c_worker=worker_id,
        )

    def _claim_queue(
        self,
        conn: Connection,
        queue: str,
        workflows: tuple[str, ...],
        limit: int,
        worker_id: str,
        lease_seconds: float,
        ahead: int = 0,
        freed: bool = False,
    ) -> list[ClaimedJob]:
        """Claim up to ``limit`` jobs of ``queue`` in ``conn``'s write transaction: the
        plain claim, or the limited one where a limit of the queue or of one of
        ``workflows`` exists (see :mod:`.limits`).  ``ahead`` of them are wanted ahead
        (for a worker's queue, not a free slot); ``freed``: the transaction has just
        ended running jobs (see ``LimitedClaims._claim_limited``)."""
        limit = min(limit, self.dialect.claim_batch)
        if self.is_limited(queue, workflows):
            params = self._claim_params(worker_id, lease_seconds, {})
            rows = self._claim_limited(
                conn, queue, workflows, limit, params, ahead=ahead, freed=freed
            )
            return _in_claim_order(rows)
        plan = self._claim_plan(queue, workflows, limit)
        return self._claim(conn, plan, worker_id, lease_seconds)

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
        names = tuple(workflows)
        if self.dialect.autocommit_single and not self.is_limited(queue, names):
            # The plain claim is one statement there.
            plan = self._claim_plan(queue, names, min(limit, self.dialect.claim_batch))
            return self._single_statement(
                lambda conn: self._claim(conn, plan, worker_id, lease_seconds)
            )
        with self._write(hot=True) as conn:
            return self._claim_queue(conn, queue, names, limit, worker_id, lease_seconds)

    def claim_job(self, job_id: str, *, worker_id: str, lease_seconds: float) -> ClaimedJob | None:
        """Claim one given job if it is queued (``wf.run`` and its inline retries),
        within the limits of its queue and workflow (None: held back, or not queued)."""
        with self._write() as conn:
            if self.current_limits():
                row = conn.execute(
                    select(jobs.c.queue, jobs.c.workflow).where(jobs.c.id == job_id)
                ).first()
                names = (row.workflow, self._limit_name(row.workflow)) if row else ()
                if row is not None and self.is_limited(row.queue, names):
                    params = self._claim_params(worker_id, lease_seconds, {})
                    rows = self._claim_limited(
                        conn, row.queue, (row.workflow,), 1, params, only=job_id
                    )
                    return _claimed(rows[0]) if rows else None
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
        detail: str | None = None,
    ) -> bool:
        """Persist a finished step; False (nothing written) when the lease was lost.

        ``count`` is added to the job's count of steps (this one and any left out
        before).  With None, where ``defers_touches``, the job row is left as it is and
        the step costs one row instead of two; the caller adds the step later with
        :meth:`count_steps` (the change feed and progress bars lag until then).
        Elsewhere None counts the step now.  ``detail``: a cache hit's ``cached_from``
        mark (see :mod:`nbjobs.caching`).
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
            detail=detail,
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
