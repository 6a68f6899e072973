"""The reads behind ``/metrics`` (:mod:`nbjobs.metrics`): fleet-wide, bounded, indexed.

Every number comes from the database, so any number of workers and dashboards scraped
at once report the same fleet values.  Each scrape costs a handful of short reads:

* active jobs per queue and status: :meth:`CountQueries.queue_depths` (the claim index);
* finished jobs per queue, workflow and status, with their failures and reclaims:
  counted once per process and then only the change, like the dashboard's counters
  (:meth:`finished_totals`);
* the recent window (submit-to-start delays, step durations, attempt outcomes): the
  newest :data:`WINDOW_JOBS` jobs by the ``updated_at`` index, never a table scan;
* live workers: the ``heartbeat_at`` index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.sql.expression import ColumnElement

from ..jobs import FINISHED
from ..schema import attempts, checkpoints, jobs, workers
from .counts import SETTLE_SECONDS, CountQueries

#: The most jobs a windowed read looks at: the most recently updated ones.  A window
#: with more jobs than this reads the newest (a sample), so a scrape stays cheap at any
#: throughput.
WINDOW_JOBS = 10_000

#: (queue, workflow, status) of finished jobs -> (jobs, failures, reclaims).
Totals = dict[tuple[str, str, str], tuple[int, int, int]]


def _add_totals(a: Mapping[Any, tuple[int, ...]], b: Mapping[Any, tuple[int, ...]]) -> Totals:
    out: Totals = {}
    for key in {*a, *b}:
        x, y = a.get(key, (0, 0, 0)), b.get(key, (0, 0, 0))
        out[key] = (x[0] + y[0], x[1] + y[1], x[2] + y[2])
    return out


def _buckets(value: ColumnElement, bounds: Sequence[float]) -> list[ColumnElement]:
    """Cumulative bucket counts (``value <= bound``), their sum and their count."""
    sums: list[ColumnElement] = [
        func.sum(case((value <= bound, 1), else_=0)).label(f"b{i}")
        for i, bound in enumerate(bounds)
    ]
    return [*sums, func.sum(value).label("total"), func.count().label("n")]


def _histogram_rows(rows: Sequence[Any], bounds: Sequence[float]) -> dict[str, dict[str, Any]]:
    out = {}
    for r in rows:
        counts = [int(r[f"b{i}"] or 0) for i in range(len(bounds))]
        out[r["label"]] = dict(buckets=counts, sum=float(r["total"] or 0.0), count=int(r["n"]))
    return out


class MetricQueries(CountQueries):
    """What ``/metrics`` reports, read from the tables every worker shares."""

    #: (epoch, watermark, finished totals at or below it): see :meth:`finished_totals`.
    _settled_totals: tuple[str | None, float, Totals] | None = None

    def finished_totals(self) -> Totals:
        """Finished jobs per (queue, workflow, status), with their summed failures and
        reclaims: exact, and cheap after the first call.

        The same bookkeeping as :meth:`CountQueries.job_counts`: a finished job stays as
        it is until a retry queues it again or a purge deletes it, and both change the
        ``finished_epoch`` meta row.  The first call (and the first after such a change)
        counts every finished job once; later calls count only the jobs last updated
        since, on the ``updated_at`` index.  A purge lowers these totals.
        """
        with self._read() as conn:
            epoch = self._finished_epoch(conn)
            settled = self._settled_totals
            settle_at = self.now() - SETTLE_SECONDS
            if settled is not None and settled[0] == epoch:
                settle_at = max(settle_at, settled[1])
            fresh = self._finished_slice(conn, settle_at, None)
            if settled is None or settled[0] != epoch:
                settled = (epoch, settle_at, self._finished_slice(conn, None, settle_at))
            elif settle_at > settled[1]:
                more = self._finished_slice(conn, settled[1], settle_at)
                settled = (epoch, settle_at, _add_totals(settled[2], more))
        self._settled_totals = settled
        return _add_totals(settled[2], fresh)

    def _finished_slice(self, conn: Connection, after: float | None, until: float | None) -> Totals:
        """Finished jobs last updated in (after, until], per (queue, workflow, status)."""
        clauses: list[ColumnElement] = []
        if after is None:
            clauses.append(jobs.c.status.in_(FINISHED))
        else:
            # A recent slice: only the updated_at range in the WHERE clause, so that
            # the planner walks that index (the status is filtered below).
            clauses.append(jobs.c.updated_at > after)
        if until is not None:
            clauses.append(jobs.c.updated_at <= until)
        stmt = (
            select(
                jobs.c.queue,
                jobs.c.workflow,
                jobs.c.status,
                func.count(),
                func.sum(jobs.c.failures),
                func.sum(jobs.c.reclaims),
            )
            .where(*clauses)
            .group_by(jobs.c.queue, jobs.c.workflow, jobs.c.status)
        )
        return {
            (q, w, s): (int(n), int(f or 0), int(r or 0))
            for q, w, s, n, f, r in conn.execute(stmt)
            if s in FINISHED
        }

    def _recent_jobs(self, since: float, limit: int) -> Any:
        """The newest ``limit`` jobs updated at or after ``since`` (a derived table)."""
        return (
            select(jobs.c.id, jobs.c.queue, jobs.c.workflow, jobs.c.created_at, jobs.c.started_at)
            .where(jobs.c.updated_at >= since)
            .order_by(jobs.c.updated_at.desc())
            .limit(limit)
            .subquery("recent")
        )

    def start_delays(
        self, *, since: float, bounds: Sequence[float], limit: int = WINDOW_JOBS
    ) -> dict[str, dict[str, Any]]:
        """Per queue, the submit-to-start delays (``started_at - created_at``, seconds)
        of jobs first started at or after ``since``: cumulative counts per bound, sum
        and count.  A job's ``updated_at`` is never before its start, so the newest
        ``limit`` jobs by the ``updated_at`` index hold them all (unless more than
        ``limit`` jobs moved since)."""
        recent = self._recent_jobs(since, limit)
        delay = recent.c.started_at - recent.c.created_at
        stmt = (
            select(recent.c.queue.label("label"), *_buckets(delay, bounds))
            .where(recent.c.started_at >= since)
            .group_by(recent.c.queue)
        )
        with self._read() as conn:
            rows = [r._mapping for r in conn.execute(stmt)]
        return _histogram_rows(rows, bounds)

    def step_durations(
        self, *, since: float, bounds: Sequence[float], limit: int = WINDOW_JOBS
    ) -> dict[str, dict[str, Any]]:
        """Per workflow, the durations of steps (``kind = 'step'``) that finished at or
        after ``since``, among the newest ``limit`` jobs updated since then (each found
        by the checkpoints' primary key).  A step a worker has not yet counted on its
        job row (SQLite defers that touch to the end of the attempt) is seen once it
        has."""
        recent = self._recent_jobs(since, limit)
        duration = checkpoints.c.finished_at - checkpoints.c.started_at
        stmt = (
            select(recent.c.workflow.label("label"), *_buckets(duration, bounds))
            .select_from(recent.join(checkpoints, checkpoints.c.job_id == recent.c.id))
            .where(
                checkpoints.c.kind == "step",
                checkpoints.c.finished_at >= since,
                checkpoints.c.started_at.is_not(None),
            )
            .group_by(recent.c.workflow)
        )
        with self._read() as conn:
            rows = [r._mapping for r in conn.execute(stmt)]
        return _histogram_rows(rows, bounds)

    def attempt_outcomes(
        self, *, since: float, limit: int = WINDOW_JOBS
    ) -> dict[tuple[str, str], int]:
        """Attempts that ended at or after ``since``, per (workflow, outcome): failed
        (retried or not), lost (reclaimed from a dead worker), timeout, succeeded,
        suspended, cancelled.  Among the newest ``limit`` jobs updated since."""
        recent = self._recent_jobs(since, limit)
        stmt = (
            select(recent.c.workflow, attempts.c.outcome, func.count())
            .select_from(recent.join(attempts, attempts.c.job_id == recent.c.id))
            .where(attempts.c.finished_at >= since)
            .group_by(recent.c.workflow, attempts.c.outcome)
        )
        with self._read() as conn:
            return {(w, o): int(n) for w, o, n in conn.execute(stmt)}

    def worker_totals(self, *, alive_within: float) -> dict[str, int]:
        """Live workers (not stopped, heartbeat within ``alive_within`` seconds), their
        summed concurrency and the jobs they hold."""
        stmt = select(
            func.count(), func.sum(workers.c.concurrency), func.sum(workers.c.jobs_held)
        ).where(
            workers.c.heartbeat_at >= self.now() - alive_within,
            workers.c.stopped_at.is_(None),
        )
        with self._read() as conn:
            n, slots, held = conn.execute(stmt).one()
        return dict(alive=int(n or 0), slots=int(slots or 0), held=int(held or 0))
