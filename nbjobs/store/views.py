"""Read-only queries for the dashboard: every one bounded, paginated and index-backed.

The dashboard refreshes about once a second, so each query here must stay cheap at a
million jobs: counts of the active statuses walk only their index range, pages are
``LIMIT``/``OFFSET`` over an index, totals are counted up to a cap, and "what changed"
is a range scan of ``ix_nbjobs_jobs_updated`` above a watermark.  The views never write
SQL of their own; they call these named methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, literal, or_, select
from sqlalchemy.engine import Row
from sqlalchemy.sql.expression import ColumnElement

from ..jobs import ACTIVE, FINISHED, Status
from ..schema import (
    SUCCEEDED_SQL,
    attempts,
    checkpoints,
    group_jobs,
    jobs,
    schedules,
    signals,
    step_tries,
)
from .core import JOB_SUMMARY
from .counts import CountQueries

#: How much of each stored value or text the job detail view reads (characters).
DETAIL_CHARS = {
    "input": 2000,
    "result": 2000,
    "error": 2000,
    "traceback": 8000,
    "value": 120,
    "payload": 200,
}


#: Sort keys the jobs table offers, each backed by an index (``created`` is the default).
SORTS: dict[str, ColumnElement] = {
    "created": jobs.c.created_at,
    "updated": jobs.c.updated_at,
    # A finished job is not written again until a retry clears its finish time, so its
    # updated_at is its finished_at: the sort walks the updated_at index, and no
    # finish-time index is maintained on the hot path.
    "finished": jobs.c.updated_at,
    "priority": jobs.c.priority,
    "workflow": jobs.c.workflow,
}

#: Characters of an error message a table row carries (the detail view loads it all).
ERROR_PREVIEW = 300


@dataclass(frozen=True)
class JobFilter:
    """What the jobs table is narrowed to; empty fields do not filter."""

    status: tuple[str, ...] = ()
    workflow: str | None = None
    queue: str | None = None
    search: str | None = None
    parent_id: str | None = None
    group_id: str | None = None

    def clauses(self) -> list[ColumnElement]:
        where: list[ColumnElement] = []
        if self.status:
            where.append(jobs.c.status.in_(list(self.status)))
        if self.workflow:
            where.append(jobs.c.workflow == self.workflow)
        if self.queue:
            where.append(jobs.c.queue == self.queue)
        if self.parent_id:
            where.append(jobs.c.parent_id == self.parent_id)
        if self.group_id:
            members = select(group_jobs.c.job_id).where(group_jobs.c.group_id == self.group_id)
            where.append(jobs.c.id.in_(members))
        text = (self.search or "").strip()
        if text:
            # Ids and keys match by prefix (an index range); errors by substring.
            where.append(
                or_(
                    jobs.c.id.startswith(text, autoescape=True),
                    jobs.c.key.startswith(text, autoescape=True),
                    jobs.c.error.contains(text, autoescape=True),
                )
            )
        return where

    @property
    def only_status(self) -> bool:
        """True when at most the status is filtered (totals then come from the counters)."""
        return not (
            self.workflow
            or self.queue
            or (self.search or "").strip()
            or self.parent_id
            or self.group_id
        )


def _row_columns() -> list[ColumnElement]:
    """A table row: the job summary, the expected steps and fan-out counts, in one select.

    Expected steps come from the ``steps=`` option or else the last successful run of
    the same workflow (a correlated look-up on ``ix_nbjobs_jobs_workflow``); a waiting
    fan-out parent also gets its children done over total (``ix_nbjobs_jobs_parent``).
    """
    last_ok = jobs.alias("last_ok")
    learned = (
        select(last_ok.c.steps_done)
        .where(
            last_ok.c.workflow == jobs.c.workflow,
            last_ok.c.status == SUCCEEDED_SQL,  # inline: the partial ix_nbjobs_jobs_succeeded
        )
        .order_by(last_ok.c.created_at.desc())
        .limit(1)
        .scalar_subquery()
    )
    kid = jobs.alias("kid")
    waiting = jobs.c.status == Status.WAITING.value
    kids_total = select(func.count()).where(kid.c.parent_id == jobs.c.id).scalar_subquery()
    kids_done = (
        select(func.count())
        .where(kid.c.parent_id == jobs.c.id, kid.c.status.in_(FINISHED))
        .scalar_subquery()
    )
    # The code of the newest job of the same workflow, for unfinished rows only (see
    # nbjobs.jobs.row_code_changed): a newer submission means newer code.
    newest = jobs.alias("newest")
    latest_code = (
        select(newest.c.code_fingerprint)
        # The newest job only (one index step), even when its fingerprint is unknown:
        # skipping NULLs could walk every job of the workflow.
        .where(newest.c.workflow == jobs.c.workflow)
        .order_by(newest.c.created_at.desc())
        .limit(1)
        .scalar_subquery()
    )
    summary = [c for c in JOB_SUMMARY if c.name not in ("error", "lease_token")]
    return [
        *summary,
        func.substr(jobs.c.error, 1, ERROR_PREVIEW).label("error"),
        func.coalesce(jobs.c.steps_expected, learned).label("expected_steps"),
        case((waiting, kids_total), else_=literal(None)).label("children_total"),
        case((waiting, kids_done), else_=literal(None)).label("children_done"),
        case((jobs.c.status.in_(ACTIVE), latest_code), else_=literal(None)).label(
            "latest_fingerprint"
        ),
    ]


class ViewQueries(CountQueries):
    """Read-only queries for the dashboard: pages of jobs, what changed, a job's detail
    and tree (the counters are in :mod:`.counts`)."""

    def workflow_names(self) -> list[str]:
        """Distinct workflows: a loose index scan (one seek per name, not per job)."""
        step = select(func.min(jobs.c.workflow).label("name")).cte("names", recursive=True)
        following = select(func.min(jobs.c.workflow)).where(jobs.c.workflow > step.c.name)
        step = step.union_all(select(following.scalar_subquery()).where(step.c.name.is_not(None)))
        with self._read() as conn:
            names = conn.execute(select(step.c.name)).scalars()
            return [n for n in names if n is not None]

    def queue_names(self) -> list[str]:
        """Queues known from active jobs, the queues table and live workers."""
        return [q["queue"] for q in self.queue_depths()]

    # -- the jobs table ----------------------------------------------------------------
    def jobs_page(
        self,
        filters: JobFilter = JobFilter(),
        *,
        sort: str = "created",
        descending: bool = True,
        limit: int = 25,
        offset: int = 0,
    ) -> Sequence[Row]:
        """One page of table rows (see :func:`nbjobs.jobs.row_progress`) in one query.

        The page's ids are chosen first on the sort's index (``LIMIT``/``OFFSET`` over ids
        alone), and only those rows get their progress columns computed: a deep page
        then costs the skipped index entries, not the skipped rows' look-ups.  Sorting by
        finish time lists finished jobs only.
        """
        if sort not in SORTS:
            raise ValueError(f"unknown sort {sort!r}; one of {', '.join(SORTS)}")
        column = SORTS[sort]
        where = filters.clauses()
        if sort == "finished":
            where.append(jobs.c.finished_at.is_not(None))
        order = [column.desc(), jobs.c.id.desc()] if descending else [column, jobs.c.id]
        ids = (
            select(jobs.c.id).where(*where).order_by(*order).limit(limit).offset(offset)
        ).subquery("page")
        stmt = (
            select(*_row_columns())
            .select_from(jobs.join(ids, ids.c.id == jobs.c.id))
            .order_by(*order)
        )
        with self._read() as conn:
            return conn.execute(stmt).all()

    def count_matching(self, filters: JobFilter, *, cap: int = 10_000) -> tuple[int, bool]:
        """(count, exact): jobs matching ``filters``, counted up to ``cap``.

        Counting a million rows takes too long for a once-a-second refresh, so the count
        stops at ``cap`` and ``exact`` is False beyond it ("more than 10,000").
        """
        inner = select(literal(1).label("one")).where(*filters.clauses()).limit(cap + 1)
        with self._read() as conn:
            n = conn.execute(select(func.count()).select_from(inner.subquery())).scalar() or 0
        return (min(n, cap), n <= cap)

    def jobs_matching(
        self, filters: JobFilter, statuses: Sequence[str], *, cap: int = 10_000
    ) -> tuple[Sequence[Row], bool]:
        """(rows of ``id`` and ``status``, complete): the jobs a bulk action on the table's
        filter would reach, among ``statuses`` (and the filter's own statuses, if any),
        newest first, at most ``cap`` of them; ``complete`` is False when more match.

        What the confirmation counts is what the action then acts on: the dashboard
        keeps these ids rather than evaluating the filter a second time.
        """
        wanted = [s for s in statuses if not filters.status or s in filters.status]
        if not wanted:
            return [], True
        where = [*filters.clauses(), jobs.c.status.in_(wanted)]
        stmt = (
            select(jobs.c.id, jobs.c.status)
            .where(*where)
            .order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
            .limit(cap + 1)
        )
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        return rows[:cap], len(rows) <= cap

    def jobs_rows(self, job_ids: Sequence[str]) -> Sequence[Row]:
        """Table rows of the given jobs (to patch the rows a page shows)."""
        ids = list(job_ids)
        if not ids:
            return []
        with self._read() as conn:
            return conn.execute(select(*_row_columns()).where(jobs.c.id.in_(ids))).all()

    def latest_update(self) -> float | None:
        """The newest ``updated_at`` (the first watermark of a dashboard)."""
        with self._read() as conn:
            return conn.execute(select(func.max(jobs.c.updated_at))).scalar()

    def jobs_changed_since(self, since: float, *, limit: int = 2000) -> Sequence[Row]:
        """Jobs whose ``updated_at`` is after ``since``, oldest change first, at most ``limit``.

        A range scan of ``ix_nbjobs_jobs_updated``: an idle system costs one index seek.
        The caller keeps the newest ``updated_at`` seen as its next watermark.
        """
        stmt = (
            select(
                jobs.c.id,
                jobs.c.status,
                jobs.c.workflow,
                jobs.c.queue,
                jobs.c.parent_id,
                jobs.c.root_id,
                jobs.c.created_at,
                jobs.c.updated_at,
            )
            .where(jobs.c.updated_at > since)
            .order_by(jobs.c.updated_at)
            .limit(limit)
        )
        with self._read() as conn:
            return conn.execute(stmt).all()

    # -- one job -----------------------------------------------------------------------
    def _cut_columns(self, table: Any) -> list[Any]:
        """``table``'s columns, its stored values and texts cut in SQL to what the detail
        view shows (``DETAIL_CHARS``), each with its full length as ``<name>_length``."""
        length = func.char_length if self.dialect.name == "mysql" else func.length
        columns: list[Any] = []
        for column in table.c:
            limit = DETAIL_CHARS.get(column.name)
            if limit is None:
                columns.append(column)
            else:
                columns.append(func.substr(column, 1, limit).label(column.name))
                columns.append(length(column).label(f"{column.name}_length"))
        return columns

    def job_detail(self, job_id: str) -> dict[str, Any]:
        """Everything the detail view shows, read in one transaction.

        ``job`` (the row, progress columns included), ``checkpoints``, ``attempts``,
        ``step_tries`` (the recorded tries of steps with retries), ``signals`` and
        ``children`` (status -> count).  Stored values and texts come cut
        to ``DETAIL_CHARS`` by the database, with their full length beside them
        (``input_length``...): one click on a job must not pull its 16 MiB values.
        """
        from ..errors import UnknownJob

        extra = [c for c in _row_columns() if c.name not in jobs.c]
        with self._read() as conn:
            job = conn.execute(
                select(*self._cut_columns(jobs), *extra).where(jobs.c.id == job_id)
            ).first()
            if job is None:
                raise UnknownJob(f"no job with id {job_id!r}")
            steps = conn.execute(
                select(*self._cut_columns(checkpoints))
                .where(checkpoints.c.job_id == job_id)
                .order_by(checkpoints.c.seq)
            ).all()
            tries = conn.execute(
                select(*self._cut_columns(attempts))
                .where(attempts.c.job_id == job_id)
                .order_by(attempts.c.attempt)
            ).all()
            step_rows = conn.execute(
                select(*self._cut_columns(step_tries))
                .where(step_tries.c.job_id == job_id)
                .order_by(step_tries.c.attempt, step_tries.c.started_at, step_tries.c.try_number)
            ).all()
            sigs = conn.execute(
                select(*self._cut_columns(signals))
                .where(signals.c.job_id == job_id)
                .order_by(signals.c.id)
            ).all()
            kids: dict[str, int] = dict(
                conn.execute(
                    select(jobs.c.status, func.count())
                    .where(jobs.c.parent_id == job_id)
                    .group_by(jobs.c.status)
                ).all()
            )
        return dict(
            job=job,
            checkpoints=steps,
            attempts=tries,
            step_tries=step_rows,
            signals=sigs,
            children=kids,
        )

    def checkpoint_previews(self, job_id: str) -> Sequence[Row]:
        """The job's checkpoints in order, each stored value cut to ``DETAIL_CHARS`` with
        its full length as ``value_length`` (a preview: no artifact is loaded);
        ``UnknownJob`` when there is no such job."""

        return self._job_rows(
            select(*self._cut_columns(checkpoints))
            .where(checkpoints.c.job_id == job_id)
            .order_by(checkpoints.c.seq),
            job_id,
        )

    def job_tree(self, job_id: str, *, depth: int = 2, cap: int = 50) -> dict[str, Any]:
        """A job and its descendants ``depth`` levels down, for the fan-out tree.

        Each node is ``{"job": row, "counts": {status: n}, "total": n, "children":
        [...], "hidden": {status: n}}``: at most ``cap`` children per node are listed,
        the rest only counted, so a fan-out of thousands stays a small answer.  One query
        per level, however many parents that level has.
        """
        from ..errors import UnknownJob

        cols = [
            jobs.c.id,
            jobs.c.workflow,
            jobs.c.status,
            jobs.c.parent_id,
            jobs.c.fanout,
            jobs.c.fanout_index,
            jobs.c.steps_done,
            func.substr(jobs.c.error, 1, 200).label("error"),
        ]
        with self._read() as conn:
            root = conn.execute(select(*cols).where(jobs.c.id == job_id)).first()
            if root is None:
                raise UnknownJob(f"no job with id {job_id!r}")
            top = _node(root)
            level = {root.id: top}
            for _ in range(depth):
                if not level:
                    break
                parents = list(level)
                counts = conn.execute(
                    select(jobs.c.parent_id, jobs.c.status, func.count())
                    .where(jobs.c.parent_id.in_(parents))
                    .group_by(jobs.c.parent_id, jobs.c.status)
                ).all()
                for parent, status, n in counts:
                    node = level[parent]
                    node["counts"][status] = n
                    node["total"] += n
                rank = (
                    func.row_number()
                    .over(
                        partition_by=jobs.c.parent_id,
                        order_by=(jobs.c.fanout_index, jobs.c.id),
                    )
                    .label("rank")
                )
                ranked = select(*cols, rank).where(jobs.c.parent_id.in_(parents)).subquery()
                rows = conn.execute(
                    select(ranked)
                    .where(ranked.c.rank <= cap)
                    .order_by(ranked.c.parent_id, ranked.c.rank)
                ).all()
                following: dict[str, dict[str, Any]] = {}
                for r in rows:
                    child = _node(r)
                    level[r.parent_id]["children"].append(child)
                    following[r.id] = child
                for node in level.values():
                    listed: dict[str, int] = {}
                    for child in node["children"]:
                        s = child["job"].status
                        listed[s] = listed.get(s, 0) + 1
                    node["hidden"] = {
                        s: n - listed.get(s, 0)
                        for s, n in node["counts"].items()
                        if n - listed.get(s, 0) > 0
                    }
                level = following
        return top

    # -- schedules ---------------------------------------------------------------------
    def schedules_overview(self) -> Sequence[Row]:
        """Every schedule with the status of the job its last tick made."""
        last = jobs.alias("last_job")
        stmt = (
            select(
                schedules.c.name,
                schedules.c.workflow,
                schedules.c.cron,
                schedules.c.timezone,
                schedules.c.queue,
                schedules.c.paused,
                schedules.c.next_fire_at,
                schedules.c.last_fire_at,
                schedules.c.last_job_id,
                last.c.status.label("last_status"),
            )
            .select_from(schedules.outerjoin(last, last.c.id == schedules.c.last_job_id))
            .order_by(schedules.c.name)
        )
        with self._read() as conn:
            return conn.execute(stmt).all()


def _node(row: Row) -> dict[str, Any]:
    return {"job": row, "counts": {}, "total": 0, "children": [], "hidden": {}}


__all__ = ["SORTS", "JobFilter", "ViewQueries"]
