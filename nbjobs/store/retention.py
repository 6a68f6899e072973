"""Retention: delete finished history (``app.purge``) without ever orphaning a fan-out child.

The unit of deletion is a whole job *tree* (a top-level job and every fan-out descendant,
which all share its ``root_id``): a tree is deleted only when its root is finished, old
enough and of a purged status, and no job of the tree is unfinished.  A child therefore
never outlives its parent, a parent never loses part of its fan-out, and a job that could
still be retried or resumed is never touched.

Each batch is one transaction that re-reads the trees' rows under a lock before deleting
them (with their checkpoints, attempts, step tries, signals, logs, hook runs and executed
notebooks), so a ``retry()`` or a ``cancel()`` racing the purge either happens first (and
the tree is skipped) or finds the job gone.  Batches are bounded, so a purge of millions
of rows never holds a long lock.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Select, and_, delete, exists, func, or_, select
from sqlalchemy.engine import Connection

from ..jobs import FINISHED
from ..schema import (
    attempts,
    checkpoints,
    group_jobs,
    groups,
    hook_runs,
    jobs,
    logs,
    notebooks,
    schedules,
    signals,
    step_cache,
    step_tries,
)
from .core import CoreStore

#: Ids per ``IN (...)`` list: well under every backend's parameter limit.
_CHUNK = 500


class RetentionQueries(CoreStore):
    """``purge_jobs``: bounded, tree-at-a-time deletion of finished jobs; and the texts
    that keep artifacts alive after it."""

    def texts_containing(self, marker: str) -> list[str]:
        """Every stored value (input, result, checkpoint, signal payload, schedule
        input, step cache entry) whose text contains ``marker``: the artifact sweep's mark phase reads
        the references they hold.  Rows without artifacts are skipped by the filter."""
        found: list[str] = []
        for column in (
            jobs.c.input,
            jobs.c.result,
            checkpoints.c.value,
            signals.c.payload,
            schedules.c.input,
            step_cache.c.value,
            notebooks.c.value,
        ):
            stmt = select(column).where(column.contains(marker, autoescape=True))
            with self._read() as conn:
                found.extend(conn.execute(stmt).scalars())
        return found

    def purge_jobs(
        self,
        *,
        finished_before: float,
        statuses: Sequence[str] = FINISHED,
        batch_size: int = 500,
        max_batches: int | None = None,
    ) -> tuple[int, bool]:
        """Delete finished trees whose root finished before ``finished_before``.

        Returns (jobs deleted, more left): ``more`` is True when ``max_batches`` stopped
        the purge before it ran out of candidates.
        """
        deleted = 0
        batches = 0
        while max_batches is None or batches < max_batches:
            count, full = self._purge_batch(finished_before, list(statuses), batch_size)
            deleted += count
            batches += 1
            if not full:
                return deleted, False
        return deleted, True

    def count_purgeable(self, *, finished_before: float, statuses: Sequence[str] = FINISHED) -> int:
        """How many jobs ``purge_jobs`` would delete now: the jobs of every tree whose
        root qualifies (the operator's confirmation names this count)."""
        roots = _purgeable_roots(finished_before, list(statuses)).subquery()
        stmt = select(func.count()).select_from(jobs).where(jobs.c.root_id.in_(select(roots.c.id)))
        with self._read() as conn:
            return conn.execute(stmt).scalar() or 0

    def _purge_batch(self, cutoff: float, statuses: list[str], limit: int) -> tuple[int, bool]:
        """One transaction: up to ``limit`` old finished roots and their trees.

        Returns (jobs deleted, whether the batch was full, i.e. more may remain).
        """
        candidates = _purgeable_roots(cutoff, statuses).limit(limit)
        with self._write() as conn:
            roots = conn.execute(candidates).scalars().all()
            if not roots:
                return 0, False
            victims = self._lock_finished_trees(conn, roots)
            if victims:
                self._unsettle(conn)
            for chunk in _chunks(victims):
                for table in (
                    checkpoints,
                    attempts,
                    step_tries,
                    signals,
                    logs,
                    hook_runs,
                    notebooks,
                ):
                    conn.execute(delete(table).where(table.c.job_id.in_(chunk)))
                conn.execute(delete(jobs).where(jobs.c.id.in_(chunk)))
            self._drop_memberships(conn, victims)
        return len(victims), len(roots) == limit

    def _drop_memberships(self, conn: Connection, victims: Sequence[str]) -> None:
        """Delete the group memberships of deleted jobs, and the groups left with no
        member (a group's ``size`` stays what was submitted; its counts are read from
        the members that remain)."""
        touched: set[str] = set()
        for chunk in _chunks(victims):
            found = set(
                conn.execute(
                    select(group_jobs.c.group_id).where(group_jobs.c.job_id.in_(chunk))
                ).scalars()
            )
            if found:
                touched |= found
                conn.execute(delete(group_jobs).where(group_jobs.c.job_id.in_(chunk)))
        if not touched:
            return
        for chunk in _chunks(sorted(touched)):
            alive = exists().where(group_jobs.c.group_id == groups.c.id)
            conn.execute(delete(groups).where(groups.c.id.in_(chunk), ~alive))

    def _lock_finished_trees(self, conn: Connection, roots: Sequence[str]) -> list[str]:
        """Lock the trees of ``roots`` and return the ids of those wholly finished.

        The candidates were read without locks; a tree that a concurrent retry made
        unfinished since is left alone here, where its rows are read under the lock.
        """
        members: dict[str, list[tuple[str, str]]] = {}
        for chunk in _chunks(roots):
            rows = conn.execute(
                self.dialect.lock(
                    select(jobs.c.id, jobs.c.root_id, jobs.c.status).where(
                        # The roots by their ids, their children by the tree index.
                        or_(
                            jobs.c.id.in_(chunk),
                            and_(jobs.c.parent_id.is_not(None), jobs.c.root_id.in_(chunk)),
                        )
                    )
                )
            ).all()
            for r in rows:
                members.setdefault(r.root_id, []).append((r.id, r.status))
        victims: list[str] = []
        for root in roots:
            tree = members.get(root, [])
            if tree and all(status in FINISHED for _, status in tree):
                victims += [job_id for job_id, _ in tree]
        return victims


def _purgeable_roots(cutoff: float, statuses: list[str]) -> Select:
    """The ids of the finished roots, of ``statuses``, finished before ``cutoff``, none of
    whose tree is unfinished."""
    tree = jobs.alias("tree")
    # The root itself is finished (its status is among ``statuses``); its children are
    # read through the children-only tree index.
    unfinished = exists().where(
        tree.c.root_id == jobs.c.id,
        tree.c.parent_id.is_not(None),
        tree.c.status.not_in(FINISHED),
    )
    return select(jobs.c.id).where(
        jobs.c.parent_id.is_(None),
        jobs.c.status.in_(statuses),
        # created_at <= finished_at, so this bound lets the (status, created_at) index
        # find the candidates; finished_at decides.
        jobs.c.created_at < cutoff,
        jobs.c.finished_at < cutoff,
        ~unfinished,
    )


def _chunks(ids: Sequence[str]) -> list[list[str]]:
    return [list(ids[i : i + _CHUNK]) for i in range(0, len(ids), _CHUNK)]
