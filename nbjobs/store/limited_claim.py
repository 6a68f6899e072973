"""The limited claim: a claim under flow-control limits (see :mod:`.limits` for the
design and the guarantee), and the shorter capped path for a queue whose only limit is
its concurrency."""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, case, func, or_, select, tuple_
from sqlalchemy.engine import Connection, Row
from sqlalchemy.sql import Executable

from ..dialects.base import Prepared
from ..jobs import Status
from ..schema import QUEUED_SQL, RUNNING_SQL, jobs, limits, queues
from .limits import (
    AHEAD_HEADROOM,
    CLAIM_VALUES,
    INLINE_BATCHES,
    LIMITS_TTL_SECONDS,
    MAX_CANDIDATES,
    Hold,
    Limit,
    LimitQueries,
    limit_from_row,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _CappedPlan:
    """The statements of one queue's capped claim (see ``LimitedClaims._claim_capped``),
    compiled once: the locked read of its limit rows, the count of its running jobs,
    and the claim itself for each room it was asked for."""

    lock: Any
    count: Any
    #: The limit rows read with a shared lock (see ``LimitedClaims._claim_capped``).
    share: Any = None
    claims: dict[int | tuple[int, ...], Any] = dataclasses.field(default_factory=dict)
    #: No capped claim has run with this plan yet (see ``LimitedClaims._claim_capped``).
    fresh: bool = True


def _concurrency_only(limit: Limit | None) -> bool:
    return (
        limit is not None
        and limit.concurrency is not None
        and limit.rate_count is None
        and limit.partition_concurrency is None
    )


def _finished() -> Any:
    """Whether job ``g_job`` succeeded at ``g_now`` (bind parameters): in the finish's
    transaction, whether its fenced write was accepted."""
    job = jobs.alias("nbjobs_finished_job")
    return (
        select(job.c.id)
        .where(
            job.c.id == bindparam("g_job", None),
            job.c.status == Status.SUCCEEDED.value,
            job.c.lease_token.is_(None),
            job.c.finished_at == bindparam("g_now", None),
        )
        .exists()
    )


def _room_ahead(free: Any, limit: int, ahead: int) -> Any:
    """The counted claim's room for ``limit`` jobs, ``ahead`` of them held ahead (see
    ``LimitedClaims._claim_capped``), in SQL from ``free``, the limit's free slots
    counted by the statement: none when the limit is full, else at least one, and the
    jobs held ahead only from the room the limit has ``AHEAD_HEADROOM`` times over.
    ``free`` is named once (a scalar subquery is counted once per mention)."""
    now_wanted = max(0, limit - ahead)
    left = select(free.label("free")).subquery("nbjobs_room")
    quarter = (left.c.free - now_wanted) // AHEAD_HEADROOM
    extra = case((quarter <= 0, 0), (quarter >= ahead, ahead), else_=quarter)
    want = now_wanted + extra
    room = case(
        (left.c.free <= 0, 0),
        (want < 1, 1),
        (want < left.c.free, want),
        else_=left.c.free,
    )
    return select(room).scalar_subquery()


class LimitedClaims(LimitQueries):
    """The claim of a queue or workflows that limits hold: counted, locked, capped."""

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
        freed: bool = False,
    ) -> list[Row]:
        """Claim up to ``limit`` jobs of ``queue`` within every limit, in ``conn``'s
        write transaction; ``values`` fill the claim's bind parameters (``c_now``...);
        ``only``: claim that job or none; ``ahead``: how many of the ``limit`` jobs
        the worker would hold ahead, not start at once; ``freed``: the transaction
        has just ended running jobs (a finish claiming the next), so the unlocked
        pre-check of a full limit is skipped: the slots it freed are its own until
        it commits, unseen by other claims.  Returns the claimed rows.

        A job held ahead counts as running, so jobs are claimed ahead only from a
        limit's spare room (``AHEAD_HEADROOM`` times what is claimed ahead): a limit
        that binds is never taken up by jobs waiting in one worker, and one that does
        not bind keeps the batched claims of short jobs.
        """
        now = values["c_now"]
        if only is None and self._capped_eligible(queue, workflows):
            rows = self._claim_capped(conn, queue, tuple(workflows), limit, values, ahead, freed)
            if rows is not None:
                return rows
        if (
            self.dialect.skip_locked
            and not freed
            and not self._may_have_room(conn, queue, workflows)
        ):
            return []  # full: no lock taken, nothing to commit
        names = sorted({self._limit_name(w) for w in workflows})
        keys = [("queue", queue)] + [("workflow", w) for w in names]
        locked = select(limits).where(tuple_(limits.c.kind, limits.c.name).in_(keys))
        locked = self.dialect.lock(locked.order_by(limits.c.kind, limits.c.name))
        found = {(r.kind, r.name): limit_from_row(r) for r in conn.execute(locked)}
        queue_limit = found.get(("queue", queue))
        wf_limits = {k[1]: v for k, v in found.items() if k[0] == "workflow"}

        running = self._running_counts(conn, queue, list(wf_limits))
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
        eligible = [w for w in workflows if wf_room.get(self._limit_name(w), 1) > 0]
        if room <= 0 or not eligible:
            return []
        if ahead:
            now_wanted = max(0, limit - ahead)
            rooms = [wf_room[n] for n in map(self._limit_name, eligible) if n in wf_room]
            spare = min([free, *rooms]) - now_wanted
            extra = min(ahead, max(0, spare // AHEAD_HEADROOM))
            room = max(1, min(room, now_wanted + extra))

        partitions: dict[str, Counter[str]] = running["partitions"]
        full = [
            (stored, part)
            for name, wl in wf_limits.items()
            if wl.partition_concurrency is not None
            for part, count in partitions.get(name, Counter()).items()
            if count >= wl.partition_concurrency
            for stored in self._stored_names([name])
        ]
        candidates = self._limited_candidates(queue, eligible, full, room, now, only)
        chosen: list[str] = []
        taken: Counter[str] = Counter()
        parts_taken: Counter[tuple[str, str]] = Counter()
        for row in conn.execute(candidates):
            if len(chosen) >= room:
                break
            name = self._limit_name(row.workflow)
            wf = wf_limits.get(name)
            if wf is not None:
                if taken[name] >= wf_room[name]:
                    continue
                pc = wf.partition_concurrency
                if pc is not None and row.partition_key is not None:
                    part = (name, row.partition_key)
                    used = partitions.get(name, Counter())[row.partition_key]
                    if used + parts_taken[part] >= pc:
                        continue
                    parts_taken[part] += 1
                taken[name] += 1
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
        return not any(("workflow", self._limit_name(w)) in cached for w in workflows)

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
                jobs.c.status == RUNNING_SQL,
                jobs.c.queue == queue,
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
            claim = self._claim_of(self._capped_candidates(queue, workflows).limit(room))
            plan.claims[room] = claim
        return claim

    def _claim_of(self, candidates: Any) -> Any:
        """The claim statement marking ``candidates`` running, compiled once where it
        is one statement (see ``Dialect.claim_statement``)."""
        claim = self.dialect.claim_statement(candidates, CLAIM_VALUES)
        return Prepared(claim, self.engine.dialect) if isinstance(claim, Executable) else claim

    def _capped_candidates(self, queue: str, workflows: tuple[str, ...]) -> Any:
        """The plain claim's candidates (see ``Dialect.claim_candidates``), their guard
        against limits narrowed to the workflows' limits: the queue's own limit is
        applied by the capped claim."""
        now: Any = bindparam("c_now", None)
        paused = select(queues.c.name).where(queues.c.name == queue, queues.c.paused)
        wf_limited = select(limits.c.name).where(
            limits.c.kind == "workflow",
            limits.c.name.in_(sorted({*workflows, *map(self._limit_name, workflows)})),
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
        self,
        plan: _CappedPlan,
        queue: str,
        workflows: tuple[str, ...],
        limit: int,
        margin: int | None = None,
        ahead: int = 0,
        guarded: bool = False,
    ) -> Any:
        """The capped claim as one statement, where ``Dialect.claim_cap`` allows: its
        ``LIMIT`` is what the queue's concurrency limit leaves, counted by the statement
        itself, and none when the limit row has gone or holds more than a concurrency.
        One writer at a time (SQLite), or the limit row locked just before (PostgreSQL,
        whose next statement reads every claim committed before the lock was granted),
        makes the count and the claim one atomic step.

        ``margin``: the claim under a shared lock (see ``_claim_capped``) takes
        ``limit`` jobs where the limit leaves at least ``margin``, else none: the
        statement makes the check the counted claim makes in Python, saving its
        count's round trip.  ``ahead``: how many of the ``limit`` jobs would be held
        ahead: the statement takes them only from the room the limit has
        ``AHEAD_HEADROOM`` times over, as the counted claim does.  ``guarded``: it
        claims nothing unless job ``g_job`` succeeded at ``g_now`` (bind parameters):
        the claim of a finish sent before the finish's outcome is known (see
        ``FinishQueries._finish_with_small_claim``)."""
        key: int | tuple[int, ...] = -limit
        if margin is not None:
            key = (limit, margin)
        elif ahead or guarded:
            key = (limit, 0, ahead, int(guarded))
        claim = plan.claims.get(key)
        if claim is None:
            running = (
                select(func.count())
                .where(
                    jobs.c.status == RUNNING_SQL,
                    jobs.c.queue == queue,
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
                    *([_finished()] if guarded else []),
                )
                .scalar_subquery()
            )
            room: Any = func.coalesce(left, 0)
            if margin is not None:
                room = case((room >= margin, limit), else_=0)
            elif ahead:
                room = _room_ahead(room, limit, ahead)
            cap = self.dialect.claim_cap(limit, room)
            claim = self._claim_of(self._capped_candidates(queue, workflows).limit(cap))
            plan.claims[key] = claim
        return claim

    def _small_claim(
        self, queue: str, workflows: tuple[str, ...], limit: int, ahead: int
    ) -> tuple[Any, Any] | None:
        """The statements of a capped claim of a small limit (see ``_claim_capped``)
        for a finish to send with its own, guarded by its success (``_inline_claim``):
        the lock and the claim; None when the claim takes another path."""
        if not (self._capped_eligible(queue, workflows) and self._small_limit(queue)):
            return None
        if queue in (self._shared or ()) or queue in (self._roomy or {}):
            return None
        if self._ample is not None:
            self._ample.discard(queue)  # not counted here (see ``_claim_capped``)
        plan = self._capped_plan(queue, workflows)
        claim = self._inline_claim(plan, queue, workflows, limit, ahead=ahead, guarded=True)
        return plan.lock, claim

    def _small_claimed(self, locked: Sequence[Any]) -> bool:
        """Whether the limit rows a small claim locked (``_small_claim``) are still a
        queue's concurrency limit alone; else the claim took nothing, and the limits
        are read again."""
        found = [limit_from_row(r) for r in locked]
        if len(found) == 1 and found[0].kind == "queue" and _concurrency_only(found[0]):
            return True
        self._limits_cache = None
        return False

    @functools.cached_property
    def _claim_caps(self) -> bool:
        """Whether a claim statement may count its own room (``Dialect.claim_cap``);
        asked once: building the expression costs more than a short statement."""
        return self.dialect.claim_cap(1, 1) is not None

    def _small_limit(self, queue: str) -> bool:
        """Whether ``queue``'s concurrency limit (as cached) is too small ever to take
        the counted claim's roomier paths, where ``Dialect.claim_cap`` allows: room for
        ``INLINE_BATCHES`` batches, or for every claim in flight (at least one batch
        per connection, twice over) to share the lock.  Its claims count in the claim
        statement, sent with the lock (see ``_claim_capped``)."""
        cached = self.current_limits().get(("queue", queue))
        if cached is None or cached.concurrency is None:
            return False
        # Sharing needs room for twice the claims in flight, at least one batch each.
        small = cached.concurrency < 2 * self.dialect.claim_batch
        return small and self._claim_caps

    def _roomy_as_cached(self, conn: Connection, queue: str) -> bool:
        """Whether ``queue``'s concurrency limit (as cached) has room for twice the claims
        that can be in flight at once, were nothing running (see ``_claim_capped``)."""
        cached = self.current_limits().get(("queue", queue))
        bound = self._claims_bound(conn)
        if cached is None or cached.concurrency is None or not bound:
            return False
        return 2 * bound <= cached.concurrency

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
        freed: bool = False,
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
        Under the shared lock the claim statement itself counts and checks that room
        (``_inline_claim(margin=)``), and goes out with the lock in one round trip
        (``Dialect.run_together``): it still starts, so takes its snapshot, only once
        the lock is granted.

        A small limit (``_small_limit``: one that can never have room for many batches
        nor for every claim in flight) is claimed the same way under its exclusive
        lock: the lock and a claim statement that counts its own room (jobs held ahead
        included, see ``_room_ahead``) go out together, one round trip for three.  The
        claim starts once the lock is granted, so counts every claim committed before,
        and the ones after wait for this one's commit.  That is the hot path of a limit
        that binds: a finishing job's transaction frees its slot and claims the next
        job for it (``freed``: without the unlocked pre-check, as the slot is its own).
        """
        ample = self._ample
        if ample is None:
            ample = self._ample = set()
        if (
            self.dialect.skip_locked
            and queue not in ample
            and not freed
            and not self._may_have_room(conn, queue, workflows)
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
        if plan.fresh:
            # A first claim that the limit as cached leaves room to share the lock goes
            # shared at once (it checks the room itself): workers starting together
            # under a roomy limit do not count one after another under the exclusive one.
            plan.fresh = False
            if plan.share is not None and self._roomy_as_cached(conn, queue):
                shared_set.add(queue)
        shared = queue in shared_set and plan.share is not None
        if inline and not self.dialect.skip_locked:
            rows = self._run_inline(conn, plan, queue, workflows, limit, values)
            if rows:
                return rows
            # Nothing: the queue ran dry, or its limit changed; the counted claim
            # below tells (and hands a changed limit to the full limited claim).
        bound = self._in_flight_bound
        locked: Sequence[Any]
        claimed: Sequence[Any] = ()
        together = small = False
        if shared and plan.share is not None and bound and self._claim_caps:
            # The shared lock, then the claim making the count and the check below
            # itself (its snapshot is taken after the lock is granted), sent together.
            together = True
            claim = self._inline_claim(plan, queue, workflows, limit, margin=bound)
            locked, claimed = self.dialect.run_together(conn, [(plan.share, {}), (claim, values)])
        elif not shared and not inline and self._small_limit(queue):
            # The exclusive lock, then the claim counting its own room, sent together.
            together = small = True
            ample.discard(queue)  # not counted here: the next claim not freeing looks first
            claim = self._inline_claim(plan, queue, workflows, limit, ahead=ahead)
            locked, claimed = self.dialect.run_together(conn, [(plan.lock, {}), (claim, values)])
        else:
            locked = (plan.share if shared else plan.lock).execute(conn, {}).all()
        found = [limit_from_row(r) for r in locked]
        if len(found) != 1 or found[0].kind != "queue" or not _concurrency_only(found[0]):
            # (A claim sent with the lock took nothing: it reads the limit row too.)
            ample.discard(queue)
            shared_set.discard(queue)
            roomy.pop(queue, None)
            self._limits_cache = None  # changed since cached: read them again
            return None
        if together:
            if not claimed and not small and bound:
                # Too little room left to share the lock, or nothing queued: only the
                # first sends the next claim to count under the exclusive lock, which
                # waits for every shared one while every claim waits for it (a queue
                # running dry made each of its last claims take it, one after another).
                running = plan.count.execute(conn, {}).all()[0][0]
                if running + 2 * bound > (found[0].concurrency or 0):
                    shared_set.discard(queue)
            return list(claimed)
        if inline and not shared:  # locked: the claim's own count sees every claim before it
            return self._run_inline(conn, plan, queue, workflows, limit, values)
        bound = self._claims_bound(conn)
        concurrency = found[0].concurrency or 0
        running = plan.count.execute(conn, {}).all()[0][0]
        free = concurrency - running
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
        if self._claim_caps and free >= INLINE_BATCHES * self.dialect.claim_batch:
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
