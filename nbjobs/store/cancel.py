"""The user's cancel and retry of a job, fan-out subtrees included."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Connection

from ..errors import ConfigurationError, UnknownJob
from ..jobs import ACTIVE, FINISHED, TERMINAL, Status
from ..schema import checkpoints, jobs, jobs_by_key
from .fanout import FanoutQueries, _chunks

#: What a bulk retry takes when not told otherwise: the jobs ``retry()`` takes.
RETRYABLE: tuple[str, ...] = (Status.FAILED.value, Status.CANCELLED.value)


class CancelQueries(FanoutQueries):
    """Cancel a job (and its subtree); queue a finished one again."""

    def cancel_job(self, job_id: str) -> str:
        """Cancel a job and its whole fan-out subtree: at once when queued or waiting, at
        its next step when running.  The job is cancelled in one transaction, its
        unfinished children (``_cancel_tree``) in a second one."""
        now = self.now()
        with self._write() as conn:
            row = conn.execute(
                self.dialect.lock(select(jobs.c.status).where(jobs.c.id == job_id))
            ).first()
            if row is None:
                raise UnknownJob(f"no job with id {job_id!r}")
            status = Status(row.status)
            # A finished job stays as it is; its unfinished children are cancelled below.
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
                status = Status.CANCELLED
            elif status not in TERMINAL:
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id)
                    .values(cancel_requested=True, updated_at=now)
                )
                self._request_cancel(conn)

        def work(conn: Connection) -> None:
            children = (
                conn.execute(
                    select(jobs.c.id).where(
                        jobs.c.parent_id == job_id, jobs.c.status.not_in(FINISHED)
                    )
                )
                .scalars()
                .all()
            )
            if children:
                self._cancel_tree(conn, children)

        self._retry_conflicts(work)
        return status.value

    def cancel_jobs(self, job_ids: Sequence[str]) -> list[str]:
        """Cancel many jobs (and their fan-out subtrees) in a few transactions, not one
        per job: those of ``job_ids`` still unfinished when each chunk's transaction
        reads them.  Unknown and finished ids are skipped, not errors (a bulk action
        acts on what a filter matched a moment ago).  Returns the ids the request reached.
        """
        reached: list[str] = []
        for chunk in _chunks(list(dict.fromkeys(job_ids))):

            def work(conn: Connection, chunk: list[str] = chunk) -> list[str]:
                ids = list(
                    conn.execute(
                        select(jobs.c.id).where(jobs.c.id.in_(chunk), jobs.c.status.in_(ACTIVE))
                    ).scalars()
                )
                if ids:
                    self._cancel_tree(conn, ids)
                return ids

            reached += self._retry_conflicts(work)
        return reached

    def retry_jobs(self, job_ids: Sequence[str], statuses: Sequence[str] = RETRYABLE) -> list[str]:
        """Queue many finished jobs again, keeping their checkpoints, a chunk of them per
        transaction: those of ``job_ids`` whose status is still among ``statuses``
        (failed, cancelled) when the chunk's transaction locks them; the others are
        skipped.  Returns the ids queued again."""
        wanted = [s for s in statuses if s not in RETRYABLE]
        if wanted:
            raise ConfigurationError(
                f"a bulk retry takes failed or cancelled jobs, not {', '.join(wanted)}"
            )
        queued: list[str] = []
        for chunk in _chunks(list(dict.fromkeys(job_ids))):

            def work(conn: Connection, chunk: list[str] = chunk) -> list[str]:
                ids = list(
                    conn.execute(
                        self.dialect.lock(
                            jobs_by_key(select(jobs.c.id))
                            .where(jobs.c.id.in_(chunk), jobs.c.status.in_(list(statuses)))
                            .order_by(jobs.c.id)
                        )
                    ).scalars()
                )
                for job_id in ids:
                    self._retry_job(conn, job_id, None)
                return ids

            queued += self._retry_conflicts(work)
        return queued

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

        Everything happens in one transaction, the reopening of failed fan-outs
        included (so that only their unsuccessful children run again).
        """
        self._retry_conflicts(lambda conn: self._retry_job(conn, job_id, from_checkpoint))

    def _retry_job(self, conn: Connection, job_id: str, from_checkpoint: str | None) -> None:
        now = self.now()
        row = conn.execute(
            self.dialect.lock(select(jobs.c.status, jobs.c.queue).where(jobs.c.id == job_id))
        ).first()
        if row is None:
            raise UnknownJob(f"no job with id {job_id!r}")
        status = Status(row.status)
        self._made_ready(conn, row.queue)
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
        if from_checkpoint is None and status in (Status.FAILED, Status.CANCELLED):
            self._reopen_fanouts(conn, job_id, self.now())
        kept = conn.execute(
            select(func.count()).where(checkpoints.c.job_id == job_id, checkpoints.c.done)
        ).scalar()
        self._reset_job(conn, job_id, now, fresh=False, steps_done=kept)
