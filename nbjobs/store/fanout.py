"""Fan-out and fan-in: children inserted with their parent's wait, decided as they end.

The parent is parked like any durable wait (:mod:`.waits`).  The fan-in is decided in
the transaction that makes a child terminal (``_after_terminal``, which every terminal
write calls explicitly), so a crash can never separate a child's end from its parent's
resume; a recovery sweep (``heal_fanouts``) re-decides anyway, as a safety net.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from types import SimpleNamespace
from typing import Any

from sqlalchemy import exists, insert, select, update
from sqlalchemy.engine import Connection, Row

from ..jobs import FINISHED, Status
from ..schema import RESERVED_KEY_PREFIX, RUNNING_SQL, checkpoints, jobs, jobs_by_key, new_ids
from ..strategies import Strategy, strategy_from_detail
from .core import UNKNOWN
from .fanin import fanin_statements
from .jobs import fresh_job_counters
from .waits import DONE, SUSPENDED, WaitQueries, WaitResult

_CHUNK = 500
_INSERT_JOBS = insert(jobs)


_DECIDED_WITHOUT = "cancelled: the fan-out was decided without it"
_ENDED_ON_ITS_OWN = (Status.SUCCEEDED.value, Status.FAILED.value)


def _decided() -> Any:
    """A child's fan-in was decided while its attempt ran (a child retried by hand
    after the decision is left alone)."""
    return exists().where(
        checkpoints.c.job_id == jobs.c.parent_id,
        checkpoints.c.name == jobs.c.fanout,
        checkpoints.c.done.is_(True),
        jobs.c.claimed_at <= checkpoints.c.finished_at,
    )


def _chunks(ids: Sequence[str]) -> Iterator[list[str]]:
    for i in range(0, len(ids), _CHUNK):
        yield list(ids[i : i + _CHUNK])


class FanoutQueries(WaitQueries):
    """Fan-out, fan-in, the recovery sweep, and cancelling or reopening a subtree."""

    def begin_fanout(
        self,
        *,
        job_id: str,
        token: str,
        attempt: int,
        root_id: str | None,
        name: str,
        seq: int,
        detail: dict[str, Any],
        children: list[dict[str, Any]] | None,
        code_fingerprint: str | None = None,
    ) -> WaitResult:
        """Record the fan-out and insert its children (or re-wait for recorded ones), then
        return the outcomes if the fan-in is already decided, else park the parent.

        Children get deterministic keys ``nbjobs:{parent}/{fan-out}/{index}``, which no
        user key can take first (``RESERVED_KEY_PREFIX``); children that
        exist already (the fan-out was dropped by ``retry(from_checkpoint=...)``) are
        reset and run again instead of being inserted twice.
        """

        def work(conn: Connection) -> Any:
            refused = self._own(conn, job_id, token)
            if refused:
                return WaitResult(refused)
            cp = conn.execute(
                select(checkpoints.c.done, checkpoints.c.value).where(
                    checkpoints.c.job_id == job_id, checkpoints.c.name == name
                )
            ).first()
            if cp is not None and cp.done:
                return WaitResult(DONE, cp.value)
            if cp is None:
                self._start_children(conn, job_id, root_id or job_id, name, children or [])
                self._put_checkpoint(
                    conn,
                    job_id=job_id,
                    name=name,
                    seq=seq,
                    kind="fanout",
                    attempt=attempt,
                    done=False,
                    exists_=False,
                    detail=detail,
                    code_fingerprint=code_fingerprint,
                )
            outcomes = self._decide_fanin(conn, job_id, name)
            if outcomes is not None:
                return WaitResult(DONE, outcomes)
            self._park(conn, job_id, attempt, None, f"fanout:{name}")
            return WaitResult(SUSPENDED)

        return self._retry_conflicts(work)

    def _start_children(
        self, conn: Connection, parent_id: str, root_id: str, name: str, children: list[dict]
    ) -> None:
        now = self.now()
        existing = {
            r.fanout_index: r
            for r in conn.execute(
                select(jobs.c.id, jobs.c.fanout_index, jobs.c.status).where(
                    jobs.c.parent_id == parent_id, jobs.c.fanout == name
                )
            )
        }
        rows = []
        counters = fresh_job_counters(now)
        queued = Status.QUEUED.value
        fresh_ids = iter(new_ids(len(children)))
        for index, fields in enumerate(children):
            old = existing.get(index)
            if old is not None:
                if old.status in FINISHED:
                    self._reset_job(conn, old.id, now, fresh=True, input=fields["input"])
                continue
            run_at = fields.get("run_at")
            rows.append(
                {
                    **fields,
                    **counters,
                    "id": next(fresh_ids),
                    "status": queued,
                    "run_at": now if run_at is None else run_at,
                    # In nbjobs' own key namespace (children of an older version have
                    # the bare form; children are found by parent and fan-out, never by key).
                    "key": f"{RESERVED_KEY_PREFIX}{parent_id}/{name}/{index}",
                    "parent_id": parent_id,
                    "root_id": root_id,
                    "fanout": name,
                    "fanout_index": index,
                }
            )
        # As ``app.submit_many``: the dialect's bulk path (PostgreSQL's COPY), else the
        # prepared INSERT by executemany, a chunk at a time; all in this one transaction.
        if rows and not self.dialect.copy_rows(conn, jobs, rows):
            for i in range(0, len(rows), _CHUNK):
                self._run(conn, _INSERT_JOBS, rows[i : i + _CHUNK])

    @functools.cached_property
    def _fanin_sql(self) -> SimpleNamespace:
        """The fan-in's statements (:func:`.fanin.fanin_statements`), built once."""
        return fanin_statements(self.dialect.lock)

    def _decide_fanin(self, conn: Connection, parent_id: str, name: str) -> str | None:
        """Decide the fan-in ``name`` of ``parent_id`` if its strategy can; returns the
        outcomes text when decided now (and resumes a parent that waits for it)."""
        row = conn.execute(self._fanin_sql.by_parent, {"parent": parent_id, "name": name}).first()
        return None if row is None else self._decide(conn, row)

    def _decided_before(self, conn: Connection, parent_id: str, name: str) -> bool:
        """``_decide_fanin``; True when another transaction had decided it already."""
        row = conn.execute(self._fanin_sql.by_parent, {"parent": parent_id, "name": name}).first()
        if row is not None and not row.done:
            self._decide(conn, row)
        return row is not None and row.done

    def _counts(self, conn: Connection, parent: Row) -> tuple[Strategy, int, int, int, int]:
        """(strategy, children, succeeded, not ok, running) of a fan-out."""
        key = {"parent": parent.id, "name": parent.name}
        counts = dict(conn.execute(self._fanin_sql.counts, key).all())
        succeeded = counts.get(Status.SUCCEEDED.value, 0)
        not_ok = sum(counts.get(s, 0) for s in FINISHED) - succeeded
        detail = json.loads(parent.detail)
        return (
            strategy_from_detail(detail),
            detail["count"],
            succeeded,
            not_ok,
            counts.get(Status.RUNNING.value, 0),
        )

    def _decide(self, conn: Connection, parent: Row) -> str | None:
        """The decision itself, on a locked (parent, fan-out checkpoint) row."""
        if parent.done or parent.status in FINISHED:
            return None
        sql = self._fanin_sql
        key = {"parent": parent.id, "name": parent.name}
        probe = conn.execute(sql.unfinished, key).one()
        # With a child not ended, FailFast and CollectAll tell from the probes alone
        # whether the fan-in is decided (a child queued or running is alike to them);
        # only the others, or a fan-in whose children all ended, count.
        verdict = (
            strategy_from_detail(json.loads(parent.detail)).could_decide_pending(bool(probe.not_ok))
            if probe.unfinished
            else None
        )
        if verdict is False:
            return None
        if verdict is None:
            strategy, total, succeeded, not_ok, _running = self._counts(conn, parent)
            if not strategy.decided(total, succeeded, not_ok):
                return None
        outcomes = []
        unfinished = []
        for c in conn.execute(sql.children, key):
            if c.status in FINISHED:
                error = None if c.status == Status.SUCCEEDED.value else (c.error or c.status)
                outcomes.append(
                    {"status": c.status, "result": c.result, "error": error, "job_id": c.id}
                )
            else:
                unfinished.append(c.id)
                outcomes.append(
                    {
                        "status": Status.CANCELLED.value,
                        "result": None,
                        "error": _DECIDED_WITHOUT,
                        "job_id": c.id,
                    }
                )
        if unfinished:
            self._cancel_tree(conn, unfinished)
        text = json.dumps(outcomes)
        now = self.now()
        conn.execute(
            update(checkpoints)
            .where(checkpoints.c.job_id == parent.id, checkpoints.c.name == parent.name)
            .values(done=True, value=text, finished_at=now)
        )
        resume: dict[str, Any] = {}
        if (
            parent.status == Status.WAITING.value
            and parent.waiting_for == f"fanout:{parent.name}"[:255]
        ):
            resume = dict(status=Status.QUEUED.value, run_at=now, waiting_for=None)
        conn.execute(
            update(jobs)
            .where(jobs.c.id == parent.id)
            .values(steps_done=jobs.c.steps_done + 1, updated_at=now, **resume)
        )
        return text

    def _after_terminal(
        self, conn: Connection, job_id: str, parent_id: str | object | None = UNKNOWN
    ) -> None:
        """A job became terminal: if it is a fan-out child, try to decide its fan-in.

        Called, in the transaction that makes a job terminal, by every such write
        (finish, unclaim, cancel, the reaper).  ``parent_id`` is passed when the caller
        knows it (``None``: a top-level job, so nothing to decide and no query needed
        on the hot path).
        """
        if parent_id is None:
            return  # a top-level job: nothing to decide, no query
        parent = conn.execute(self._fanin_sql.by_child, {"child": job_id}).first()
        if parent is not None and self._check_fanin(conn, parent):
            self._overtaken(conn, [job_id])

    def _after_terminals(self, conn: Connection, fanouts: dict[tuple[str, str], list[str]]) -> None:
        """Several fan-out children (ids by their (parent, fan-out)) became terminal in
        one transaction (their successes shared a group commit): each (parent, fan-out)
        is checked once, not once a child.  Checked after all of them are written, a
        fan-in sees the whole group ended, as the last of them checking alone would."""
        late: list[str] = []
        for parent_id, name in sorted(fanouts):  # one order: parents locked alike
            key = {"parent": parent_id, "name": name}
            parent = conn.execute(self._fanin_sql.by_fanout, key).first()
            if parent is not None and self._check_fanin(conn, parent):
                late += fanouts[parent_id, name]
        if late:
            self._overtaken(conn, late)

    def _overtaken(self, conn: Connection, ids: list[str]) -> None:
        """Children that ended in this transaction although their fan-in was decided
        before it (another transaction counted them unfinished: "cancelled" in the
        parent's outcomes, whatever they did since) end cancelled, as it says."""
        conn.execute(
            jobs_by_key(update(jobs))
            .where(jobs.c.id.in_(ids), jobs.c.status.in_(_ENDED_ON_ITS_OWN), _decided())
            .values(status=Status.CANCELLED.value, result=None, error=_DECIDED_WITHOUT)
        )

    def fanout_counts_successes(self, parent_id: str, name: str) -> bool:
        """Whether the fan-in ``name`` of ``parent_id`` counts successes (``Threshold``;
        an unknown one counts).  A worker asks once a fan-out: such children's successes
        are committed as they end, never left to a later shared commit while the slot
        runs a sibling that the n-th success should have cancelled."""
        with self._read() as conn:
            detail = conn.execute(
                select(checkpoints.c.detail).where(
                    checkpoints.c.job_id == parent_id,
                    checkpoints.c.name == name,
                    checkpoints.c.kind == "fanout",
                )
            ).scalar()
        if detail is None:
            return True
        return strategy_from_detail(json.loads(detail)).could_decide_pending(False) is None

    def _undecided_fanouts(
        self, conn: Connection, parent_ids: Sequence[str]
    ) -> dict[str, list[tuple[str, bool]]]:
        """The undecided fan-outs of ``parent_ids``: (name, whether its fan-in counts
        successes, as ``Threshold(n)``) by parent (a parent waits for one at a time).

        A group records the children of one that counts one by one, each with its
        check, so that the n-th decides, as alone (together they would overshoot it);
        FailFast and CollectAll decide on successes only once all children ended."""
        found: dict[str, list[tuple[str, bool]]] = {}
        for chunk in _chunks(sorted(parent_ids)):
            for row in conn.execute(self._fanin_sql.undecided, {"parents": chunk}):
                strategy = strategy_from_detail(json.loads(row.detail))
                counts = strategy.could_decide_pending(False) is None
                found.setdefault(row.job_id, []).append((row.name, counts))
        return found

    def _check_fanin(self, conn: Connection, parent: Row) -> bool:
        """Decide the fan-in of a (parent, fan-out checkpoint) row read with its
        children's probes (``by_child``), now that one of its children ended.

        True when another transaction had decided it already (the child ended too late
        to count; see ``_overtaken``)."""
        if parent.done:
            return True
        if parent.status in FINISHED:
            return False
        if parent.pending:
            # A sibling is still queued or waiting: most strategies can tell from that
            # and from whether any child failed that the fan-in cannot be decided yet.
            strategy = strategy_from_detail(json.loads(parent.detail))
            verdict = strategy.could_decide_pending(bool(parent.not_ok))
            if verdict is False and self.dialect.skip_locked:
                if not strategy.could_decide_pending(True):
                    return False
                # FailFast: a sibling's failure not yet committed may be deciding it
                # without this child (one writer at a time, SQLite cannot race).  A
                # shared lock (siblings do not wait for each other) makes that
                # decision wait for this commit, or this check for that decision.
                key = {"parent": parent.id, "name": parent.name}
                return bool(conn.execute(self._fanin_sql.shared, key).scalar())
            if verdict is not None:
                return bool(verdict) and self._decided_before(conn, parent.id, parent.name)
        # No sibling queued or waiting: the running ones, ending either way, complete
        # the decision under every strategy (each decides once all children ended), so
        # lock the parent and decide.  Unlocked, a sibling finishing at this moment
        # still looks running; the last of two siblings to take the lock sees the
        # other's commit.
        return self._decided_before(conn, parent.id, parent.name)

    def heal_fanouts(self, limit: int = 100) -> int:
        """The recovery sweep every worker's monitor runs; returns the parents resumed.

        * Re-decides the fan-ins of waiting parents whose children are all terminal (the
          decision normally happens in the last child's terminal transaction).
        * Asks running children to stop whose fan-out was decided without them or whose
          parent was cancelled: the decision skips rows another transaction holds, rather
          than wait for them while it holds the parent's row.
        """
        child = jobs.alias("child")
        parent = jobs.alias("parent")
        busy = exists().where(child.c.parent_id == jobs.c.id, child.c.status.not_in(FINISHED))
        stalled_stmt = (
            select(jobs.c.id, jobs.c.waiting_for)
            .where(
                jobs.c.status == Status.WAITING.value,
                jobs.c.waiting_for.like("fanout:%"),
                ~busy,
            )
            .limit(limit)
        )
        decided = _decided()
        cancelled = exists().where(
            parent.c.id == jobs.c.parent_id, parent.c.status == Status.CANCELLED.value
        )
        orphans_stmt = (
            select(jobs.c.id)
            .where(
                jobs.c.status == RUNNING_SQL,
                jobs.c.parent_id.is_not(None),
                jobs.c.cancel_requested.is_(False),
                decided | cancelled,
            )
            .limit(limit)
        )
        with self._read() as conn:
            stalled = conn.execute(stalled_stmt).all()
            orphans = conn.execute(orphans_stmt).scalars().all()
        if orphans:

            def stop(conn: Connection) -> None:
                conn.execute(
                    jobs_by_key(update(jobs))
                    .where(jobs.c.id.in_(orphans), jobs.c.status == Status.RUNNING.value)
                    .values(cancel_requested=True, updated_at=self.now())
                )
                self._request_cancel(conn)

            self._retry_conflicts(stop)
        resumed = 0
        for row in stalled:
            name = row.waiting_for[len("fanout:") :]
            decide = functools.partial(self._decide_fanin, parent_id=row.id, name=name)
            if self._retry_conflicts(decide):
                resumed += 1
        return resumed

    # -- cancellation ------------------------------------------------------------------
    def _cancel_tree(self, conn: Connection, ids: Sequence[str]) -> None:
        """Cancel jobs and all their descendants: queued and waiting ones at once,
        running ones by ``cancel_requested`` (they stop at their next step).

        Running rows another transaction holds are skipped, not waited for: that
        transaction may be a child's fan-in waiting for a parent row this one holds.
        ``heal_fanouts`` asks them to stop a moment later.
        """
        now = self.now()
        frontier = list(ids)
        while frontier:
            below: list[str] = []
            for chunk in _chunks(frontier):
                rows = conn.execute(
                    select(jobs.c.id, jobs.c.status, jobs.c.cancel_requested).where(
                        jobs.c.id.in_(chunk)
                    )
                ).all()
                idle = [
                    r.id for r in rows if r.status in (Status.QUEUED.value, Status.WAITING.value)
                ]
                if idle:
                    conn.execute(
                        jobs_by_key(update(jobs))
                        .where(
                            jobs.c.id.in_(idle),
                            jobs.c.status.in_([Status.QUEUED.value, Status.WAITING.value]),
                        )
                        .values(
                            status=Status.CANCELLED.value,
                            cancel_requested=True,
                            waiting_for=None,
                            finished_at=now,
                            updated_at=now,
                            error="cancelled",
                        )
                    )
                busy = [
                    r.id
                    for r in rows
                    if r.status == Status.RUNNING.value and not r.cancel_requested
                ]
                if busy:
                    free = (
                        conn.execute(
                            self.dialect.lock(
                                jobs_by_key(select(jobs.c.id)).where(
                                    jobs.c.id.in_(busy), jobs.c.status == Status.RUNNING.value
                                ),
                                skip_locked=True,
                            )
                        )
                        .scalars()
                        .all()
                    )
                    if free:
                        conn.execute(
                            jobs_by_key(update(jobs))
                            .where(jobs.c.id.in_(free))
                            .values(cancel_requested=True, updated_at=now)
                        )
                        self._request_cancel(conn)
                below += conn.execute(
                    select(jobs.c.id).where(
                        jobs.c.parent_id.in_(chunk), jobs.c.status.not_in(FINISHED)
                    )
                ).scalars()
            frontier = below

    # -- retries -----------------------------------------------------------------------
    def _reopen_fanouts(self, conn: Connection, job_id: str, now: float) -> None:
        fanouts = conn.execute(
            select(checkpoints.c.name, checkpoints.c.done, checkpoints.c.value).where(
                checkpoints.c.job_id == job_id, checkpoints.c.kind == "fanout"
            )
        ).all()
        for cp in fanouts:
            if cp.done and all(o["status"] == Status.SUCCEEDED.value for o in json.loads(cp.value)):
                continue
            conn.execute(
                update(checkpoints)
                .where(checkpoints.c.job_id == job_id, checkpoints.c.name == cp.name)
                .values(done=False, value=None, finished_at=None)
            )
            kids = conn.execute(
                select(jobs.c.id, jobs.c.status).where(
                    jobs.c.parent_id == job_id, jobs.c.fanout == cp.name
                )
            ).all()
            for kid in kids:
                if kid.status in (Status.FAILED.value, Status.CANCELLED.value):
                    self._reopen_fanouts(conn, kid.id, now)
                    self._reset_job(conn, kid.id, now, fresh=False)
                elif kid.status not in FINISHED:
                    conn.execute(
                        update(jobs).where(jobs.c.id == kid.id).values(cancel_requested=False)
                    )
