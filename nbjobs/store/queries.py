"""Reads of single jobs and simple listings (the dashboard's own queries are in views)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import case, func, insert, literal, null, select
from sqlalchemy.engine import Row

from ..errors import UnknownJob
from ..jobs import FINISHED, Status, progress
from ..schema import SUCCEEDED_SQL, attempts, checkpoints, jobs, logs, new_id, signals
from .core import JOB_SUMMARY, CoreStore, storable_text


class JobReads(CoreStore):
    """Reads of jobs, their checkpoints, attempts, logs and signals."""

    def get_job(self, job_id: str, *, full: bool = False) -> Row:
        cols = list(jobs.c) if full else list(JOB_SUMMARY)
        with self._read() as conn:
            row = conn.execute(select(*cols).where(jobs.c.id == job_id)).first()
        if row is None:
            raise UnknownJob(f"no job with id {job_id!r}")
        return row

    def job_status(self, job_id: str) -> str:
        with self._read() as conn:
            status = conn.execute(select(jobs.c.status).where(jobs.c.id == job_id)).scalar()
        if status is None:
            raise UnknownJob(f"no job with id {job_id!r}")
        return status

    def job_outcome(self, job_id: str) -> Row | None:
        """status, result, error and traceback once the job is terminal, else None."""
        with self._read() as conn:
            row = conn.execute(
                select(jobs.c.status, jobs.c.result, jobs.c.error, jobs.c.traceback).where(
                    jobs.c.id == job_id
                )
            ).first()
        if row is None:
            raise UnknownJob(f"no job with id {job_id!r}")
        return row if row.status in FINISHED else None

    def list_jobs(
        self,
        *,
        status: str | Sequence[str] | None = None,
        workflow: str | None = None,
        queue: str | None = None,
        parent_id: str | None = None,
        since: float | None = None,
        limit: int | None = 100,
        offset: int = 0,
        newest_first: bool = True,
    ) -> Sequence[Row]:
        """Job summaries, newest first (or oldest), filtered; ``since`` keeps the jobs
        created at or after that epoch time, ``limit=None`` every match."""
        stmt = select(*JOB_SUMMARY)
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            stmt = stmt.where(jobs.c.status.in_([str(s) for s in statuses]))
        if workflow is not None:
            stmt = stmt.where(jobs.c.workflow == workflow)
        if queue is not None:
            stmt = stmt.where(jobs.c.queue == queue)
        if parent_id is not None:
            stmt = stmt.where(jobs.c.parent_id == parent_id)
        if since is not None:
            stmt = stmt.where(jobs.c.created_at >= since)
        order = jobs.c.created_at.desc() if newest_first else jobs.c.created_at
        stmt = stmt.order_by(order, jobs.c.id.desc() if newest_first else jobs.c.id)
        with self._read() as conn:
            return conn.execute(stmt.limit(limit).offset(offset)).all()

    def expected_steps(self, workflow: str) -> int | None:
        """Steps the last successful run of ``workflow`` made (for progress bars)."""
        with self._read() as conn:
            return conn.execute(
                select(jobs.c.steps_done)
                .where(jobs.c.workflow == workflow, jobs.c.status == SUCCEEDED_SQL)
                .order_by(jobs.c.created_at.desc())
                .limit(1)
            ).scalar()

    def fanout_progress(self, job_id: str) -> dict[str, tuple[int, int]]:
        """Per fan-out of ``job_id``: (children finished, children in all)."""
        with self._read() as conn:
            rows = conn.execute(
                select(
                    jobs.c.fanout,
                    func.count(),
                    func.sum(case((jobs.c.status.in_(FINISHED), 1), else_=0)),
                )
                .where(jobs.c.parent_id == job_id)
                .group_by(jobs.c.fanout)
            ).all()
        return {name: (int(done or 0), total) for name, total, done in rows}

    def job_progress(self, job_id: str) -> float | None:
        """The job's progress by :func:`nbjobs.jobs.progress`: a parent waiting for a
        fan-in counts the children of that fan-out finished."""
        row = self.get_job(job_id)
        children = None
        if row.status == Status.WAITING.value and (row.waiting_for or "").startswith("fanout:"):
            children = self.fanout_progress(job_id).get(row.waiting_for[len("fanout:") :])
        expected = row.steps_expected
        if not expected and row.status != Status.SUCCEEDED.value:
            expected = self.expected_steps(row.workflow)  # learned from the last success
        return progress(row.status, row.steps_done, expected, row.progress, children)

    def job_checkpoints(self, job_id: str) -> Sequence[Row]:
        with self._read() as conn:
            return conn.execute(
                select(checkpoints)
                .where(checkpoints.c.job_id == job_id)
                .order_by(checkpoints.c.seq)
            ).all()

    def job_attempts(self, job_id: str) -> list[Row]:
        """Ended attempts, then the running one (read from the job row) if any."""
        ended = select(
            attempts.c.job_id,
            attempts.c.attempt,
            attempts.c.worker_id,
            attempts.c.outcome,
            attempts.c.started_at,
            attempts.c.finished_at,
            attempts.c.error,
            attempts.c.traceback,
        ).where(attempts.c.job_id == job_id)
        running = select(
            jobs.c.id,
            jobs.c.attempts,
            jobs.c.worker_id,
            literal(Status.RUNNING.value),
            jobs.c.claimed_at,
            null(),
            null(),
            null(),
        ).where(jobs.c.id == job_id, jobs.c.status == Status.RUNNING.value)
        with self._read() as conn:
            rows = conn.execute(ended.union_all(running)).all()
        return sorted(rows, key=lambda r: r.attempt)

    def count_jobs(self, *, status: str | None = None) -> int:
        stmt = select(func.count()).select_from(jobs)
        if status is not None:
            stmt = stmt.where(jobs.c.status == status)
        with self._read() as conn:
            return conn.execute(stmt).scalar() or 0

    def status_counts(self) -> dict[str, int]:
        with self._read() as conn:
            rows = conn.execute(select(jobs.c.status, func.count()).group_by(jobs.c.status))
            return {s: n for s, n in rows}

    def append_logs(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            with self._write() as conn:
                conn.execute(
                    insert(logs),
                    [dict(r, id=new_id(), text=storable_text(r["text"])) for r in rows],
                )

    def job_logs(self, job_id: str) -> Sequence[Row]:
        """The job's output rows in order; ``UnknownJob`` when there is no such job."""
        return self._job_rows(
            select(logs).where(logs.c.job_id == job_id).order_by(logs.c.id), job_id
        )

    def job_signals(self, job_id: str) -> Sequence[Row]:
        with self._read() as conn:
            return conn.execute(
                select(signals).where(signals.c.job_id == job_id).order_by(signals.c.id)
            ).all()
