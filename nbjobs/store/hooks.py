"""Outcome hooks: which outcomes a hook has not seen yet, and the leases on calling it.

An *outcome* is a finished job row (succeeded, failed, cancelled), named by the job and
its ``finished_at``: a retry that finishes again is another outcome.  Outcomes are read
from the job rows, never signalled, so an outcome recorded anywhere (a worker, a cancel
from a notebook, the reaper giving up) is found.  A hook is named by a string (by
default its ``module.qualname``); each (outcome, hook) gets one ``nbjobs_hook_runs`` row.

Nothing here touches the job rows or the statements of the hot path: the scan reads a
range of the ``updated_at`` index (a finished job's ``updated_at`` is never before its
``finished_at``), and the runs are rows of their own, whose writes never stamp
``jobs.updated_at``.  The rules of the scan and of the leases are in
:mod:`nbjobs.runtime.hooks`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import and_, exists, func, insert, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError

from ..schema import hook_runs, hooks, jobs
from .core import CoreStore

#: (event, hook name): what a worker serves.
Served = tuple[str, str]
#: (job id, outcome_at, hook name): one call of a hook for one outcome.
RunKey = tuple[str, float, str]


def _run_key(key: RunKey) -> tuple:
    job_id, outcome_at, hook = key
    return (
        hook_runs.c.job_id == job_id,
        hook_runs.c.outcome_at == outcome_at,
        hook_runs.c.hook == hook,
    )


def _is_served(served: Iterable[Served], table: Any = hooks) -> Any:
    return or_(*(and_(table.c.event == e, table.c.hook == h) for e, h in served))


class HookQueries(CoreStore):
    """The hooks' bookkeeping: the hooks served, the outcomes not yet seen, the runs."""

    def serve_hooks(
        self, served: Iterable[Served], *, forget_seconds: float
    ) -> dict[Served, tuple[float, float]]:
        """Record that a worker serves these (event, hook) pairs; returns, per pair,
        (since, scanned_to).

        The first worker to serve a hook starts it at now (it is not called for older
        outcomes); a hook no worker served for ``forget_seconds`` starts at now again.
        """
        marks: dict[Served, tuple[float, float]] = {}
        for pair in served:
            for attempt in range(2):
                try:
                    marks[pair] = self._serve_hook(pair, forget_seconds)
                    break
                except IntegrityError:
                    if attempt:  # two workers made the row at once: the second reads it
                        raise
        return marks

    def _serve_hook(self, pair: Served, forget_seconds: float) -> tuple[float, float]:
        now = self.now()
        event, hook = pair
        this = and_(hooks.c.event == event, hooks.c.hook == hook)
        with self._write() as conn:
            row = conn.execute(select(hooks).where(this)).first()
            if row is None:
                conn.execute(
                    insert(hooks).values(
                        event=event, hook=hook, since=now, scanned_to=now, seen_at=now
                    )
                )
                return now, now
            if row.seen_at < now - forget_seconds:
                conn.execute(
                    update(hooks).where(this).values(since=now, scanned_to=now, seen_at=now)
                )
                return now, now
            conn.execute(update(hooks).where(this).values(seen_at=max(now, row.seen_at)))
            return row.since, row.scanned_to

    def hook_marks(self, served: Sequence[Served]) -> dict[Served, tuple[float, float]]:
        """Per (event, hook) served: (since, scanned_to), as the last worker left them."""
        with self._read() as conn:
            rows = conn.execute(select(hooks).where(_is_served(served))).all()
        return {(r.event, r.hook): (r.since, r.scanned_to) for r in rows}

    def advance_hook_scan(self, served: Sequence[Served], scanned_to: float) -> None:
        """Every outcome of the ``served`` hooks whose job row was updated before
        ``scanned_to`` has its run rows now: later scans start there (never moved back)."""
        with self._write() as conn:
            conn.execute(
                update(hooks)
                .where(_is_served(served), hooks.c.scanned_to < scanned_to)
                .values(scanned_to=scanned_to)
            )

    def unhooked_outcomes(
        self, *, after: float, since: Mapping[Served, float], limit: int
    ) -> Sequence[Row]:
        """Finished jobs updated at or after ``after`` that one of the hooks of ``since``
        has not seen: an outcome of the hook's event, at or after the hook's time, with no
        run row of the hook.  Oldest update first: (id, status, finished_at, updated_at).

        A range of the ``updated_at`` index.  The status is compared through ``lower()``,
        which no index holds, so that no planner walks the (status, created_at) index
        over every finished job and sorts them instead (SQLite would).
        """
        status = func.lower(jobs.c.status)
        unseen = [
            and_(
                status == event,
                jobs.c.finished_at >= at,
                ~exists().where(
                    hook_runs.c.job_id == jobs.c.id,
                    hook_runs.c.outcome_at == jobs.c.finished_at,
                    hook_runs.c.hook == hook,
                ),
            )
            for (event, hook), at in since.items()
        ]
        stmt = (
            select(jobs.c.id, jobs.c.status, jobs.c.finished_at, jobs.c.updated_at)
            .where(
                jobs.c.updated_at >= after,
                jobs.c.finished_at >= min(since.values()),
                or_(*unseen),
            )
            .order_by(jobs.c.updated_at)
            .limit(limit)
        )
        with self._read() as conn:
            return conn.execute(stmt).all()

    def claim_hook_run(self, key: RunKey, *, event: str, token: str, lease_seconds: float) -> bool:
        """Take one hook's call for one outcome under a lease; False when its run row
        exists (another worker took it, or it ran)."""
        job_id, outcome_at, hook = key
        try:
            with self._write() as conn:
                conn.execute(
                    insert(hook_runs).values(
                        job_id=job_id,
                        outcome_at=outcome_at,
                        hook=hook,
                        event=event,
                        claimed_by=token,
                        claimed_until=self.now() + lease_seconds,
                    )
                )
        except IntegrityError:
            return False
        return True

    def reclaim_hook_runs(
        self, served: Sequence[Served], *, token: str, lease_seconds: float, limit: int
    ) -> list[tuple[RunKey, str]]:
        """Take over up to ``limit`` runs of the ``served`` hooks whose lease expired
        (their worker died, or stopped before it started them); returns (key, event).

        A run whose job no longer has that outcome (retried since, or purged) is marked
        done instead: its handle would show another state.
        """
        now = self.now()
        stmt = (
            select(
                hook_runs.c.job_id,
                hook_runs.c.outcome_at,
                hook_runs.c.hook,
                hook_runs.c.event,
                hook_runs.c.claimed_by,
                jobs.c.status,
                jobs.c.finished_at,
            )
            .select_from(hook_runs.outerjoin(jobs, jobs.c.id == hook_runs.c.job_id))
            .where(
                hook_runs.c.claimed_until < now,
                _is_served(served, hook_runs),
            )
            .limit(limit)
        )
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        taken = []
        for r in rows:
            key = (r.job_id, r.outcome_at, r.hook)
            gone = r.finished_at != r.outcome_at or r.status != r.event
            values = (
                dict(claimed_until=None, done_at=now)
                if gone
                else dict(claimed_by=token, claimed_until=now + lease_seconds)
            )
            with self._write() as conn:
                changed = conn.execute(
                    update(hook_runs)
                    .where(
                        *_run_key(key),
                        hook_runs.c.claimed_by == r.claimed_by,
                        hook_runs.c.claimed_until < now,
                        hook_runs.c.done_at.is_(None),
                    )
                    .values(**values)
                ).rowcount
            if changed and not gone:
                taken.append((key, r.event))
        return taken

    def renew_hook_runs(
        self, runs: Iterable[RunKey], *, token: str, lease_seconds: float
    ) -> set[RunKey]:
        """Extend the leases ``token`` holds on ``runs``; returns those it lost."""
        lost = set()
        until = self.now() + lease_seconds
        with self._write() as conn:
            for key in runs:
                changed = conn.execute(
                    update(hook_runs)
                    .where(
                        *_run_key(key),
                        hook_runs.c.claimed_by == token,
                        hook_runs.c.done_at.is_(None),
                    )
                    .values(claimed_until=until)
                ).rowcount
                if not changed:
                    lost.add(key)
        return lost

    def release_hook_runs(self, runs: Iterable[RunKey], *, token: str) -> None:
        """Give up runs not started (a stopping worker): another worker takes them now."""
        now = self.now()
        with self._write() as conn:
            for key in runs:
                conn.execute(
                    update(hook_runs)
                    .where(
                        *_run_key(key),
                        hook_runs.c.claimed_by == token,
                        hook_runs.c.done_at.is_(None),
                    )
                    .values(claimed_until=now - 1.0)
                )

    def finish_hook_run(self, key: RunKey, *, token: str) -> bool:
        """Record that a hook's call for an outcome returned; False when ``token`` lost
        the lease (another worker may call it again)."""
        with self._write() as conn:
            return (
                conn.execute(
                    update(hook_runs)
                    .where(
                        *_run_key(key),
                        hook_runs.c.claimed_by == token,
                        hook_runs.c.done_at.is_(None),
                    )
                    .values(done_at=self.now(), claimed_until=None)
                ).rowcount
                == 1
            )

    def job_hook_runs(self, job_id: str) -> Sequence[Row]:
        """The hook runs of one job, oldest outcome first."""
        with self._read() as conn:
            return conn.execute(
                select(hook_runs)
                .where(hook_runs.c.job_id == job_id)
                .order_by(hook_runs.c.outcome_at, hook_runs.c.hook)
            ).all()
