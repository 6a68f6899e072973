"""The pandas DataFrames of ``app.jobs_frame()``, ``app.history_frame()``,
``app.artifacts_frame()`` and ``app.schedules_frame()``, built from what the store
reads; pandas is imported lazily.

``history_frame`` puts jobs, attempts and step timings in one tidy frame: one row per
job, per attempt and per step, told apart by the ``kind`` column, so that the usual
questions are one ``groupby`` away: the slowest steps (``kind == "step"`` by ``name``),
failure rates (``kind == "job"`` by ``status``) and retries (``kind == "attempt"`` by
``status``; ``kind == "try"`` for the tries of steps with retries, ``name`` the step,
``seq`` the try's number, ``status`` its outcome).  Its ``artifact_bytes`` column is the
size of the artifacts a step's value (or, on a job row, the job's input and result)
refers to, read from the references in the rows (never from the artifacts); NA where
there are none.

``artifacts_frame`` lists every artifact the stored values refer to, one row each,
found the same way: references are parsed from the rows that contain one, so nothing
is loaded and a pickle's code never runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..caching import cached_from

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
    "kind",  # job | attempt | step | try
    "job_id",
    "workflow",
    "queue",
    "name",  # the step's name (steps only)
    "seq",  # the step's position in the run (steps), or the try's number (tries)
    "attempt",  # the attempt (attempts), or the attempt that made the step (steps)
    "status",  # job status, attempt outcome, or "done" / "pending" for steps
    "worker_id",
    "error",
    "started_at",
    "finished_at",
    "duration_s",
    "artifact_bytes",  # bytes of the artifacts the value refers to (steps, jobs)
    "cached_from",  # the job whose stored value a cached step reused (steps only)
]

#: The columns of ``h.checkpoints_frame()``.
CHECKPOINT_COLUMNS = [
    "seq",
    "name",
    "kind",  # step | sleep | signal | fanout
    "status",  # done | pending
    "attempt",
    "started_at",
    "finished_at",
    "duration_s",
    "cached_from",  # the job whose stored value a cached step reused, else None
]

#: The columns of ``app.artifacts_frame()``.
ARTIFACT_COLUMNS = [
    "job_id",
    "workflow",
    "kind",  # input | step | result
    "step",  # the checkpoint's name, or "input" / "result"
    "within",  # where in the value: "" for the whole value, else like "['frame']"
    "type",
    "shape",  # a tuple, or None
    "bytes",
    "sha256",
    "uri",
    "created",  # when the value was stored (UTC)
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
                cached_from=cached_from(s.detail),
            )
        )
    for t in store.list_step_tries(list(by_id)):
        j = by_id[t.job_id]
        records.append(
            dict(
                kind="try",
                job_id=t.job_id,
                workflow=j.workflow,
                queue=j.queue,
                name=t.step,
                seq=t.try_number,
                attempt=t.attempt,
                status=t.outcome,
                error=t.error,
                started_at=t.started_at,
                finished_at=t.finished_at,
            )
        )
    sizes = _artifact_bytes(store.artifact_values(list(by_id)))
    for record in records:
        if record["kind"] in ("job", "step"):
            key = (record["job_id"], record.get("name") if record["kind"] == "step" else None)
            record["artifact_bytes"] = sizes.get(key)
    frame = pd.DataFrame.from_records(records, columns=COLUMNS)
    for column in ("seq", "attempt", "artifact_bytes"):
        frame[column] = frame[column].astype("Int64")
    for column in ("started_at", "finished_at"):
        frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
    frame["duration_s"] = (frame["finished_at"] - frame["started_at"]).dt.total_seconds()
    return frame


def checkpoints_frame(steps: Iterable[Any]) -> pandas.DataFrame:
    """One row per checkpoint of a job (``store.history_steps([id])``), in step order;
    ``cached_from`` names the job a cached step's value came from."""
    import pandas as pd

    records = [
        (
            s.seq,
            s.name,
            s.kind,
            "done" if s.done else "pending",
            s.attempt,
            s.started_at,
            s.finished_at,
            None,
            cached_from(s.detail),
        )
        for s in steps
    ]
    frame = pd.DataFrame.from_records(records, columns=CHECKPOINT_COLUMNS)
    for column in ("seq", "attempt"):
        frame[column] = frame[column].astype("Int64")
    for column in ("started_at", "finished_at"):
        frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
    frame["duration_s"] = (frame["finished_at"] - frame["started_at"]).dt.total_seconds()
    # None, not NaN, where a step was not reused (the ids are strings).
    frame["cached_from"] = pd.Series([r[-1] for r in records], dtype=object)
    return frame


def _artifact_bytes(values: Iterable[Any]) -> dict[tuple[str, str | None], int]:
    """Bytes of artifacts by (job, step name), a job's input and result under (job, None)."""
    from ..artifacts.reference import find_references

    sizes: dict[tuple[str, str | None], int] = {}
    for v in values:
        refs = find_references(v.value)
        if refs:
            key = (v.job_id, v.name if v.kind == "step" else None)
            sizes[key] = sizes.get(key, 0) + sum(ref.size for _where, ref in refs)
    return sizes


def artifacts_frame(values: Iterable[Any], limit: int | None = None) -> pandas.DataFrame:
    """One row per artifact that the stored values (``store.artifact_values``) refer to,
    in their order, at most ``limit``."""
    import pandas as pd

    from ..artifacts.reference import find_references

    records: list[dict[str, Any]] = []
    for v in values:
        for within, ref in find_references(v.value):
            records.append(
                dict(
                    job_id=v.job_id,
                    workflow=v.workflow,
                    kind=v.kind,
                    step=v.name,
                    within=within,
                    type=ref.type,
                    shape=ref.shape,
                    bytes=ref.size,
                    sha256=ref.sha256,
                    uri=ref.uri,
                    created=v.at,
                )
            )
        if limit is not None and len(records) >= limit:
            del records[limit:]
            break
    frame = pd.DataFrame.from_records(records, columns=ARTIFACT_COLUMNS)
    frame["bytes"] = frame["bytes"].astype("int64")
    frame["created"] = pd.to_datetime(frame["created"], unit="s", utc=True)
    return frame


#: The columns of ``group.results_frame()``.
GROUP_COLUMNS = [
    "position",  # the index of the item or spec
    "job_id",
    "workflow",
    "input",  # the item (a spec's single argument), else {"args": [...], "kwargs": {...}}
    "status",
    "result",  # succeeded jobs only
    "error",  # failed and cancelled jobs only
    "duration_s",  # from the start of the first attempt to the end; NaN while unfinished
]


def group_frame(rows: Iterable[Any], loads: Callable[..., Any]) -> pandas.DataFrame:
    """One row per job of a group, in submission order, from ``store.group_members(...,
    full=True)``; ``loads`` decodes the stored input and result (the app's codec)."""
    import pandas as pd

    records = []
    for r in rows:
        given = loads(r.input, where=f"job {r.id}, its input")
        args, kwargs = given.get("args", []), given.get("kwargs", {})
        item = args[0] if len(args) == 1 and not kwargs else given
        succeeded = r.status == "succeeded"
        result = loads(r.result, where=f"job {r.id}, its result") if succeeded else None
        duration = None
        if r.finished_at is not None and r.started_at is not None:
            duration = r.finished_at - r.started_at
        records.append((r.position, r.id, r.workflow, item, r.status, result, r.error, duration))
    columns = list(zip(*records, strict=True)) if records else [()] * len(GROUP_COLUMNS)
    # Inputs, results and errors stay Python objects: a None among integers is None,
    # not a NaN that turns the integers into floats.
    kinds = {"position": "int64", "duration_s": "float64"}
    return pd.DataFrame(
        {
            name: pd.Series(values, dtype=kinds.get(name, object))
            for name, values in zip(GROUP_COLUMNS, columns, strict=True)
        }
    )
