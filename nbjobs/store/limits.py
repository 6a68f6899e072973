"""Flow control inside the claim: concurrency, rate and partition limits, and expiry.

A limit is a row of ``nbjobs_limits``: a queue's (``app.set_queue``) or a workflow's
(``@app.workflow(concurrency=, rate=, partition_concurrency=)``, written by each worker
that registers the workflow).  The claim of a queue none of whose limits exist is the
plain claim plus one guard in its ``WHERE`` (:meth:`Dialect.claim_candidates`): nothing
is claimed there once a limit exists, so a worker whose cached view of the limits is
stale claims nothing rather than too much, and reads the limits again within
``LIMITS_TTL_SECONDS``.

A limited claim (:meth:`.limited_claim.LimitedClaims._claim_limited`) runs in the claim's write
transaction:

1. it locks its limit rows (``SELECT ... FOR UPDATE``, in key order, where the database
   has row locks; SQLite's write transaction and DuckDB's process-wide write lock
   already let one claim run at a time), so two claims under one limit take turns;
2. it counts the running jobs of the queue, of the limited workflows and of their
   partitions (a job whose lease lapsed still counts, as it may still run: its slot is
   freed when a reaper takes the job back, see ``WorkerQueries.reap_expired``), and the
   starts of each rate's sliding window (``nbjobs_limit_starts``);
3. it claims what is left, best jobs first, leaving out full workflows and partitions
   in the query itself so that a full partition cannot hide the others' jobs;
4. it logs one start per claimed job for each rate, and forgets the starts that left
   the window.

So at no moment do more jobs run than a limit allows, as the claim saw the limit: a
limit lowered while jobs run stops the next claims and lets the running jobs finish.

The commonest limit, a queue's concurrency alone (no rate, no partitions, no limit on
the claimed workflows), takes a shorter path (:meth:`.limited_claim.LimitedClaims._claim_capped`) with
the same guarantee: the same locked read of the limit rows, one count of the queue's
running jobs, and the plain claim statement with ``LIMIT`` the room left, all three
compiled once per queue (building statements costs more than SQLite takes to run
them).  Where the database has row locks, the unlocked pre-check of a full limit is
skipped while the last look found the limit at most half used.  While the limit has
room for many batches, SQLite and PostgreSQL count inside the claim statement
(``Dialect.claim_cap``); while it has room for every claim the server can have in
flight, PostgreSQL locks the limit row shared, so claims under it stop taking turns,
and sends the lock with a claim statement that counts for itself in one round trip
(the argument that this never lets more run than the limit is at
:meth:`.limited_claim.LimitedClaims._claim_capped`).  A small limit, one that can never
have that much room, is claimed under its exclusive lock the same way: the lock and the
self-counting claim sent together; a job finishing under it skips the pre-check (the
slot it freed is its own), and on PostgreSQL sends its success with them
(:meth:`.finish.FinishQueries._finish_with_small_claim`).  No counter is kept: the
running jobs are counted from the jobs themselves, so nothing can drift when a worker
is killed.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, tuple_, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from ..dialects.base import CLAIMED_COLUMNS
from ..jobs import Status
from ..schema import (
    QUEUED_SQL,
    RUNNING_SQL,
    jobs,
    jobs_by_key,
    limit_starts,
    limits,
    new_id,
    queues,
)
from .core import CoreStore

log = logging.getLogger(__name__)

#: What a claim sets (with bind parameters each claim fills in); the plain claim
#: (:mod:`.jobs`) and the limited one share it.
CLAIM_VALUES: dict[str, Any] = dict(
    status=Status.RUNNING.value,
    lease_token=bindparam("c_token", None),
    lease_expires_at=bindparam("c_expires", None),
    worker_id=bindparam("c_worker", None),
    started_at=func.coalesce(jobs.c.started_at, bindparam("c_now", None)),
    claimed_at=bindparam("c_now", None),
    waiting_for=None,
    updated_at=bindparam("c_now", None),
)

#: How long a store trusts what it last read of the limits before reading them again.
LIMITS_TTL_SECONDS = 1.0
#: A limited claim looks at this many candidates per job it may claim (some may be
#: left out: a partition with one free slot and several queued jobs).
CANDIDATES_PER_JOB = 4
#: A limited claim holds jobs ahead only from room it has this many times over.
AHEAD_HEADROOM = 4
#: Starts are deleted from a rate's log this long after they left its window (see
#: ``LimitQueries._room``): far more than two processes' clocks may differ.
FORGET_MARGIN_SECONDS = 10.0
#: A capped claim counts in its claim statement (``Dialect.claim_cap``) for a while
#: after a count found room for this many of the largest claims.
INLINE_BATCHES = 8
#: Candidates a limited claim reads at most.
MAX_CANDIDATES = 256


@dataclasses.dataclass(frozen=True)
class Limit:
    """One row of ``nbjobs_limits``: a queue's or a workflow's limits."""

    kind: str
    name: str
    concurrency: int | None = None
    rate_count: int | None = None
    rate_seconds: float | None = None
    partition_concurrency: int | None = None

    @property
    def rate(self) -> str | None:
        """The rate as the user wrote it, normalised ("20/s", "100/minute", "5/hour")."""
        if self.rate_count is None or self.rate_seconds is None:
            return None
        unit = {1.0: "s", 60.0: "minute", 3600.0: "hour"}.get(self.rate_seconds)
        return f"{self.rate_count}/{unit or f'{self.rate_seconds:g}s'}"

    @property
    def empty(self) -> bool:
        return (
            self.concurrency is None
            and self.rate_count is None
            and self.partition_concurrency is None
        )


@dataclasses.dataclass
class Hold:
    """Why a limited claim claimed less than it could have, for the worker's wait."""

    #: When a rate window next frees a start (None: a finishing job frees the slot).
    until: float | None = None


def limit_from_row(row: Row) -> Limit:
    return Limit(
        kind=row.kind,
        name=row.name,
        concurrency=row.concurrency,
        rate_count=row.rate_count,
        rate_seconds=row.rate_seconds,
        partition_concurrency=row.partition_concurrency,
    )


class LimitQueries(CoreStore):
    """The limits: stored, read (cached briefly), and applied inside the claim."""

    _limits_cache: dict[tuple[str, str], Limit] | None = None
    _limits_read = float("-inf")
    #: The earliest moment a rate that held back a claim frees a start (see ``Hold``).
    rate_free_at: float | None = None
    #: This process's workflow aliases: a bare qualname its workers claim -> the
    #: registered name it stands for (set by the runtime from its registry).  Jobs
    #: stored under an alias (submitted from a script's ``__main__``, or by an older
    #: nbjobs) count against, and are held by, the limits of the workflow: the
    #: submitter cannot know the module a worker imports the function from, and rows
    #: already stored keep their name, so the claim maps the name rather than submit.
    workflow_aliases: Mapping[str, str] = MappingProxyType({})

    def _limit_name(self, workflow: str, aliases: Mapping[str, str] | None = None) -> str:
        """The workflow whose limits hold jobs stored under ``workflow``."""
        return (self.workflow_aliases if aliases is None else aliases).get(workflow, workflow)

    def _stored_names(
        self, names: Iterable[str], aliases: Mapping[str, str] | None = None
    ) -> list[str]:
        """``names`` and their aliases: what the jobs of those workflows are stored under."""
        wanted = set(names)
        found = self.workflow_aliases if aliases is None else aliases
        return sorted(wanted | {a for a, n in found.items() if n in wanted})

    # -- stored limits -------------------------------------------------------------------
    def set_limit(
        self,
        kind: str,
        name: str,
        *,
        concurrency: int | None = None,
        rate: tuple[int, float] | None = None,
        partition_concurrency: int | None = None,
    ) -> None:
        """Store the limits of a queue or workflow (all None: remove them), in one
        transaction; claims that begin after it commits apply them."""
        row = dict(
            concurrency=concurrency,
            rate_count=rate[0] if rate else None,
            rate_seconds=rate[1] if rate else None,
            partition_concurrency=partition_concurrency,
            updated_at=self.now(),
        )
        empty = concurrency is None and rate is None and partition_concurrency is None
        key = (limits.c.kind == kind, limits.c.name == name)

        def work(conn: Connection) -> None:
            found = conn.execute(self.dialect.lock(select(limits).where(*key))).first()
            if found is None:
                if not empty:
                    conn.execute(insert(limits).values(kind=kind, name=name, **row))
                return
            if empty:
                conn.execute(delete(limits).where(*key))
                conn.execute(
                    delete(limit_starts).where(
                        limit_starts.c.kind == kind, limit_starts.c.name == name
                    )
                )
                return
            same = limit_from_row(found) == Limit(kind=kind, name=name, **_limit_fields(row))
            if not same:
                conn.execute(update(limits).where(*key).values(**row))

        try:
            self._retry_conflicts(work)
        except IntegrityError:
            # Another process stored this limit first (workers starting together lock
            # no row while it is missing): now it exists, so this update waits its turn.
            self._retry_conflicts(work)
        self._limits_cache = None

    def list_limits(self) -> list[Limit]:
        """Every stored limit, queues first, by name."""
        with self._read() as conn:
            return self.list_limits_in(conn)

    def list_limits_in(self, conn: Connection) -> list[Limit]:
        """``list_limits`` in ``conn``'s transaction."""
        rows = conn.execute(select(limits).order_by(limits.c.kind.desc(), limits.c.name))
        return [limit_from_row(r) for r in rows]

    def current_limits(self) -> dict[tuple[str, str], Limit]:
        """The limits as read at most ``LIMITS_TTL_SECONDS`` ago (the claim's choice of
        path; the limited claim itself reads them again, locked)."""
        now = time.monotonic()
        cache = self._limits_cache
        if cache is None or now - self._limits_read > LIMITS_TTL_SECONDS:
            with self._read() as conn:
                rows = conn.execute(select(limits)).all()
            cache = {(r.kind, r.name): limit_from_row(r) for r in rows}
            self._limits_cache, self._limits_read = cache, now
        return cache

    def is_limited(self, queue: str, workflows: Sequence[str]) -> bool:
        """Whether a claim of ``queue`` for ``workflows`` goes through the limits."""
        found = self.current_limits()
        if not found:
            return False
        return ("queue", queue) in found or any(("workflow", w) in found for w in workflows)

    def _may_have_room(self, conn: Connection, queue: str, workflows: Sequence[str]) -> bool:
        """Whether the limits (as cached) may leave room, from an unlocked count: a
        claim that would find its limit full skips the lock (and, on PostgreSQL, the
        commit of a row lock).  Finishing jobs only free slots, so "full" may turn
        stale, never wrong the other way: the next claim looks again."""
        cached = self.current_limits()
        queue_limit = cached.get(("queue", queue))
        names = {self._limit_name(w) for w in workflows}
        wf_limits = {w: cached[("workflow", w)] for w in names if ("workflow", w) in cached}
        concurrency_only = [
            lim
            for lim in [queue_limit, *wf_limits.values()]
            if lim is not None and lim.concurrency is not None
        ]
        if not concurrency_only:
            return True
        running = self._running_counts(conn, queue, list(wf_limits))
        if (
            queue_limit is not None
            and queue_limit.concurrency is not None
            and running["queue"] >= queue_limit.concurrency
        ):
            return False
        if not wf_limits:
            return True
        return any(
            lim.concurrency is None or running["workflow"].get(name, 0) < lim.concurrency
            for name, lim in wf_limits.items()
        ) or len(wf_limits) < len(names)

    def _running_counts(
        self,
        conn: Connection,
        queue: str,
        workflows: list[str],
        aliases: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """The running jobs of ``queue``, of each of ``workflows``
        (with those stored under their ``aliases``, by default ``workflow_aliases``)
        and of each of their partitions, in one statement."""
        scope = jobs.c.queue == queue
        if workflows:
            stored = self._stored_names(workflows, aliases)
            scope = or_(scope, jobs.c.workflow.in_(stored))
        stmt = (
            select(jobs.c.queue, jobs.c.workflow, jobs.c.partition_key, func.count())
            .where(
                jobs.c.status == RUNNING_SQL,
                scope,
            )
            .group_by(jobs.c.queue, jobs.c.workflow, jobs.c.partition_key)
        )
        in_queue = 0
        per_workflow: Counter[str] = Counter()
        per_partition: dict[str, Counter[str]] = {}
        for q, stored_as, part, count in conn.execute(stmt):
            if q == queue:
                in_queue += count
            wf = self._limit_name(stored_as, aliases)
            if wf in workflows:
                per_workflow[wf] += count
                if part is not None:
                    per_partition.setdefault(wf, Counter())[part] += count
        return {"queue": in_queue, "workflow": per_workflow, "partitions": per_partition}

    def _room(self, conn: Connection, limit: Limit, running: int, now: float, hold: Hold) -> int:
        """How many jobs ``limit`` lets start now: its free slots and what is left of its
        rate window (a large number when it has neither)."""
        room = MAX_CANDIDATES
        if limit.concurrency is not None:
            room = min(room, limit.concurrency - running)
        if limit.rate_count is not None and limit.rate_seconds is not None:
            key = (limit_starts.c.kind == limit.kind, limit_starts.c.name == limit.name)
            since = now - limit.rate_seconds
            # Forget starts well out of the window only: a claimer whose clock is a
            # little behind this one's (each process estimates the server's clock) still
            # counts a start this one sees leave the window.
            forget = since - FORGET_MARGIN_SECONDS
            conn.execute(delete(limit_starts).where(*key, limit_starts.c.at <= forget))
            starts = list(
                conn.execute(
                    select(limit_starts.c.at)
                    .where(*key, limit_starts.c.at > since)
                    .order_by(limit_starts.c.at)
                ).scalars()
            )
            left = limit.rate_count - len(starts)
            if left <= 0:
                # The window frees a start once enough of its starts leave it.
                free_at = starts[len(starts) - limit.rate_count] + limit.rate_seconds
                hold.until = free_at if hold.until is None else min(hold.until, free_at)
            room = min(room, left)
        return room

    def _limited_candidates(
        self,
        queue: str,
        workflows: list[str],
        full: list[tuple[str, str]],
        room: int,
        now: float,
        only: str | None = None,
    ) -> Any:
        """The best ready jobs of ``queue`` for ``workflows``, full partitions left out,
        locked (``SKIP LOCKED``) where the database has row locks."""
        paused = select(queues.c.name).where(queues.c.name == queue, queues.c.paused).exists()
        conditions = [
            jobs.c.status == QUEUED_SQL,
            jobs.c.queue == queue,
            self.dialect.ready_time() <= now,
            jobs.c.workflow.in_(workflows),
            or_(jobs.c.expires_at.is_(None), jobs.c.expires_at > now),
            ~paused,
        ]
        if only is not None:
            conditions.append(jobs.c.id == only)
        if full:
            conditions.append(
                ~and_(
                    jobs.c.partition_key.is_not(None),
                    tuple_(jobs.c.workflow, jobs.c.partition_key).in_(full),
                )
            )
        stmt = (
            select(jobs.c.id, jobs.c.workflow, jobs.c.partition_key)
            .where(*conditions)
            .order_by(jobs.c.priority.desc(), jobs.c.run_at, jobs.c.id)
            .limit(min(MAX_CANDIDATES, room * CANDIDATES_PER_JOB))
        )
        return self.dialect.lock(stmt, skip_locked=True)

    def _mark_claimed(self, conn: Connection, ids: list[str], values: dict[str, Any]) -> list[Row]:
        """Mark the chosen jobs running (they are still queued: they were locked, or the
        write transaction is the only one); returns their claimed columns."""
        params = {k: v for k, v in values.items() if k.startswith("c_")}
        mark = (
            jobs_by_key(update(jobs))
            .where(jobs.c.id.in_(bindparam("l_ids", expanding=True)), jobs.c.status == QUEUED_SQL)
            .values(**CLAIM_VALUES, attempts=jobs.c.attempts + 1)
        )
        if self.engine.dialect.update_returning:
            return list(conn.execute(mark.returning(*CLAIMED_COLUMNS), {**params, "l_ids": ids}))
        conn.execute(mark, {**params, "l_ids": ids})
        read = select(*CLAIMED_COLUMNS).where(jobs.c.id.in_(bindparam("l_ids", expanding=True)))
        return list(conn.execute(read, {"l_ids": ids}))

    def _log_starts(
        self,
        conn: Connection,
        queue_limit: Limit | None,
        wf_limits: dict[str, Limit],
        rows: list[Row],
        now: float,
    ) -> None:
        """One start per claimed job in the window of each rate it counts against."""
        starts = []
        if queue_limit is not None and queue_limit.rate_count is not None:
            starts += [dict(kind="queue", name=queue_limit.name) for _ in rows]
        for row in rows:
            wl = wf_limits.get(self._limit_name(row.workflow))
            if wl is not None and wl.rate_count is not None:
                starts.append(dict(kind="workflow", name=wl.name))
        if starts:
            conn.execute(insert(limit_starts), [dict(s, id=new_id(), at=now) for s in starts])


def _limit_fields(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: row[k] for k in ("concurrency", "rate_count", "rate_seconds", "partition_concurrency")
    }
