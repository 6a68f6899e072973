"""Flow control inside the claim: concurrency, rate and partition limits, and expiry.

A limit is a row of ``nbjobs_limits``: a queue's (``app.set_queue``) or a workflow's
(``@app.workflow(concurrency=, rate=, partition_concurrency=)``, written by each worker
that registers the workflow).  The claim of a queue none of whose limits exist is the
plain claim plus one guard in its ``WHERE`` (:meth:`Dialect.claim_candidates`): nothing
is claimed there once a limit exists, so a worker whose cached view of the limits is
stale claims nothing rather than too much, and reads the limits again within
``LIMITS_TTL_SECONDS``.

A limited claim (:meth:`LimitQueries._claim_limited`) runs in the claim's write
transaction:

1. it locks its limit rows (``SELECT ... FOR UPDATE``, in key order, where the database
   has row locks; SQLite's write transaction and DuckDB's process-wide write lock
   already let one claim run at a time), so two claims under one limit take turns;
2. it counts the running jobs of the queue, of the limited workflows and of their
   partitions (a job whose lease expired counts no more: its worker is lost), and the
   starts of each rate's sliding window (``nbjobs_limit_starts``);
3. it claims what is left, best jobs first, leaving out full workflows and partitions
   in the query itself so that a full partition cannot hide the others' jobs;
4. it logs one start per claimed job for each rate, and forgets the starts that left
   the window.

So at no moment do more jobs run than a limit allows, as the claim saw the limit: a
limit lowered while jobs run stops the next claims and lets the running jobs finish.

The commonest limit, a queue's concurrency alone (no rate, no partitions, no limit on
the claimed workflows), takes a shorter path (:meth:`LimitQueries._claim_capped`) with
the same guarantee: the same locked read of the limit rows, one count of the queue's
running jobs, and the plain claim statement with ``LIMIT`` the room left, all three
compiled once per queue (building statements costs more than SQLite takes to run
them).  Where the database has row locks, the unlocked pre-check of a full limit is
skipped while the last look found the limit at most half used.  While the limit has
room for many batches, SQLite and PostgreSQL count inside the claim statement
(``Dialect.claim_cap``); while it has room for every claim the server can have in
flight, PostgreSQL locks the limit row shared, so claims under it stop taking turns
(the argument that this never lets more run than the limit is at
:meth:`LimitQueries._claim_capped`).  No counter is kept: the running jobs are counted
from the jobs themselves, so nothing can drift when a worker is killed.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, tuple_, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.sql import Executable

from ..dialects.base import CLAIMED_COLUMNS, Prepared
from ..jobs import Status
from ..schema import QUEUED_SQL, jobs, limit_starts, limits, new_id, queues
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


def _limit(row: Row) -> Limit:
    return Limit(
        kind=row.kind,
        name=row.name,
        concurrency=row.concurrency,
        rate_count=row.rate_count,
        rate_seconds=row.rate_seconds,
        partition_concurrency=row.partition_concurrency,
    )


@dataclasses.dataclass
class _CappedPlan:
    """The statements of one queue's capped claim (see ``LimitQueries._claim_capped``),
    compiled once: the locked read of its limit rows, the count of its running jobs,
    and the claim itself for each room it was asked for."""

    lock: Any
    count: Any
    #: The limit rows read with a shared lock (see ``LimitQueries._claim_capped``).
    share: Any = None
    claims: dict[int, Any] = dataclasses.field(default_factory=dict)


def _concurrency_only(limit: Limit | None) -> bool:
    return (
        limit is not None
        and limit.concurrency is not None
        and limit.rate_count is None
        and limit.partition_concurrency is None
    )


class LimitQueries(CoreStore):
    """The limits: stored, read (cached briefly), and applied inside the claim."""

    _limits_cache: dict[tuple[str, str], Limit] | None = None
    _limits_read = float("-inf")
    #: The capped claims' statements, per (queue, workflows).
    _capped_plans: dict[tuple[str, tuple[str, ...]], _CappedPlan] | None = None
    #: Queues whose last capped claim found their limit at most half used: the
    #: unlocked pre-check of a full limit is skipped for them.
    _ample: set[str] | None = None
    #: Queues whose last capped claim found room for every claim that can be in flight
    #: at once (see ``_claim_capped``): their claims lock the limit row shared.
    _shared: set[str] | None = None
    #: Jobs that the claims in flight at one moment may hold at most, unseen by each
    #: other's counts (None: not known here; 0: not read yet).
    _in_flight_bound: int | None = 0
    #: Queues whose last counted capped claim found room for many batches, and when
    #: (monotonic): for ``LIMITS_TTL_SECONDS`` their capped claims count in the claim
    #: statement, where ``Dialect.claim_cap`` allows.
    _roomy: dict[str, float] | None = None
    #: The earliest moment a rate that held back a claim frees a start (see ``Hold``).
    rate_free_at: float | None = None

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
            same = _limit(found) == Limit(kind=kind, name=name, **_limit_fields(row))
            if not same:
                conn.execute(update(limits).where(*key).values(**row))

        self._retry_conflicts(work)
        self._limits_cache = None

    def list_limits(self) -> list[Limit]:
        """Every stored limit, queues first, by name."""
        with self._read() as conn:
            return self.list_limits_in(conn)

    def list_limits_in(self, conn: Connection) -> list[Limit]:
        """``list_limits`` in ``conn``'s transaction."""
        rows = conn.execute(select(limits).order_by(limits.c.kind.desc(), limits.c.name))
        return [_limit(r) for r in rows]

    def current_limits(self) -> dict[tuple[str, str], Limit]:
        """The limits as read at most ``LIMITS_TTL_SECONDS`` ago (the claim's choice of
        path; the limited claim itself reads them again, locked)."""
        now = time.monotonic()
        cache = self._limits_cache
        if cache is None or now - self._limits_read > LIMITS_TTL_SECONDS:
            with self._read() as conn:
                rows = conn.execute(select(limits)).all()
            cache = {(r.kind, r.name): _limit(r) for r in rows}
            self._limits_cache, self._limits_read = cache, now
        return cache

    def is_limited(self, queue: str, workflows: Sequence[str]) -> bool:
        """Whether a claim of ``queue`` for ``workflows`` goes through the limits."""
        found = self.current_limits()
        if not found:
            return False
        return ("queue", queue) in found or any(("workflow", w) in found for w in workflows)

    # -- the limited claim --------------------------------------------------------------
    def _claim_limited(
        self,
        conn: Connection,
        queue: str,
        workflows: Sequence[str],
        limit: int,
        values: dict[str, Any],
        only: str | None = None,
        ahead: int = 0,
    ) -> list[Row]:
        """Claim up to ``limit`` jobs of ``queue`` within every limit, in ``conn``'s
        write transaction; ``values`` fill the claim's bind parameters (``c_now``...);
        ``only``: claim that job or none; ``ahead``: how many of the ``limit`` jobs
        the worker would hold ahead, not start at once.  Returns the claimed rows.

        A job held ahead counts as running, so jobs are claimed ahead only from a
        limit's spare room (``AHEAD_HEADROOM`` times what is claimed ahead): a limit
        that binds is never taken up by jobs waiting in one worker, and one that does
        not bind keeps the batched claims of short jobs.
        """
        now = values["c_now"]
        if only is None and self._capped_eligible(queue, workflows):
            rows = self._claim_capped(conn, queue, tuple(workflows), limit, values, ahead)
            if rows is not None:
                return rows
        if self.dialect.skip_locked and not self._may_have_room(conn, queue, workflows, now):
            return []  # full: no lock taken, nothing to commit
        keys = [("queue", queue)] + [("workflow", w) for w in sorted(set(workflows))]
        locked = select(limits).where(tuple_(limits.c.kind, limits.c.name).in_(keys))
        locked = self.dialect.lock(locked.order_by(limits.c.kind, limits.c.name))
        found = {(r.kind, r.name): _limit(r) for r in conn.execute(locked)}
        queue_limit = found.get(("queue", queue))
        wf_limits = {k[1]: v for k, v in found.items() if k[0] == "workflow"}

        running = self._running_counts(conn, queue, list(wf_limits), now)
        free = MAX_CANDIDATES  # what the queue's limits leave
        hold = Hold()
        if queue_limit is not None:
            free = self._room(conn, queue_limit, running["queue"], now, hold)
        room = min(limit, free)
        wf_room: dict[str, int] = {}
        for name, wl in wf_limits.items():
            wf_room[name] = self._room(conn, wl, running["workflow"].get(name, 0), now, hold)
        if hold.until is not None:
            self.rate_free_at = (
                hold.until if self.rate_free_at is None else min(self.rate_free_at, hold.until)
            )
        eligible = [w for w in workflows if wf_room.get(w, 1) > 0]
        if room <= 0 or not eligible:
            return []
        if ahead:
            now_wanted = max(0, limit - ahead)
            spare = min([free, *(wf_room[w] for w in eligible if w in wf_room)]) - now_wanted
            extra = min(ahead, max(0, spare // AHEAD_HEADROOM))
            room = max(1, min(room, now_wanted + extra))

        partitions: dict[str, Counter[str]] = running["partitions"]
        full = [
            (name, part)
            for name, wl in wf_limits.items()
            if wl.partition_concurrency is not None
            for part, count in partitions.get(name, Counter()).items()
            if count >= wl.partition_concurrency
        ]
        candidates = self._limited_candidates(queue, eligible, full, room, now, only)
        chosen: list[str] = []
        taken: Counter[str] = Counter()
        parts_taken: Counter[tuple[str, str]] = Counter()
        for row in conn.execute(candidates):
            if len(chosen) >= room:
                break
            wf = wf_limits.get(row.workflow)
            if wf is not None:
                if taken[row.workflow] >= wf_room[row.workflow]:
                    continue
                pc = wf.partition_concurrency
                if pc is not None and row.partition_key is not None:
                    part = (row.workflow, row.partition_key)
                    used = partitions.get(row.workflow, Counter())[row.partition_key]
                    if used + parts_taken[part] >= pc:
                        continue
                    parts_taken[part] += 1
                taken[row.workflow] += 1
            chosen.append(row.id)
        if not chosen:
            return []
        rows = self._mark_claimed(conn, chosen, values)
        self._log_starts(conn, queue_limit, wf_limits, rows, now)
        return rows

    def _capped_eligible(self, queue: str, workflows: Sequence[str]) -> bool:
        """Whether, as the limits are cached, a claim of ``queue`` meets a concurrency
        limit of the queue alone (the capped claim's case; it checks again, locked)."""
        cached = self.current_limits()
        if not _concurrency_only(cached.get(("queue", queue))):
            return False
        return not any(("workflow", w) in cached for w in workflows)

    def _capped_plan(self, queue: str, workflows: tuple[str, ...]) -> _CappedPlan:
        plans = self._capped_plans
        if plans is None:
            plans = self._capped_plans = {}
        plan = plans.get((queue, workflows))
        if plan is None:
            keys = [("queue", queue)] + [("workflow", w) for w in sorted(set(workflows))]
            lock = self.dialect.lock(
                select(limits)
                .where(tuple_(limits.c.kind, limits.c.name).in_(keys))
                .order_by(limits.c.kind, limits.c.name)
            )
            count = select(func.count()).where(
                jobs.c.status == Status.RUNNING.value,
                jobs.c.queue == queue,
                jobs.c.lease_expires_at > bindparam("c_now", None),
            )
            if len(plans) > 256:
                plans.clear()
            share = (
                select(limits)
                .where(tuple_(limits.c.kind, limits.c.name).in_(keys))
                .order_by(limits.c.kind, limits.c.name)
                .with_for_update(read=True)
            )
            plan = plans[(queue, workflows)] = _CappedPlan(
                lock=Prepared(lock, self.engine.dialect),
                count=Prepared(count, self.engine.dialect),
                share=Prepared(share, self.engine.dialect) if self.dialect.skip_locked else None,
            )
        return plan

    def _capped_claim(
        self, plan: _CappedPlan, queue: str, workflows: tuple[str, ...], room: int
    ) -> Any:
        """The plain claim statement (see ``Dialect.claim_candidates``) for ``room``
        jobs, its guard against limits narrowed to the workflows' limits: the queue's
        own limit was just read, locked, and counted."""
        claim = plan.claims.get(room)
        if claim is None:
            claim = self.dialect.claim_statement(
                self._capped_candidates(queue, workflows).limit(room), CLAIM_VALUES
            )
            if isinstance(claim, Executable):
                claim = Prepared(claim, self.engine.dialect)
            plan.claims[room] = claim
        return claim

    def _capped_candidates(self, queue: str, workflows: tuple[str, ...]) -> Any:
        """The plain claim's candidates (see ``Dialect.claim_candidates``), their guard
        against limits narrowed to the workflows' limits: the queue's own limit is
        applied by the capped claim."""
        now: Any = bindparam("c_now", None)
        paused = select(queues.c.name).where(queues.c.name == queue, queues.c.paused)
        wf_limited = select(limits.c.name).where(
            limits.c.kind == "workflow", limits.c.name.in_(workflows)
        )
        return (
            select(jobs.c.id)
            .where(
                jobs.c.status == QUEUED_SQL,
                jobs.c.queue == queue,
                self.dialect.ready_time() <= now,
                jobs.c.workflow.in_(workflows),
                or_(jobs.c.expires_at.is_(None), jobs.c.expires_at > now),
                ~paused.exists(),
                ~wf_limited.exists(),
            )
            .order_by(jobs.c.priority.desc(), jobs.c.run_at, jobs.c.id)
        )

    def _inline_claim(
        self, plan: _CappedPlan, queue: str, workflows: tuple[str, ...], limit: int
    ) -> Any:
        """The capped claim as one statement, where ``Dialect.claim_cap`` allows: its
        ``LIMIT`` is what the queue's concurrency limit leaves, counted by the statement
        itself, and none when the limit row has gone or holds more than a concurrency.
        One writer at a time (SQLite), or the limit row locked just before (PostgreSQL,
        whose next statement reads every claim committed before the lock was granted),
        makes the count and the claim one atomic step."""
        claim = plan.claims.get(-limit)
        if claim is None:
            now: Any = bindparam("c_now", None)
            running = (
                select(func.count())
                .where(
                    jobs.c.status == Status.RUNNING.value,
                    jobs.c.queue == queue,
                    jobs.c.lease_expires_at > now,
                )
                .scalar_subquery()
            )
            left = (
                select(limits.c.concurrency - running)
                .where(
                    limits.c.kind == "queue",
                    limits.c.name == queue,
                    limits.c.concurrency.is_not(None),
                    limits.c.rate_count.is_(None),
                    limits.c.partition_concurrency.is_(None),
                )
                .scalar_subquery()
            )
            cap = self.dialect.claim_cap(limit, func.coalesce(left, 0))
            claim = self.dialect.claim_statement(
                self._capped_candidates(queue, workflows).limit(cap), CLAIM_VALUES
            )
            if isinstance(claim, Executable):
                claim = Prepared(claim, self.engine.dialect)
            plan.claims[-limit] = claim
        return claim

    def _claims_bound(self, conn: Connection) -> int | None:
        """How many jobs the claims in flight at one moment hold at most: one claim per
        connection the server allows, ``Dialect.claim_batch`` jobs each (None where the
        dialect cannot tell)."""
        if self._in_flight_bound == 0:
            connections = self.dialect.max_transactions(conn)
            self._in_flight_bound = (
                None if connections is None else connections * self.dialect.claim_batch
            )
        return self._in_flight_bound

    def _run_inline(
        self,
        conn: Connection,
        plan: _CappedPlan,
        queue: str,
        workflows: tuple[str, ...],
        limit: int,
        values: dict[str, Any],
    ) -> list[Row]:
        """Room for many batches a moment ago: the claim statement itself claims at
        most what the limit leaves (see ``_inline_claim``)."""
        claim = self._inline_claim(plan, queue, workflows, limit)
        rows = list(self.dialect.claim(conn, claim, values))
        if len(rows) < limit and self._roomy is not None:
            self._roomy.pop(queue, None)  # the queue ran dry, or the limit changed
        return rows

    def _claim_capped(
        self,
        conn: Connection,
        queue: str,
        workflows: tuple[str, ...],
        limit: int,
        values: dict[str, Any],
        ahead: int,
    ) -> list[Row] | None:
        """The limited claim of a queue with a concurrency limit alone, or None when the
        locked read finds other limits (the full limited claim then runs).

        The same guarantee in three statements compiled once: the limit rows are
        locked (a claim under the same limit waits here until the one before it
        commits, so the count below sees its claims), the queue's running jobs are
        counted, and the plain claim takes at most the room left.

        Where the database tells how many transactions it runs at once
        (``Dialect.max_transactions``: PostgreSQL's ``max_connections``), a limit with
        room for every claim that can be in flight at once, ``claim_batch`` jobs each,
        is locked shared: claims under it no longer wait for each other's commits.
        Still never more running than the limit: take the claim whose count ran last;
        what committed before that count, it saw (at most ``limit - bound``), and what
        committed after it came from claims that had counted before it, so were in
        flight at that moment: at most ``bound`` jobs.  A claim that finds less room
        than that claims nothing and the next locks the row for itself; a claim under
        that exclusive lock waits for every shared one to commit, so counts them all.
        """
        now = values["c_now"]
        ample = self._ample
        if ample is None:
            ample = self._ample = set()
        if (
            self.dialect.skip_locked
            and queue not in ample
            and not self._may_have_room(conn, queue, workflows, now)
        ):
            return []  # full: no lock taken, nothing to commit
        plan = self._capped_plan(queue, workflows)
        roomy = self._roomy
        if roomy is None:
            roomy = self._roomy = {}
        seen = roomy.get(queue)
        inline = seen is not None and time.monotonic() - seen < LIMITS_TTL_SECONDS
        shared_set = self._shared
        if shared_set is None:
            shared_set = self._shared = set()
        shared = queue in shared_set and plan.share is not None
        if inline and not self.dialect.skip_locked:
            rows = self._run_inline(conn, plan, queue, workflows, limit, values)
            if rows:
                return rows
            # Nothing: the queue ran dry, or its limit changed; the counted claim
            # below tells (and hands a changed limit to the full limited claim).
        found = [_limit(r) for r in (plan.share if shared else plan.lock).execute(conn, {}).all()]
        if len(found) != 1 or found[0].kind != "queue" or not _concurrency_only(found[0]):
            ample.discard(queue)
            shared_set.discard(queue)
            roomy.pop(queue, None)
            self._limits_cache = None  # changed since cached: read them again
            return None
        if inline and not shared:  # locked: the claim's own count sees every claim before it
            return self._run_inline(conn, plan, queue, workflows, limit, values)
        concurrency = found[0].concurrency or 0
        running = plan.count.execute(conn, {"c_now": now}).all()[0][0]
        free = concurrency - running
        bound = self._claims_bound(conn)
        if shared and (bound is None or running + bound > concurrency):
            # Too little room left to share the lock: this claim takes nothing, the
            # next one locks the limit row for itself.
            shared_set.discard(queue)
            return []
        if bound is not None and running + 2 * bound <= concurrency:
            shared_set.add(queue)
        else:
            shared_set.discard(queue)
        if 2 * running <= concurrency:
            ample.add(queue)
        else:
            ample.discard(queue)
        if (
            self.dialect.claim_cap(1, 1) is not None
            and free >= INLINE_BATCHES * self.dialect.claim_batch
        ):
            roomy[queue] = time.monotonic()
        room = min(limit, free)
        if room <= 0:
            return []
        if ahead:
            now_wanted = max(0, limit - ahead)
            extra = min(ahead, max(0, (free - now_wanted) // AHEAD_HEADROOM))
            room = max(1, min(room, now_wanted + extra))
        claim = self._capped_claim(plan, queue, workflows, room)
        return list(self.dialect.claim(conn, claim, values))

    def _may_have_room(
        self, conn: Connection, queue: str, workflows: Sequence[str], now: float
    ) -> bool:
        """Whether the limits (as cached) may leave room, from an unlocked count: a
        claim that would find its limit full skips the lock (and, on PostgreSQL, the
        commit of a row lock).  Finishing jobs only free slots, so "full" may turn
        stale, never wrong the other way: the next claim looks again."""
        cached = self.current_limits()
        queue_limit = cached.get(("queue", queue))
        wf_limits = {w: cached[("workflow", w)] for w in workflows if ("workflow", w) in cached}
        concurrency_only = [
            lim
            for lim in [queue_limit, *wf_limits.values()]
            if lim is not None and lim.concurrency is not None
        ]
        if not concurrency_only:
            return True
        running = self._running_counts(conn, queue, list(wf_limits), now)
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
        ) or len(wf_limits) < len(set(workflows))

    def _running_counts(
        self, conn: Connection, queue: str, workflows: list[str], now: float
    ) -> dict[str, Any]:
        """The running jobs (lease not expired) of ``queue``, of each of ``workflows``
        and of each of their partitions, in one statement."""
        scope = jobs.c.queue == queue
        if workflows:
            scope = or_(scope, jobs.c.workflow.in_(workflows))
        stmt = (
            select(jobs.c.queue, jobs.c.workflow, jobs.c.partition_key, func.count())
            .where(
                jobs.c.status == Status.RUNNING.value,
                jobs.c.lease_expires_at > now,
                scope,
            )
            .group_by(jobs.c.queue, jobs.c.workflow, jobs.c.partition_key)
        )
        in_queue = 0
        per_workflow: Counter[str] = Counter()
        per_partition: dict[str, Counter[str]] = {}
        for q, wf, part, count in conn.execute(stmt):
            if q == queue:
                in_queue += count
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
            update(jobs)
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
            wl = wf_limits.get(row.workflow)
            if wl is not None and wl.rate_count is not None:
                starts.append(dict(kind="workflow", name=wl.name))
        if starts:
            conn.execute(insert(limit_starts), [dict(s, id=new_id(), at=now) for s in starts])

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
        running = running.where(
            jobs.c.status == Status.RUNNING.value, jobs.c.lease_expires_at > now
        ).group_by(jobs.c.queue, jobs.c.workflow, jobs.c.partition_key)
        per_queue: Counter[str] = Counter()
        per_wf: Counter[str] = Counter()
        per_part: Counter[tuple[str, str]] = Counter()
        for q, wf, part, count in conn.execute(running):
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
        ready = (
            select(jobs.c.queue, jobs.c.workflow, jobs.c.partition_key, func.count())
            .where(
                jobs.c.status == QUEUED_SQL,
                jobs.c.run_at <= now,
                or_(jobs.c.queue.in_(queue_names), jobs.c.workflow.in_(wf_names)),
            )
            .group_by(jobs.c.queue, jobs.c.workflow, jobs.c.partition_key)
        )
        held: Counter[str] = Counter()
        for q, wf, part, count in conn.execute(ready):
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
            keys = [("queue", queue), ("workflow", workflow)]
            rows = conn.execute(
                select(limits).where(tuple_(limits.c.kind, limits.c.name).in_(keys))
            ).all()
            if not rows:
                return None
            found = {r.kind: _limit(r) for r in rows}
            wl = found.get("workflow")
            running = self._running_counts(conn, queue, [workflow] if wl else [], now)
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


def _limit_fields(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: row[k] for k in ("concurrency", "rate_count", "rate_seconds", "partition_concurrency")
    }
