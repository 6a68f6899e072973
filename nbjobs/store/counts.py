"""The dashboard's counters: jobs per status, per queue and per time bucket.

Counting stays cheap at a million jobs: the active statuses are index ranges, the
finished ones are counted once and then only their change (``job_counts``), and the
throughput narrows its rows by the ``updated_at`` index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.engine import Connection, Row
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import GenericFunction
from sqlalchemy.types import Integer

from ..jobs import ACTIVE, FINISHED, Status
from ..schema import QUEUED_SQL, SUCCEEDED_SQL, jobs, meta, queues, workers
from .core import EPOCH_KEY
from .holds import HoldQueries

#: How far behind "now" the settled counts of finished jobs stay: longer than any
#: transaction stamping ``updated_at`` takes to commit, and than the clock offsets left
#: between processes after each corrects by the database clock.
SETTLE_SECONDS = 5.0


def _add(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in {*a, *b}}


class _Floor(GenericFunction):
    """``floor(x)`` for the non-negative epoch values bucketed here, on every database."""

    type = Integer()
    name = "floor"
    inherit_cache = True


@compiles(_Floor, "sqlite")
def _floor_sqlite(element: _Floor, compiler: Any, **kw: Any) -> str:
    # SQLite has floor() only when built with its math functions; CAST truncates, which is
    # floor for the positive times bucketed here.
    return f"CAST({compiler.process(element.clauses, **kw)} AS INTEGER)"


class CountQueries(HoldQueries):
    """Jobs counted per status, queue and time bucket, for the dashboard's overview."""

    #: (epoch, watermark, finished counts at or below it): see ``job_counts``.
    _settled: tuple[str | None, float, dict[str, int]] | None = None

    # -- overview ----------------------------------------------------------------------
    def active_counts(self) -> dict[str, int]:
        """Jobs per active status (queued, running, waiting): index ranges, always cheap."""
        with self._read() as conn:
            return self._count_active(conn)

    def job_counts(self) -> dict[str, int]:
        """Jobs per status, every status present (zeros included), exact.

        Counting a million finished jobs takes tens of milliseconds on PostgreSQL, too
        slow once a second, so finished jobs are counted once and then only the change:
        a finished job stays finished until a retry queues it again or a purge deletes
        it, and both change the ``finished_epoch`` meta row (``_unsettle``).  The
        settled counts cover jobs last updated before a watermark ``SETTLE_SECONDS`` in
        the past (so no transaction still committing can land below it); each call
        moves the watermark forward by counting the slice above it on the
        ``updated_at`` index, and counts everything above it afresh.  Active statuses
        are counted directly on their index ranges.  The settled counts keep the epoch
        read first: a retry or purge committing while this runs makes the next call
        count afresh.
        """
        with self._read() as conn:
            epoch = self._finished_epoch(conn)
            settled = self._settled
            settle_at = self.now() - SETTLE_SECONDS
            if settled is not None and settled[0] == epoch:
                settle_at = max(settle_at, settled[1])
            fresh = self._count_finished(conn, settle_at, None)
            if settled is None or settled[0] != epoch:
                settled = (epoch, settle_at, self._count_settled(conn, settle_at, fresh))
            elif settle_at > settled[1]:
                more = self._count_finished(conn, settled[1], settle_at)
                settled = (epoch, settle_at, _add(settled[2], more))
            active = self._count_active(conn)
        self._settled = settled
        counts = dict.fromkeys((s.value for s in Status), 0)
        counts.update(_add(settled[2], fresh))
        counts.update(active)
        return counts

    def _count_active(self, conn: Connection) -> dict[str, int]:
        rows = conn.execute(
            select(jobs.c.status, func.count())
            .where(jobs.c.status.in_(ACTIVE))
            .group_by(jobs.c.status)
        )
        return {s: n for s, n in rows}

    def _finished_epoch(self, conn: Connection) -> str | None:
        return conn.execute(select(meta.c.value).where(meta.c.key == EPOCH_KEY)).scalar()

    def _count_settled(
        self, conn: Connection, until: float, later: Mapping[str, int]
    ) -> dict[str, int]:
        """Finished jobs per status last updated at or before ``until`` (the first count).

        Where a read transaction is one snapshot and ``count(*)`` of a table is cheap
        (SQLite counts a b-tree without reading rows), succeeded is the total minus the
        other statuses, each an index range, minus ``later`` (what finished after
        ``until``, counted in the same transaction); a server database counts it in one
        statement, which is its own snapshot.
        """
        if not self.dialect.snapshot_reads:
            return self._count_finished(conn, None, until)
        total = conn.execute(select(func.count()).select_from(jobs)).scalar() or 0
        others: dict[str, int] = dict(
            conn.execute(
                select(jobs.c.status, func.count())
                .where(jobs.c.status != SUCCEEDED_SQL)
                .group_by(jobs.c.status)
            ).all()
        )
        finished = {s: others.get(s, 0) for s in FINISHED}
        finished[Status.SUCCEEDED.value] = total - sum(others.values())
        return {s: n - later.get(s, 0) for s, n in finished.items()}

    def _count_finished(
        self, conn: Connection, after: float | None, until: float | None
    ) -> dict[str, int]:
        """Finished jobs per status last updated in (after, until]."""
        if after is None:
            rows = conn.execute(
                select(jobs.c.status, func.count())
                .where(jobs.c.status.in_(FINISHED), jobs.c.updated_at <= until)
                .group_by(jobs.c.status)
            )
            return {s: n for s, n in rows}
        # A recent slice: a range of the updated_at index, counted per status without a
        # GROUP BY, which would tempt a planner without statistics (SQLite) into walking
        # every finished job in the status index instead.
        clauses = [jobs.c.updated_at > after]
        if until is not None:
            clauses.append(jobs.c.updated_at <= until)
        sums = [func.sum(case((jobs.c.status == s, 1), else_=0)) for s in FINISHED]
        row = conn.execute(select(*sums).where(*clauses)).one()
        return {s: int(n or 0) for s, n in zip(FINISHED, row, strict=True)}

    def throughput(self, *, since: float, bucket_seconds: int = 60) -> Sequence[Row]:
        """Finished jobs per time bucket, workflow and status since ``since``.

        Rows are (bucket start in epoch seconds, workflow, status, count); call it again
        with a recent ``since`` to update only the latest buckets.  A job's
        ``updated_at`` is never before its ``finished_at``, so the ``updated_at`` index
        narrows the rows (no finish-time index to maintain on the hot path).
        """
        bucket = _Floor(jobs.c.finished_at / bucket_seconds)
        stmt = (
            select(
                (bucket * bucket_seconds).label("bucket"),
                jobs.c.workflow,
                jobs.c.status,
                func.count().label("n"),
            )
            # Only terminal jobs have a finish time; no status condition, so that the
            # planner walks the updated_at index rather than a status one.
            .where(jobs.c.updated_at >= since, jobs.c.finished_at >= since)
            .group_by(bucket, jobs.c.workflow, jobs.c.status)
            .order_by(bucket)
        )
        with self._read() as conn:
            return conn.execute(stmt).all()

    def queue_depths(self) -> list[dict[str, Any]]:
        """Per queue: queued, ready now, running and waiting jobs, whether it is paused,
        its limits (``concurrency``, ``rate``: None without) and its ready jobs that
        limits hold back now (``held``, see :meth:`HoldQueries.held_counts`).

        Queues with no active jobs appear when they are paused or a live worker serves
        them, so an idle queue is shown rather than vanishing.
        """
        now = self.now()
        # Queued jobs are counted from the partial claim index alone (status as an inline
        # literal so the planner can use it); running and waiting jobs are few.
        queued = (
            select(
                jobs.c.queue,
                func.count().label("queued"),
                func.sum(case((jobs.c.run_at <= now, 1), else_=0)).label("ready"),
            )
            .where(jobs.c.status == QUEUED_SQL)
            .group_by(jobs.c.queue)
        )
        busy = (
            select(jobs.c.queue, jobs.c.status, func.count().label("n"))
            .where(jobs.c.status.in_([Status.RUNNING.value, Status.WAITING.value]))
            .group_by(jobs.c.queue, jobs.c.status)
        )
        depth: dict[str, dict[str, int]] = {}
        with self._read() as conn:
            for r in conn.execute(queued):
                depth[r.queue] = dict(queued=int(r.queued), ready=int(r.ready or 0))
            for r in conn.execute(busy):
                depth.setdefault(r.queue, {})[r.status] = int(r.n)
            paused = {r.name: bool(r.paused) for r in conn.execute(select(queues))}
            served = (
                conn.execute(select(workers.c.queues).where(workers.c.stopped_at.is_(None)))
                .scalars()
                .all()
            )  # read now: DuckDB drops a pending result at the next statement
            held = self.held_counts(conn, now)
            queue_limits = {
                lim.name: lim for lim in self.list_limits_in(conn) if lim.kind == "queue"
            }
            names = set(depth) | set(paused) | set(queue_limits)
            for text in served:
                names.update(q for q in text.split(",") if q)
        out = []
        for name in sorted(names):
            counts = depth.get(name, {})
            out.append(
                dict(
                    queue=name,
                    queued=counts.get("queued", 0),
                    ready=counts.get("ready", 0),
                    running=counts.get(Status.RUNNING.value, 0),
                    waiting=counts.get(Status.WAITING.value, 0),
                    paused=paused.get(name, False),
                    concurrency=getattr(queue_limits.get(name), "concurrency", None),
                    rate=getattr(queue_limits.get(name), "rate", None),
                    held=held.get(name, 0),
                )
            )
        return out
