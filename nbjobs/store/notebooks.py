"""The executed notebooks of notebook jobs: one row per attempt (``app.notebook``).

The row holds the codec's text of the executed ``.ipynb`` (an artifact reference), how
many code cells the notebook has, how many ran, and which one failed.  It is keyed by
(job, attempt): an attempt writes only its own row, so a zombie can never overwrite a
newer attempt's notebook, and no lease is needed (a timed-out attempt, whose lease the
timeout ended, keeps the notebook it ran too).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Row

from ..errors import UnknownJob
from ..schema import jobs, notebooks
from .core import CoreStore


class NotebookQueries(CoreStore):
    """``record_notebook``, ``job_notebook`` and ``job_notebooks``."""

    def record_notebook(
        self,
        *,
        job_id: str,
        attempt: int,
        value: str,
        cells: int,
        cells_done: int,
        failed_cell: int | None,
    ) -> bool:
        """Keep the executed notebook of one attempt (replacing a row of the same
        attempt); False when the job is gone (purged meanwhile)."""
        with self._write() as conn:
            if conn.execute(select(jobs.c.id).where(jobs.c.id == job_id)).first() is None:
                return False
            conn.execute(
                delete(notebooks).where(
                    notebooks.c.job_id == job_id, notebooks.c.attempt == attempt
                )
            )
            conn.execute(
                insert(notebooks).values(
                    job_id=job_id,
                    attempt=attempt,
                    value=value,
                    cells=cells,
                    cells_done=cells_done,
                    failed_cell=failed_cell,
                    created_at=self.now(),
                )
            )
        return True

    def job_notebooks(self, job_id: str) -> Sequence[Row]:
        """The job's executed notebooks, oldest attempt first (``UnknownJob`` when there
        is no such job; an empty list for a job that ran no notebook yet)."""
        return self._job_rows(
            select(notebooks).where(notebooks.c.job_id == job_id).order_by(notebooks.c.attempt),
            job_id,
        )

    def job_notebook(self, job_id: str, attempt: int | None = None) -> Row | None:
        """The executed notebook of ``attempt`` (by default the latest one kept), or
        None; ``UnknownJob`` when there is no such job."""
        stmt = select(notebooks).where(notebooks.c.job_id == job_id)
        if attempt is not None:
            stmt = stmt.where(notebooks.c.attempt == attempt)
        stmt = stmt.order_by(notebooks.c.attempt.desc()).limit(1)
        with self._read() as conn:
            row = conn.execute(stmt).first()
            if row is None and (
                conn.execute(select(jobs.c.id).where(jobs.c.id == job_id)).first() is None
            ):
                raise UnknownJob(f"no job with id {job_id!r}")
        return row
