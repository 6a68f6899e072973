"""Outcome hooks: which outcomes still need their hooks run, and the leases on running them.

An *outcome* is a finished job row (succeeded, failed, cancelled), named by the job and
its ``finished_at``: a retry that finishes again is another outcome.  Outcomes are read
from the job rows, never signalled, so an outcome recorded anywhere (a worker, a cancel
from a notebook, the reaper giving up) is found.  Nothing here touches the job rows or
the statements of the hot path: the scan reads the ``updated_at`` index (a finished job's
``updated_at`` is never before its ``finished_at``), and the runs are rows of their own
(``nbjobs_hook_runs``), whose writes never stamp ``jobs.updated_at``.  The rules of the
scan and of the leases are in :mod:`nbjobs.runtime.hooks`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from sqlalchemy import and_, exists, func, insert, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError

from ..schema import hook_runs, hooks, jobs
from .core import CoreStore


def _run_key(job_id: str, outcome_at: float) -> tuple:
    return hook_runs.c.job_id == job_id, hook_runs.c.outcome_at == outcome_at


class HookQueries(CoreStore):
    """The hooks' bookkeeping: the events served, the outcomes not yet hooked, the runs."""

    def serve_hook_events(
        self, events: Iterable[str], *, forget_seconds: float
    ) -> dict[str, tuple[float, float]]:
        """Record that a worker serves hooks for ``events``; returns, per event, (since,
        scanned_to).

        The first worker to serve an event starts it at now (no hook fires for older
        outcomes); an event no worker served for ``forget_seconds`` starts at now again.
        """
        marks: dict[str, tuple[float, float]] = {}
        for event in events:
            for attempt in range(2):
                try:
                    marks[event] = self._serve_hook_event(event, forget_seconds)
                    break
                except IntegrityError:
                    if attempt:  # two workers made the row at once: the second reads it
                        raise
        return marks

    def _serve_hook_event(self, event: str, forget_seconds: float) -> tuple[float, float]:
        now = self.now()
        with self._write() as conn:
            row = conn.execute(select(hooks).where(hooks.c.event == event)).first()
            if row is None:
                conn.execute(
                    insert(hooks).values(event=event, since=now, scanned_to=now, seen_at=now)
                )
                return now, now
            if row.seen_at < now - forget_seconds:
                conn.execute(
                    update(hooks)
                    .where(hooks.c.event == event)
                    .values(since=now, scanned_to=now, seen_at=now)
                )
                return now, now
            conn.execute(
                update(hooks).where(hooks.c.event == event).values(seen_at=max(now, row.seen_at))
            )
            return row.since, row.scanned_to

    def hook_marks(self, events: Sequence[str]) -> dict[str, tuple[float, float]]:
        """Per event served: (since, scanned_to), as the last worker left them."""
        with self._read() as conn:
            rows = conn.execute(select(hooks).where(hooks.c.event.in_(list(events)))).all()
        return {r.event: (r.since, r.scanned_to) for r in rows}

    def advance_hook_scan(self, events: Sequence[str], scanned_to: float) -> None:
        """Every outcome of ``events`` whose job row was updated before ``scanned_to`` has
        a run row now: later scans start there (never moved back)."""
        with self._write() as conn:
            conn.execute(
                update(hooks)
                .where(hooks.c.event.in_(list(events)), hooks.c.scanned_to < scanned_to)
                .values(scanned_to=scanned_to)
            )

    def unhooked_outcomes(
        self, *, after: float, since: Mapping[str, float], limit: int
    ) -> Sequence[Row]:
        """Finished jobs updated at or after ``after``, with a status among ``since``'s
        events and finished at or after that event's time, that have no run row for that
        finish, oldest update first: (id, status, finished_at, updated_at).

        A range of the ``updated_at`` index.  The status is compared through ``lower()``,
        which no index holds, so that no planner walks the (status, created_at) index
        over every finished job and sorts them instead (SQLite would).
        """
        no_run = ~exists().where(
            hook_runs.c.job_id == jobs.c.id, hook_runs.c.outcome_at == jobs.c.finished_at
        )
        status = func.lower(jobs.c.status)
        served = or_(*(and_(status == e, jobs.c.finished_at >= t) for e, t in since.items()))
        stmt = (
            select(jobs.c.id, jobs.c.status, jobs.c.finished_at, jobs.c.updated_at)
            .where(
                jobs.c.updated_at >= after,
                jobs.c.finished_at >= min(since.values()),
                served,
                no_run,
            )
            .order_by(jobs.c.updated_at)
            .limit(limit)
        )
        with self._read() as conn:
            return conn.execute(stmt).all()

    def claim_hook_run(
        self, *, job_id: str, outcome_at: float, event: str, token: str, lease_seconds: float
    ) -> bool:
        """Take the hooks of one outcome under a lease; False when a run row exists."""
        try:
            with self._write() as conn:
                conn.execute(
                    insert(hook_runs).values(
                        job_id=job_id,
                        outcome_at=outcome_at,
                        event=event,
                        claimed_by=token,
                        claimed_until=self.now() + lease_seconds,
                    )
                )
        except IntegrityError:
            return False
        return True

    def reclaim_hook_runs(
        self, *, events: Sequence[str], token: str, lease_seconds: float, limit: int
    ) -> list[tuple[str, float, str]]:
        """Take over up to ``limit`` runs of ``events`` whose lease expired (their worker
        died, or stopped before it started them); returns (job_id, outcome_at, event).

        A run whose job no longer has that outcome (retried since, or purged) is marked
        done instead: its handle would show another state.
        """
        now = self.now()
        stmt = (
            select(
                hook_runs.c.job_id,
                hook_runs.c.outcome_at,
                hook_runs.c.event,
                hook_runs.c.claimed_by,
                jobs.c.status,
                jobs.c.finished_at,
            )
            .select_from(hook_runs.outerjoin(jobs, jobs.c.id == hook_runs.c.job_id))
            .where(hook_runs.c.claimed_until < now, hook_runs.c.event.in_(list(events)))
            .limit(limit)
        )
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        taken = []
        for r in rows:
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
                        *_run_key(r.job_id, r.outcome_at),
                        hook_runs.c.claimed_by == r.claimed_by,
                        hook_runs.c.claimed_until < now,
                        hook_runs.c.done_at.is_(None),
                    )
                    .values(**values)
                ).rowcount
            if changed and not gone:
                taken.append((r.job_id, r.outcome_at, r.event))
        return taken

    def renew_hook_runs(
        self, runs: Iterable[tuple[str, float]], *, token: str, lease_seconds: float
    ) -> set[tuple[str, float]]:
        """Extend the leases ``token`` holds on ``runs``; returns those it lost."""
        lost = set()
        until = self.now() + lease_seconds
        with self._write() as conn:
            for job_id, outcome_at in runs:
                changed = conn.execute(
                    update(hook_runs)
                    .where(
                        *_run_key(job_id, outcome_at),
                        hook_runs.c.claimed_by == token,
                        hook_runs.c.done_at.is_(None),
                    )
                    .values(claimed_until=until)
                ).rowcount
                if not changed:
                    lost.add((job_id, outcome_at))
        return lost

    def release_hook_runs(self, runs: Iterable[tuple[str, float]], *, token: str) -> None:
        """Give up runs not started (a stopping worker): another worker takes them now."""
        now = self.now()
        with self._write() as conn:
            for job_id, outcome_at in runs:
                conn.execute(
                    update(hook_runs)
                    .where(
                        *_run_key(job_id, outcome_at),
                        hook_runs.c.claimed_by == token,
                        hook_runs.c.done_at.is_(None),
                    )
                    .values(claimed_until=now - 1.0)
                )

    def finish_hook_run(self, *, job_id: str, outcome_at: float, token: str) -> bool:
        """Record that the hooks of an outcome ran; False when ``token`` lost the lease
        (another worker may be running them again)."""
        now = self.now()
        with self._write() as conn:
            return (
                conn.execute(
                    update(hook_runs)
                    .where(
                        and_(*_run_key(job_id, outcome_at)),
                        hook_runs.c.claimed_by == token,
                        hook_runs.c.done_at.is_(None),
                    )
                    .values(done_at=now, claimed_until=None)
                ).rowcount
                == 1
            )

    def job_hook_runs(self, job_id: str) -> Sequence[Row]:
        """The hook runs of one job, oldest outcome first."""
        with self._read() as conn:
            return conn.execute(
                select(hook_runs)
                .where(hook_runs.c.job_id == job_id)
                .order_by(hook_runs.c.outcome_at)
            ).all()
