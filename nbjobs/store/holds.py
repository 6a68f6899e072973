"""Why a queued job waits: the limits (or the pause) that hold jobs back, per queue for
the dashboard and ``/metrics``, and per job for ``h.status_detail``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from sqlalchemy import func, or_, select, tuple_
from sqlalchemy.engine import Connection

from ..jobs import Status
from ..schema import QUEUED_SQL, RUNNING_SQL, jobs, limit_starts, limits, queues
from .limits import Limit, LimitQueries, limit_from_row


class HoldQueries(LimitQueries):
    """The jobs limits hold back, and the reasons."""

    def _hold_aliases(self, wf_names: Iterable[str]) -> dict[str, str]:
        """The workflow names that stand for a limited workflow: this process's
        ``workflow_aliases`` and, for a process that does not register the workflow
        (the submitting script's ``__main__`` reading a hold), each qualname the
        limited ``module.qualname`` may have, where only one limited workflow has it:
        what a worker's registry resolves (see ``Registry.get``)."""
        limited = set(wf_names)
        owners: dict[str, list[str]] = {}
        for name in limited:
            for tail in _qualnames([name]) - limited:
                owners.setdefault(tail, []).append(name)
        found = {tail: names[0] for tail, names in owners.items() if len(names) == 1}
        return {**found, **self.workflow_aliases}

    # -- why a job waits -------------------------------------------------------------------
    def held_counts(self, conn: Connection, now: float) -> dict[str, int]:
        """Per queue, its ready queued jobs that a limit holds back now: those of a full
        queue, of a full workflow, or of a full partition (the dashboard's and
        ``/metrics``' "held"); in ``conn``'s transaction."""
        found = {(lim.kind, lim.name): lim for lim in self.list_limits_in(conn)}
        if not found:
            return {}
        queue_names = [n for k, n in found if k == "queue"]
        wf_names = [n for k, n in found if k == "workflow"]
        running = select(jobs.c.queue, jobs.c.workflow, jobs.c.partition_key, func.count())
        running = running.where(jobs.c.status == RUNNING_SQL).group_by(
            jobs.c.queue, jobs.c.workflow, jobs.c.partition_key
        )
        per_queue: Counter[str] = Counter()
        per_wf: Counter[str] = Counter()
        per_part: Counter[tuple[str, str]] = Counter()
        # The limited workflows' jobs, with those stored under a qualname alias.
        aliases = self._hold_aliases(wf_names)
        stored_as = self._stored_names(wf_names, aliases)
        ready = (
            select(jobs.c.queue, jobs.c.workflow, jobs.c.partition_key, func.count())
            .where(
                jobs.c.status == QUEUED_SQL,
                jobs.c.run_at <= now,
                or_(jobs.c.queue.in_(queue_names), jobs.c.workflow.in_(stored_as)),
            )
            .group_by(jobs.c.queue, jobs.c.workflow, jobs.c.partition_key)
        )
        running_rows = conn.execute(running).all()
        ready_rows = conn.execute(ready).all()
        for q, stored, part, count in running_rows:
            wf = self._limit_name(stored, aliases)
            per_queue[q] += count
            per_wf[wf] += count
            if part is not None:
                per_part[(wf, part)] += count

        def full(lim: Limit, used: int) -> bool:
            if lim.concurrency is not None and used >= lim.concurrency:
                return True
            if lim.rate_count is None or lim.rate_seconds is None:
                return False
            starts = conn.execute(
                select(func.count()).where(
                    limit_starts.c.kind == lim.kind,
                    limit_starts.c.name == lim.name,
                    limit_starts.c.at > now - lim.rate_seconds,
                )
            ).scalar_one()
            return bool(starts >= lim.rate_count)

        full_queues = {n for n in queue_names if full(found[("queue", n)], per_queue[n])}
        full_wfs = {n for n in wf_names if full(found[("workflow", n)], per_wf[n])}
        held: Counter[str] = Counter()
        for q, stored, part, count in ready_rows:
            wf = self._limit_name(stored, aliases)
            lim = found.get(("workflow", wf))
            part_full = (
                lim is not None
                and lim.partition_concurrency is not None
                and part is not None
                and per_part[(wf, part)] >= lim.partition_concurrency
            )
            if q in full_queues or wf in full_wfs or part_full:
                held[q] += count
        return dict(held)

    def job_hold(self, job_id: str) -> str | None:
        """Why queued job ``job_id`` is not running now, in words (its queue is paused,
        a limit holds it back, it is not due yet), or None: it is not queued, or
        nothing holds it (a worker claims it at its next look)."""
        with self._read() as conn:
            row = conn.execute(
                select(
                    jobs.c.status,
                    jobs.c.queue,
                    jobs.c.workflow,
                    jobs.c.partition_key,
                    jobs.c.run_at,
                    queues.c.paused,
                )
                .select_from(jobs.outerjoin(queues, queues.c.name == jobs.c.queue))
                .where(jobs.c.id == job_id)
            ).first()
        if row is None or row.status != Status.QUEUED.value:
            return None
        if row.paused:
            return f"queue {row.queue!r} is paused"
        if row.run_at is not None and row.run_at > self.now():
            return "not due yet"
        return self.held_by(row.queue, row.workflow, row.partition_key)

    def held_by(self, queue: str, workflow: str, partition: str | None) -> str | None:
        """Which limit holds back a ready queued job of ``workflow`` in ``queue`` (and
        ``partition``) now, in words; None when none does."""
        now = self.now()
        with self._read() as conn:
            wf_names = conn.execute(
                select(limits.c.name).where(limits.c.kind == "workflow")
            ).scalars()
            aliases = self._hold_aliases(wf_names)
            workflow = self._limit_name(workflow, aliases)
            keys = [("queue", queue), ("workflow", workflow)]
            rows = conn.execute(
                select(limits).where(tuple_(limits.c.kind, limits.c.name).in_(keys))
            ).all()
            if not rows:
                return None
            found = {r.kind: limit_from_row(r) for r in rows}
            wl = found.get("workflow")
            running = self._running_counts(conn, queue, [workflow] if wl else [], aliases)
            for kind in ("queue", "workflow"):
                lim = found.get(kind)
                if lim is None:
                    continue
                used = running["queue"] if kind == "queue" else running["workflow"][workflow]
                what = f"{kind} {lim.name!r}"
                if lim.concurrency is not None and used >= lim.concurrency:
                    return (
                        f"held by the concurrency limit of {what} "
                        f"({used} of {lim.concurrency} running)"
                    )
                if lim.rate_count is not None and lim.rate_seconds is not None:
                    starts = conn.execute(
                        select(func.count()).where(
                            limit_starts.c.kind == kind,
                            limit_starts.c.name == lim.name,
                            limit_starts.c.at > now - lim.rate_seconds,
                        )
                    ).scalar_one()
                    if starts >= lim.rate_count:
                        return f"held by the rate limit of {what} ({lim.rate})"
            if wl is not None and wl.partition_concurrency is not None and partition is not None:
                used = running["partitions"].get(workflow, Counter())[partition]
                if used >= wl.partition_concurrency:
                    return (
                        f"held by the partition limit of workflow {workflow!r} "
                        f"(partition {partition!r}: {used} of {wl.partition_concurrency} running)"
                    )
        return None


def _qualnames(names: Iterable[str]) -> set[str]:
    """Every dotted tail of ``names`` (``a.b.f``: ``b.f`` and ``f``): the bare qualnames
    their jobs may be stored under (see ``HoldQueries._hold_aliases``)."""
    tails: set[str] = set()
    for name in names:
        parts = name.split(".")
        tails.update(".".join(parts[i:]) for i in range(1, len(parts)))
    return tails
