"""Read-only queries for run history (``app.history_frame``) and changed-code checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.engine import Row

from ..jobs import ACTIVE
from ..schema import attempts, checkpoints, jobs
from .core import CoreStore

#: Ids per ``IN (...)`` list: well under every backend's parameter limit.
_CHUNK = 500


class HistoryQueries(CoreStore):
    """Jobs, attempts and step timings of the newest jobs, for analysis."""

    def history_jobs(
        self,
        *,
        workflow: str | None = None,
        status: str | Sequence[str] | None = None,
        since: float | None = None,
        limit: int = 1000,
    ) -> Sequence[Row]:
        """The newest ``limit`` jobs (created at or after ``since``), newest first."""
        stmt = select(
            jobs.c.id,
            jobs.c.workflow,
            jobs.c.queue,
            jobs.c.status,
            jobs.c.attempts,
            jobs.c.failures,
            jobs.c.parent_id,
            jobs.c.schedule,
            jobs.c.error,
            jobs.c.created_at,
            jobs.c.started_at,
            jobs.c.finished_at,
        )
        if workflow is not None:
            stmt = stmt.where(jobs.c.workflow == workflow)
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            stmt = stmt.where(jobs.c.status.in_([str(s) for s in statuses]))
        if since is not None:
            stmt = stmt.where(jobs.c.created_at >= since)
        stmt = stmt.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)
        with self._read() as conn:
            return conn.execute(stmt).all()

    def history_attempts(self, job_ids: Sequence[str]) -> list[Row]:
        """Every attempt of these jobs, in job and attempt order."""
        return self._by_job_ids(
            select(
                attempts.c.job_id,
                attempts.c.attempt,
                attempts.c.worker_id,
                attempts.c.outcome,
                attempts.c.error,
                attempts.c.started_at,
                attempts.c.finished_at,
            ),
            attempts.c.job_id,
            job_ids,
            (attempts.c.job_id, attempts.c.attempt),
        )

    def history_steps(self, job_ids: Sequence[str]) -> list[Row]:
        """Every checkpoint of these jobs (without values), in job and step order."""
        return self._by_job_ids(
            select(
                checkpoints.c.job_id,
                checkpoints.c.name,
                checkpoints.c.seq,
                checkpoints.c.kind,
                checkpoints.c.done,
                checkpoints.c.attempt,
                checkpoints.c.started_at,
                checkpoints.c.finished_at,
            ),
            checkpoints.c.job_id,
            job_ids,
            (checkpoints.c.job_id, checkpoints.c.seq),
        )

    def _by_job_ids(
        self,
        stmt: Select[Any],
        column: ColumnElement[str],
        job_ids: Sequence[str],
        order: tuple[ColumnElement[Any], ...],
    ) -> list[Row]:
        ids = list(job_ids)
        out: list[Row] = []
        with self._read() as conn:
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                out.extend(conn.execute(stmt.where(column.in_(chunk)).order_by(*order)).all())
        return out

    def unfinished_other_code(
        self, workflow: str, fingerprint: str, *, limit: int = 5
    ) -> tuple[int, list[str]]:
        """Unfinished runs of ``workflow`` submitted with other code: (count, first ids)."""
        where = (
            jobs.c.workflow == workflow,
            jobs.c.status.in_(ACTIVE),
            jobs.c.code_fingerprint != fingerprint,
        )
        with self._read() as conn:
            count = conn.execute(select(func.count()).select_from(jobs).where(*where)).scalar()
            ids = (
                conn.execute(
                    select(jobs.c.id).where(*where).order_by(jobs.c.created_at).limit(limit)
                )
                .scalars()
                .all()
            )
        return int(count or 0), list(ids)
