"""The tries of steps with retries: one row per failed try, and the try that then
succeeded (see ``schema.step_tries``); written under the job's lease, read for
``h.step_tries``, ``app.history_frame()`` and the dashboard's job detail."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import bindparam, insert, select
from sqlalchemy.engine import Row

from ..schema import jobs, step_tries
from .core import CoreStore, storable_text

#: Ids per ``IN (...)`` list: well under every backend's parameter limit.
_CHUNK = 500

#: A try's row, written only while the writer holds the job's lease (a zombie's tries
#: are refused like its checkpoints).
_INSERT_TRY = insert(step_tries).from_select(
    [c.name for c in step_tries.c],
    select(
        jobs.c.id,
        bindparam("t_attempt", type_=step_tries.c.attempt.type),
        bindparam("t_step", type_=step_tries.c.step.type),
        bindparam("t_try", type_=step_tries.c.try_number.type),
        bindparam("t_outcome", type_=step_tries.c.outcome.type),
        bindparam("t_error", type_=step_tries.c.error.type),
        bindparam("t_started", type_=step_tries.c.started_at.type),
        bindparam("t_finished", type_=step_tries.c.finished_at.type),
    ).where(jobs.c.id == bindparam("t_job"), jobs.c.lease_token == bindparam("t_token")),
)


class TryQueries(CoreStore):
    """Write and read the tries of steps."""

    def record_step_try(
        self,
        *,
        job_id: str,
        token: str,
        attempt: int,
        step: str,
        try_number: int,
        outcome: str,
        error: str | None,
        started_at: float,
    ) -> bool:
        """Record one try of a step; False (nothing written) when the lease was lost."""
        params = dict(
            t_job=job_id,
            t_token=token,
            t_attempt=attempt,
            t_step=step,
            t_try=try_number,
            t_outcome=outcome,
            t_error=None if error is None else storable_text(error[:2000]),
            t_started=started_at,
            t_finished=self.now(),
        )
        with self._write() as conn:
            # Through ``_run``: a plain execute of INSERT ... SELECT reports no rowcount
            # on PostgreSQL (-1), which would read as a lost lease.
            return self._run(conn, _INSERT_TRY, params).rowcount == 1

    def list_step_tries(self, job_ids: Sequence[str]) -> list[Row]:
        """The recorded tries of these jobs' steps, by job, attempt, start and try."""
        ids = list(job_ids)
        out: list[Row] = []
        order = (
            step_tries.c.job_id,
            step_tries.c.attempt,
            step_tries.c.started_at,
            step_tries.c.try_number,
        )
        with self._read() as conn:
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                stmt = select(step_tries).where(step_tries.c.job_id.in_(chunk)).order_by(*order)
                out.extend(conn.execute(stmt).all())
        return out
