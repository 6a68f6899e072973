"""The ends of an attempt: success, failure, a retry later, a release, an unclaim.

A success may share its transaction with other threads' (group commit, see
:mod:`.transactions`) and claim the worker's next jobs in it; a job made terminal
decides its parent's fan-in in the same transaction (:meth:`FanoutQueries._after_terminal`).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, case, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from ..jobs import Status
from ..schema import jobs
from .core import _FENCED, _FINISH_ATTEMPT, UNKNOWN, storable_text
from .fanout import FanoutQueries
from .jobs import ClaimedJob, JobQueries, _in_claim_order
from .transactions import _GroupedWork, run_pieces

log = logging.getLogger(__name__)


@dataclass
class _Success:
    """A finish that a group may record together with others (see ``_run_group``)."""

    job_id: str
    token: str
    attempt: int
    result: str | None
    claim: dict[str, Any] | None
    #: A fan-out child's parent: the group checks its fan-in once for all its children.
    parent_id: str | None = None


_FINISH = (
    update(jobs)
    .where(*_FENCED)
    .values(
        status=bindparam("f_status"),
        result=bindparam("f_result"),
        error=bindparam("f_error"),
        traceback=bindparam("f_traceback"),
        finished_at=bindparam("f_now"),
        updated_at=bindparam("f_now"),
        lease_token=None,
        lease_expires_at=None,
        failures=jobs.c.failures + bindparam("f_failed"),
    )
)


def _many(items: list[_Success], now: float) -> dict[str, Any]:
    """The bind parameters of ``Dialect.finish_many_statement`` for ``items``."""
    return dict(
        b_ids=[i.job_id for i in items],
        b_tokens=[i.token for i in items],
        b_results=[i.result for i in items],
        b_attempts=[i.attempt for i in items],
        b_now=now,
    )


#: ``conn.info`` key: the group's transaction holds this one piece alone (see
#: ``_finish_with_small_claim``).
_ALONE = "nbjobs_alone"


def _group_order(piece: _GroupedWork) -> tuple[bool, str]:
    """Where a piece of a group commit goes in the group: finishes in the order of the
    job each writes (every finish names it in its proof), then the pieces of no one job
    (a worker's heartbeat)."""
    if piece.proof is None:
        return True, ""
    return False, piece.proof[0]


class FinishQueries(JobQueries, FanoutQueries):
    """Recording how an attempt ended; claims the next jobs in the same transaction."""

    @functools.cached_property
    def _finish_many(self) -> Any:
        """Several successes as one statement, where possible (see ``_run_group``)."""
        return self.dialect.finish_many_statement()

    def finish_job(
        self,
        *,
        job_id: str,
        token: str,
        attempt: int,
        status: Status,
        result: str | None = None,
        error: str | None = None,
        traceback: str | None = None,
        outcome: str | None = None,
    ) -> bool:
        """Record a terminal status; False when the lease was lost (nothing written)."""
        accepted, _ = self.finish_and_claim(
            job_id=job_id,
            token=token,
            attempt=attempt,
            status=status,
            result=result,
            error=error,
            traceback=traceback,
            outcome=outcome,
        )
        return accepted

    def finish_and_claim(
        self,
        *,
        job_id: str,
        token: str,
        attempt: int,
        status: Status,
        result: str | None = None,
        error: str | None = None,
        traceback: str | None = None,
        outcome: str | None = None,
        claim: dict[str, Any] | None = None,
        parent_id: str | object | None = UNKNOWN,
    ) -> tuple[bool, list[ClaimedJob]]:
        """Record a terminal status and, in the same transaction, claim the next jobs.

        ``claim`` (worker_id, queue, workflows, lease_seconds, and optionally ``limit``,
        default 1) lets a worker thread that just finished a job take the next ones with
        one commit instead of two.  Returns (accepted, the jobs claimed); nothing is
        written or claimed when the lease was lost.
        """
        # A plain success (a fan-out child's too, its parent known) may join a group's.
        parent = parent_id if isinstance(parent_id, str) else None
        simple = status == Status.SUCCEEDED and outcome is None
        simple = simple and (parent_id is None or parent is not None)
        error, traceback = storable_text(error), storable_text(traceback)
        return self._grouped(
            lambda conn: self._finish_and_claim(
                conn, job_id, token, attempt, status, result, error, traceback, outcome,
                claim, parent_id,
            ),
            _Success(job_id, token, attempt, result, claim, parent) if simple else None,
            (job_id, attempt, outcome or status.value),
        )  # fmt: skip

    def finish_later(
        self,
        *,
        job_id: str,
        token: str,
        attempt: int,
        result: str | None,
        done: Any,
        parent_id: str | None = None,
    ) -> None:
        """Record a job's success with the next group commit, without waiting (a fan-out
        child's ``parent_id`` given: its fan-in is checked in that commit).

        A worker running short jobs back to back uses this so that many successes share
        one commit.  ``done(accepted)`` is called once the success is committed (False:
        the lease was lost, nothing written) or ``done(error)`` once it has failed.
        """

        def work(conn: Connection) -> tuple[bool, list[ClaimedJob]]:
            return self._finish_and_claim(
                conn, job_id, token, attempt, Status.SUCCEEDED, result, None, None, None,
                None, parent_id,
            )  # fmt: skip

        self._grouped_later(
            work,
            _Success(job_id, token, attempt, result, None, parent_id),
            lambda piece: done(piece.error if piece.error is not None else piece.result[0]),
            (job_id, attempt, Status.SUCCEEDED.value),
        )

    def _run_group(self, conn: Connection, batch: list) -> None:
        """Record the group's plain successes together and claim the next jobs they asked
        for with one claim per queue; the other pieces run one by one.

        Replaces the group-commit hook ``Transactions._run_group`` (the store's one
        hook; it calls :func:`~.transactions.run_pieces` itself, never ``super()``).
        """
        # Each finish locks its job's row, in id order.  (A heartbeat renewing leases of
        # the same jobs is a piece of the group, so the two never deadlock.)
        batch.sort(key=_group_order)
        successes = [r for r in batch if r.item is not None]
        parents = {r.item.parent_id for r in successes if r.item.parent_id is not None}
        fanouts: dict[str, list[tuple[str, bool]]] = {}
        if len(successes) >= 2 and parents:  # undecided fan-outs: (name, counts)
            fanouts = self._undecided_fanouts(conn, list(parents))
            counted = {p for p, found in fanouts.items() if any(c for _, c in found)}
            successes = [r for r in successes if r.item.parent_id not in counted]
        grouped = len(successes) >= 2  # alone, the two plain statements cost less
        if not grouped:
            if len(batch) == 1:  # its transaction is its own: it may commit it itself
                conn.info[_ALONE] = True
            try:
                run_pieces(conn, batch)
            finally:
                conn.info.pop(_ALONE, None)
            return
        accepted = self._record_successes(conn, [r.item for r in successes])
        ended: dict[tuple[str, str], list[str]] = {}
        late = []  # children of a fan-out decided before this transaction
        for r in successes:
            item = r.item
            if item.parent_id is None or item.job_id not in accepted:
                continue
            if item.parent_id not in fanouts:
                late.append(item.job_id)
            for name, _ in fanouts.get(item.parent_id, ()):
                ended.setdefault((item.parent_id, name), []).append(item.job_id)
        if ended:  # before the claims, which may take a parent resumed here
            self._after_terminals(conn, ended)
        if late:
            self._overtaken(conn, late)
        wanting: dict[tuple, list] = {}
        for request in successes:
            item = request.item
            request.result = (item.job_id in accepted, [])
            if item.job_id in accepted and item.claim is not None:
                claim = item.claim
                key = (claim["worker_id"], claim["queue"], tuple(claim["workflows"]))
                wanting.setdefault(key, []).append(request)
        for (worker_id, queue, workflows), requests in wanting.items():
            limits = [r.item.claim.get("limit", 1) for r in requests]
            ahead = sum(r.item.claim.get("ahead", 0) for r in requests)
            lease = requests[0].item.claim["lease_seconds"]
            claimed = self._claim_queue(
                conn, queue, workflows, sum(limits), worker_id, lease, ahead=ahead, freed=True
            )
            for request, limit in zip(requests, limits, strict=True):  # claimed may be fewer
                request.result = (True, claimed[:limit])
                claimed = claimed[limit:]
        together = {id(r) for r in successes}
        run_pieces(conn, [r for r in batch if id(r) not in together])

    def _record_successes(self, conn: Connection, items: list[_Success]) -> set[str]:
        """Mark several jobs succeeded, fenced by their lease tokens, and write their
        attempt rows; returns the ids accepted.  One statement where the database allows
        (PostgreSQL), else one batched statement for the jobs and one for the attempts."""
        now = self.now()
        if self._finish_many is not None:
            batch = _many(items, now)
            return {row.job_id for row in self._run(conn, self._finish_many, batch).all()}
        finished = self._run(
            conn,
            _FINISH,
            [
                dict(
                    f_id=i.job_id,
                    f_token=i.token,
                    f_now=now,
                    f_status=Status.SUCCEEDED.value,
                    f_result=i.result,
                    f_error=None,
                    f_traceback=None,
                    f_failed=0,
                )
                for i in items
            ],
        )
        if finished.rowcount != len(items):
            # Some leases were lost: the accepted jobs are the ones this batch finished.
            ids = [i.job_id for i in items]
            done = select(jobs.c.id).where(
                jobs.c.id.in_(ids), jobs.c.finished_at == now, jobs.c.lease_token.is_(None)
            )
            kept = set(conn.execute(done).scalars())
            items = [i for i in items if i.job_id in kept]
            if not items:
                return set()
        self._run(
            conn,
            _FINISH_ATTEMPT,
            [
                dict(
                    a_job=i.job_id,
                    a_attempt=i.attempt,
                    a_outcome=Status.SUCCEEDED.value,
                    a_now=now,
                    a_error=None,
                    a_traceback=None,
                )
                for i in items
            ],
        )
        return {i.job_id for i in items}

    def _finish_and_claim(
        self,
        conn: Connection,
        job_id: str,
        token: str,
        attempt: int,
        status: Status,
        result: str | None,
        error: str | None,
        traceback: str | None,
        outcome: str | None,
        claim: dict[str, Any] | None,
        parent_id: str | object | None,
    ) -> tuple[bool, list[ClaimedJob]]:
        plain = status == Status.SUCCEEDED and outcome is None and parent_id is None
        if plain and error is None and traceback is None and self._finish_many is not None:
            # A plain success, where one statement writes it and its attempt row: a
            # slot's hot path (the claim of its next job follows), one round trip.
            success = _Success(job_id, token, attempt, result, None)
            if claim is not None:
                done = self._finish_with_small_claim(conn, success, claim)
                if done is not None:
                    return done
            if not self._record_successes(conn, [success]):
                return False, []
        elif not self._finish_one(
            conn, job_id, token, attempt, status, result, error, traceback, outcome
        ):
            return False, []
        self._after_terminal(conn, job_id, parent_id)
        if claim is None:
            return True, []
        return True, self._claim_queue(
            conn,
            claim["queue"],
            tuple(claim["workflows"]),
            claim.get("limit", 1),
            claim["worker_id"],
            claim["lease_seconds"],
            ahead=claim.get("ahead", 0),
            freed=True,
        )

    def _finish_with_small_claim(
        self, conn: Connection, success: _Success, claim: dict[str, Any]
    ) -> tuple[bool, list[ClaimedJob]] | None:
        """A plain success and the claim of the next jobs of a small limit (see
        ``LimitedClaims._claim_capped``) sent together, where the database pipelines
        (PostgreSQL): the success, the limit's lock and the claim counting its own
        room, in one round trip.  The claim is guarded by the success (it takes
        nothing unless the fenced write was accepted), so a lost lease claims nothing,
        as when the claim follows the finish.  None where the claim takes another path.
        """
        queue, workflows = claim["queue"], tuple(claim["workflows"])
        if not self.is_limited(queue, workflows):
            return None
        limit = min(claim.get("limit", 1), self.dialect.claim_batch)
        ahead = claim.get("ahead", 0)
        statements = self._small_claim(queue, workflows, limit, ahead)
        if statements is None:
            return None
        lock, claim_statement = statements
        now = self.now()
        values = self._claim_params(
            claim["worker_id"], claim["lease_seconds"], dict(g_job=success.job_id, g_now=now)
        )
        calls = [
            (self._prepare(self._finish_many), _many([success], now)),
            (lock, {}),
            (claim_statement, values),
        ]
        results = None
        if conn.info.get(_ALONE):
            try:
                results = self.dialect.run_committed(conn, calls)
            except DBAPIError as exc:
                if not (exc.connection_invalidated and self._committed(success)):
                    raise  # rolled back (or unknown): the group runs it again alone
                log.warning(
                    "job %s: its success committed, then the connection was lost; the "
                    "jobs claimed with it run once their leases expire",
                    success.job_id,
                )
                return True, []
        if results is None:
            results = self.dialect.run_together(conn, calls)
        finished, locked, claimed = results
        if not finished:  # the lease was lost: nothing written, and nothing claimed
            return False, _in_claim_order(claimed)  # (the claim is guarded: empty)
        if not self._small_claimed(locked):  # the limit changed: the claim took nothing
            values = {k: v for k, v in values.items() if not k.startswith("g_")}
            claimed = self._claim_limited(
                conn, queue, workflows, limit, values, ahead=ahead, freed=True
            )
        return True, _in_claim_order(claimed)

    def _committed(self, success: _Success) -> bool:
        """Whether ``success`` is recorded (its attempt row says so), after a connection
        lost with its commit under way; False when it cannot be read either."""
        proof = (success.job_id, success.attempt, Status.SUCCEEDED.value)
        return bool(self._outcome_recorded(proof))

    def _finish_one(
        self,
        conn: Connection,
        job_id: str,
        token: str,
        attempt: int,
        status: Status,
        result: str | None,
        error: str | None,
        traceback: str | None,
        outcome: str | None,
    ) -> bool:
        """Record one job's terminal status and its attempt row, fenced by its lease
        token; False when the lease was lost (nothing written)."""
        fenced = self._run(
            conn,
            _FINISH,
            dict(
                f_id=job_id,
                f_token=token,
                f_now=self.now(),
                f_status=status.value,
                f_result=result,
                f_error=error,
                f_traceback=traceback,
                f_failed=1 if status == Status.FAILED else 0,
            ),
        )
        if fenced.rowcount != 1:
            return False
        self._finish_attempt(conn, job_id, attempt, outcome or status.value, error, traceback)
        return True

    def retry_job_later(
        self,
        *,
        job_id: str,
        token: str,
        attempt: int,
        run_at: float,
        error: str,
        traceback: str | None,
        outcome: str = "failed",
    ) -> bool:
        """Put a failed attempt's job back in the queue to run at ``run_at``."""
        error, traceback = storable_text(error), storable_text(traceback)
        with self._write() as conn:
            if not self._fence(
                conn,
                job_id,
                token,
                status=Status.QUEUED.value,
                run_at=run_at,
                error=error,
                traceback=traceback,
                lease_token=None,
                lease_expires_at=None,
                failures=jobs.c.failures + 1,
            ):
                return False
            self._finish_attempt(conn, job_id, attempt, outcome, error, traceback)
        return True

    def release_job(
        self,
        *,
        job_id: str,
        token: str,
        attempt: int,
        run_at: float | None = None,
        error: str | None = None,
    ) -> bool:
        """Give a running job back to the queue without counting a failure (a graceful
        stop, or the database failing under the run: ``run_at`` delays the next run and
        ``error`` says why on the attempt row)."""
        error = storable_text(error)
        with self._write() as conn:
            if not self._fence(
                conn,
                job_id,
                token,
                status=Status.QUEUED.value,
                run_at=self.now() if run_at is None else run_at,
                lease_token=None,
                lease_expires_at=None,
            ):
                return False
            self._finish_attempt(conn, job_id, attempt, "released", error)
        return True

    def unclaim_job(self, *, job_id: str, token: str, cancel: bool = False) -> bool:
        """Undo the claim of a job that never started (claimed ahead by a worker): back
        to the queue, or cancelled when ``cancel``, as if never claimed (no attempt)."""
        now = self.now()
        values: dict[str, Any] = dict(
            attempts=jobs.c.attempts - 1,
            started_at=case((jobs.c.attempts == 1, None), else_=jobs.c.started_at),
            lease_token=None,
            lease_expires_at=None,
        )
        if cancel:
            values.update(status=Status.CANCELLED.value, finished_at=now, error="cancelled")
        else:
            values.update(status=Status.QUEUED.value)
        with self._write() as conn:
            if not self._fence(conn, job_id, token, **values):
                return False
            if cancel:
                self._after_terminal(conn, job_id)
        return True
