"""Read-only queries for run history (``app.history_frame``), the stored values that
refer to artifacts (``app.artifacts_frame``) and changed-code checks."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, Select, case, func, or_, select
from sqlalchemy.engine import Row

from ..codec import _MARKER
from ..jobs import ACTIVE
from ..schema import attempts, checkpoints, jobs
from .core import CoreStore

#: Ids per ``IN (...)`` list: well under every backend's parameter limit.
_CHUNK = 500


def _pickled_markers() -> list[str]:
    """The marker as it appears in base64 pickle text (``pickle:...``) at each of the
    three byte alignments: a pickle app's row holds its references as persistent ids."""
    data = _MARKER.encode()
    out = []
    for pad in range(3):
        text = base64.b64encode(b"\0" * pad + data).decode("ascii")
        # Only the characters made of the marker's bits, not the padding's nor the tail's.
        out.append(text[-(-8 * pad // 6) : (8 * (pad + len(data))) // 6])
    return out


#: What a stored value holding an artifact reference contains (JSON, or base64 pickle).
NEEDLES = [_MARKER, *_pickled_markers()]


def holds_reference(column: ColumnElement[Any]) -> ColumnElement[bool]:
    """``column`` (stored text) may hold an artifact reference: a substring test, so a
    superset (the caller parses what it reads)."""
    return or_(*(column.contains(n, autoescape=True) for n in NEEDLES))


class StoredValue(NamedTuple):
    """A stored value that refers to artifacts: ``kind`` is ``input``, ``step`` or
    ``result``; ``name`` the checkpoint's (else the kind); ``at`` when it was stored
    (the job's creation for its input, the step's or the job's end otherwise)."""

    job_id: str
    workflow: str
    kind: str
    name: str
    seq: int | None
    value: str
    at: float | None


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
        """Every checkpoint of these jobs (without values; ``detail`` holds a cache hit's
        ``cached_from``), in job and step order."""
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
                checkpoints.c.detail,
            ),
            checkpoints.c.job_id,
            job_ids,
            (checkpoints.c.job_id, checkpoints.c.seq),
        )

    def artifact_values(
        self,
        job_ids: Sequence[str] | None = None,
        *,
        workflow: str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[StoredValue]:
        """The inputs, finished checkpoints and results that may hold artifact references
        (only those rows' values are read), of the jobs ``job_ids`` or else of the newest
        jobs (created at or after ``since``): newest job first, then input, steps in
        order, result.  ``limit`` bounds the values read from each table."""
        holds_input, holds_result = holds_reference(jobs.c.input), holds_reference(jobs.c.result)
        job_stmt = select(
            jobs.c.id,
            jobs.c.workflow,
            jobs.c.created_at,
            jobs.c.finished_at,
            case((holds_input, jobs.c.input), else_=None).label("input"),
            case((holds_result, jobs.c.result), else_=None).label("result"),
        ).where(or_(holds_input, holds_result))
        step_stmt = (
            select(
                checkpoints.c.job_id,
                jobs.c.workflow,
                jobs.c.created_at,
                checkpoints.c.name,
                checkpoints.c.seq,
                checkpoints.c.value,
                checkpoints.c.finished_at,
            )
            .join(jobs, jobs.c.id == checkpoints.c.job_id)
            .where(checkpoints.c.done, holds_reference(checkpoints.c.value))
        )
        if job_ids is not None:
            job_rows = self._by_job_ids(job_stmt, jobs.c.id, job_ids, (jobs.c.id,))
            step_rows = self._by_job_ids(
                step_stmt, checkpoints.c.job_id, job_ids, (checkpoints.c.job_id, checkpoints.c.seq)
            )
        else:
            filters = []
            if workflow is not None:
                filters.append(jobs.c.workflow == workflow)
            if since is not None:
                filters.append(jobs.c.created_at >= since)
            newest = (jobs.c.created_at.desc(), jobs.c.id.desc())
            job_stmt = job_stmt.where(*filters).order_by(*newest).limit(limit)
            step_stmt = step_stmt.where(*filters).order_by(*newest, checkpoints.c.seq)
            with self._read() as conn:
                job_rows = list(conn.execute(job_stmt).all())
                step_rows = list(conn.execute(step_stmt.limit(limit)).all())
        out: list[tuple[tuple[Any, ...], StoredValue]] = []
        for j in job_rows:
            if j.input is not None:
                value = StoredValue(j.id, j.workflow, "input", "input", None, j.input, j.created_at)
                out.append(((j.created_at, j.id, 0, 0), value))
            if j.result is not None:
                value = StoredValue(
                    j.id, j.workflow, "result", "result", None, j.result, j.finished_at
                )
                out.append(((j.created_at, j.id, 2, 0), value))
        for r in step_rows:
            value = StoredValue(r.job_id, r.workflow, "step", r.name, r.seq, r.value, r.finished_at)
            out.append(((r.created_at, r.job_id, 1, r.seq), value))
        # Newest job first; within a job, input, steps, result.
        out.sort(key=lambda item: (-item[0][0], item[0][1], item[0][2], item[0][3]))
        return [value for _key, value in out]

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
