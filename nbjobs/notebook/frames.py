"""The pandas DataFrames of ``app.jobs_frame()``, ``app.history_frame()`` and
``app.schedules_frame()``, built from what the store reads; pandas is imported lazily.

``history_frame`` puts jobs, attempts and step timings in one tidy frame: one row per
job, per attempt and per step, told apart by the ``kind`` column, so that the usual
questions are one ``groupby`` away: the slowest steps (``kind == "step"`` by ``name``),
failure rates (``kind == "job"`` by ``status``) and retries (``kind == "attempt"`` by
``status``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas

#: The columns of ``app.jobs_frame()``, in order (``duration_s`` is added after them).
JOB_COLUMNS = [
    "id", "workflow", "queue", "status", "priority", "attempts", "steps_done",
    "steps_expected", "error", "key", "parent_id", "created_at", "started_at",
    "finished_at",
]  # fmt: skip

#: The columns of ``app.history_frame()``.
COLUMNS = [
    "kind",  # job | attempt | step
    "job_id",
    "workflow",
    "queue",
    "name",  # the step's name (steps only)
    "seq",  # the step's position in the run (steps only)
    "attempt",  # the attempt (attempts), or the attempt that made the step (steps)
    "status",  # job status, attempt outcome, or "done" / "pending" for steps
    "worker_id",
    "error",
    "started_at",
    "finished_at",
    "duration_s",
]


def jobs_frame(rows: Iterable[Any]) -> pandas.DataFrame:
    """Job rows (``store.list_jobs``) as one row per job, times as UTC datetimes."""
    import pandas as pd

    frame = pd.DataFrame(
        [{c: getattr(r, c) for c in JOB_COLUMNS} for r in rows], columns=JOB_COLUMNS
    )
    for column in ("created_at", "started_at", "finished_at"):
        frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
    frame["duration_s"] = (frame["finished_at"] - frame["started_at"]).dt.total_seconds()
    return frame


def schedules_frame(items: Iterable[Mapping[str, Any]]) -> pandas.DataFrame:
    """The schedules (as ``app.schedules()`` lists them) as one row per schedule."""
    import pandas as pd

    return pd.DataFrame(list(items))


def history_frame(
    store: Any,
    *,
    workflow: str | None = None,
    status: str | Sequence[str] | None = None,
    since: float | None = None,
    limit: int = 1000,
) -> pandas.DataFrame:
    """Build the frame for the newest ``limit`` jobs matching the filters, read from
    ``store`` (its ``history_jobs``, ``history_attempts`` and ``history_steps``); the
    App checked the filters (``since`` as epoch seconds)."""
    import pandas as pd

    job_rows = store.history_jobs(
        workflow=workflow,
        status=status,
        since=since,
        limit=limit,
    )
    by_id = {j.id: j for j in job_rows}
    records: list[dict[str, Any]] = []
    for j in job_rows:
        records.append(
            dict(
                kind="job",
                job_id=j.id,
                workflow=j.workflow,
                queue=j.queue,
                attempt=j.attempts,
                status=j.status,
                error=j.error,
                started_at=j.started_at,
                finished_at=j.finished_at,
            )
        )
    for a in store.history_attempts(list(by_id)):
        j = by_id[a.job_id]
        records.append(
            dict(
                kind="attempt",
                job_id=a.job_id,
                workflow=j.workflow,
                queue=j.queue,
                attempt=a.attempt,
                status=a.outcome,
                worker_id=a.worker_id,
                error=a.error,
                started_at=a.started_at,
                finished_at=a.finished_at,
            )
        )
    for s in store.history_steps(list(by_id)):
        j = by_id[s.job_id]
        records.append(
            dict(
                kind="step",
                job_id=s.job_id,
                workflow=j.workflow,
                queue=j.queue,
                name=s.name,
                seq=s.seq,
                attempt=s.attempt,
                status="done" if s.done else "pending",
                started_at=s.started_at,
                finished_at=s.finished_at,
            )
        )
    frame = pd.DataFrame.from_records(records, columns=COLUMNS)
    for column in ("seq", "attempt"):
        frame[column] = frame[column].astype("Int64")
    for column in ("started_at", "finished_at"):
        frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
    frame["duration_s"] = (frame["finished_at"] - frame["started_at"]).dt.total_seconds()
    return frame
