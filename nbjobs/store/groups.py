"""Groups of jobs (sweeps): ``wf.map`` and ``app.submit_many`` insert them all at once.

A group is one ``nbjobs_groups`` row and one ``nbjobs_group_jobs`` row per member (its
position in the submitted items).  Every job of a group, the group and its members are
written in one transaction: all of them or nothing.  The jobs go in by the dialect's
bulk path (``Dialect.copy_rows``: PostgreSQL's ``COPY``, multi-row ``INSERT``\\ s on
SQLite and DuckDB), else by one prepared ``INSERT`` run by the driver's ``executemany``
(PyMySQL rewrites it into multi-row ``INSERT``\\ s under its packet size), never with a
statement compiled per row.

Keys: a member whose idempotency key a job already holds is that job (nothing is
inserted for it), as ``submit`` returns the job of a known key; a key given twice in
one call names one job.  Two callers inserting the same new key at once: the loser's
transaction rolls back whole and runs again, finding the winner's job.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from ..errors import UnknownJob
from ..jobs import ACTIVE, Status
from ..schema import group_jobs, groups, jobs, new_id, new_ids
from .cancel import CancelQueries
from .jobs import fresh_job_counters

#: Rows per ``executemany`` call (bounds the memory of the bound parameters).
_ROWS = 5000
#: Ids per ``IN (...)`` list: well under every backend's parameter limit.
_IDS = 500
#: Times a group is inserted again after another caller took one of its keys first.
_KEY_RACES = 3

_INSERT_JOBS = insert(jobs)
_INSERT_MEMBERS = insert(group_jobs)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class GroupQueries(CancelQueries):
    """Insert a group of jobs at once; read, cancel and retry it as one thing."""

    def enqueue_group(
        self, rows: Sequence[dict[str, Any]], *, label: str | None
    ) -> tuple[str, list[str], int]:
        """Insert a group of queued jobs, one per row of job fields (what
        ``Runtime.job_fields`` makes), in one transaction.

        Returns (group id, the job id of each row, the number of jobs inserted).  A row
        whose key a job holds already is that job.  When no job is new and the jobs are
        exactly the members of an existing group, in order, that group is returned (a
        keyed ``submit_many`` run again returns its first group).
        """
        for attempt in range(_KEY_RACES):
            try:
                return self._retry_conflicts(lambda conn: self._enqueue_group(conn, rows, label))
            except IntegrityError:
                if attempt == _KEY_RACES - 1 or not any(r.get("key") for r in rows):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _enqueue_group(
        self, conn: Connection, rows: Sequence[dict[str, Any]], label: str | None
    ) -> tuple[str, list[str], int]:
        now = self.now()
        keys = list(dict.fromkeys(r["key"] for r in rows if r.get("key") is not None))
        by_key: dict[str, str] = {}
        for chunk in _chunks(keys, _IDS):
            by_key.update(
                conn.execute(select(jobs.c.key, jobs.c.id).where(jobs.c.key.in_(chunk))).all()
            )
        taken = bool(by_key)
        ids: list[str] = []
        new: list[dict[str, Any]] = []
        common = {**fresh_job_counters(now), "status": Status.QUEUED.value}
        fresh_ids = iter(new_ids(len(rows)))
        for fields in rows:
            key = fields.get("key")
            if key is not None:
                known = by_key.get(key)
                if known is not None:
                    ids.append(known)
                    continue
            job_id = next(fresh_ids)
            if key is not None:
                by_key[key] = job_id
            row = fields | common
            row["id"] = row["root_id"] = job_id
            if row.get("run_at") is None:
                row["run_at"] = now
            new.append(row)
            ids.append(job_id)
        if taken and not new:
            same = self._group_of(conn, ids)
            if same is not None:
                return same, ids, 0
        self._insert_rows(conn, _INSERT_JOBS, new)
        for queue in dict.fromkeys(row.get("queue", "default") for row in new):
            self._made_ready(conn, queue)
        group_id = new_id()
        conn.execute(insert(groups).values(id=group_id, label=label, size=len(ids), created_at=now))
        members = [
            {"group_id": group_id, "position": i, "job_id": job_id} for i, job_id in enumerate(ids)
        ]
        self._insert_rows(conn, _INSERT_MEMBERS, members)
        return group_id, ids, len(new)

    def _insert_rows(self, conn: Connection, statement: Any, rows: list[dict[str, Any]]) -> None:
        """Insert many rows of ``statement``'s table: the dialect's bulk path, else the
        prepared ``INSERT`` by ``executemany``, a chunk at a time."""
        if not rows:
            return
        if self.dialect.copy_rows(conn, statement.table, rows):
            return
        for chunk in _chunks(rows, _ROWS):
            self._run(conn, statement, list(chunk))

    def _group_of(self, conn: Connection, ids: list[str]) -> str | None:
        """The group whose members are exactly ``ids``, in order, if there is one."""
        if not ids:
            return None
        candidates = (
            conn.execute(
                select(group_jobs.c.group_id)
                .where(group_jobs.c.job_id == ids[0], group_jobs.c.position == 0)
                .order_by(group_jobs.c.group_id)
            )
            .scalars()
            .all()
        )
        for group_id in candidates:
            members = conn.execute(
                select(group_jobs.c.job_id)
                .where(group_jobs.c.group_id == group_id)
                .order_by(group_jobs.c.position)
            ).scalars()
            if list(members) == ids:
                return str(group_id)
        return None

    # -- reads -------------------------------------------------------------------------
    def get_group(self, group_id: str) -> Row:
        """The group's row (``id``, ``label``, ``size``, ``created_at``); ``UnknownJob``
        when there is no such group."""
        with self._read() as conn:
            row = conn.execute(select(groups).where(groups.c.id == group_id)).first()
        if row is None:
            raise UnknownJob(f"no job group with id {group_id!r}")
        return row

    def list_groups(self, limit: int | None = 100) -> Sequence[Row]:
        """Groups, newest first (ids are time-ordered)."""
        with self._read() as conn:
            return conn.execute(select(groups).order_by(groups.c.id.desc()).limit(limit)).all()

    def group_status_counts(self, group_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """Group id -> status -> members in it, for each of ``group_ids`` (one query)."""
        stmt = (
            select(group_jobs.c.group_id, jobs.c.status, func.count())
            .select_from(group_jobs.join(jobs, jobs.c.id == group_jobs.c.job_id))
            .where(group_jobs.c.group_id.in_(list(group_ids)))
            .group_by(group_jobs.c.group_id, jobs.c.status)
        )
        out: dict[str, dict[str, int]] = {g: {} for g in group_ids}
        with self._read() as conn:
            for group_id, status, count in conn.execute(stmt):
                out[group_id][status] = int(count)
        return out

    def group_members(self, group_id: str, *, full: bool = False) -> Sequence[Row]:
        """The group's jobs in position order: ``position``, ``id``, ``workflow``,
        ``status``, ``error``, ``created_at``, ``started_at``, ``finished_at`` (and with
        ``full``, ``input`` and ``result``)."""
        columns = [
            group_jobs.c.position,
            jobs.c.id,
            jobs.c.workflow,
            jobs.c.status,
            jobs.c.error,
            jobs.c.created_at,
            jobs.c.started_at,
            jobs.c.finished_at,
        ]
        if full:
            columns += [jobs.c.input, jobs.c.result]
        stmt = (
            select(*columns)
            .select_from(group_jobs.join(jobs, jobs.c.id == group_jobs.c.job_id))
            .where(group_jobs.c.group_id == group_id)
            .order_by(group_jobs.c.position)
        )
        with self._read() as conn:
            return conn.execute(stmt).all()

    def _member_ids(self, conn: Connection, group_id: str, statuses: Sequence[str]) -> list[str]:
        stmt = (
            select(jobs.c.id)
            .select_from(group_jobs.join(jobs, jobs.c.id == group_jobs.c.job_id))
            .where(group_jobs.c.group_id == group_id, jobs.c.status.in_(list(statuses)))
            .order_by(group_jobs.c.position)
        )
        return list(dict.fromkeys(conn.execute(stmt).scalars()))

    # -- actions -----------------------------------------------------------------------
    def cancel_group(self, group_id: str) -> list[str]:
        """Cancel every unfinished job of the group (and their fan-out subtrees) in one
        transaction: queued and waiting ones at once, running ones at their next step.
        Returns the ids of the jobs the request reached."""
        self.get_group(group_id)

        def work(conn: Connection) -> list[str]:
            ids = self._member_ids(conn, group_id, ACTIVE)
            if ids:
                self._cancel_tree(conn, ids)
            return ids

        return self._retry_conflicts(work)

    def retry_group(self, group_id: str, statuses: Sequence[str]) -> list[str]:
        """Queue again, in one transaction, every job of the group whose status is among
        ``statuses`` (failed, cancelled), keeping its checkpoints; returns their ids."""
        self.get_group(group_id)

        def work(conn: Connection) -> list[str]:
            ids = self._member_ids(conn, group_id, statuses)
            for job_id in ids:
                self._retry_job(conn, job_id, None)
            return ids

        return self._retry_conflicts(work)
