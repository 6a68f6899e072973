"""The fan-in's statements: a check runs in every fan-out child's terminal transaction.

Built once per store (``FanoutQueries._fanin_sql``) and kept apart from the decisions
that use them (:mod:`.fanout`).
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Select, and_, bindparam, func, literal_column, or_, select

from ..jobs import Status
from ..schema import checkpoints, jobs


def fanin_statements(lock: Callable[..., Select]) -> SimpleNamespace:
    """The fan-in's statements, built once: a check runs in every child's terminal
    transaction, so it is one cached statement and takes no exclusive lock while the
    fan-in cannot be decided yet (the parent's row lock would serialize all the
    children); ``shared`` is the lock siblings can hold together (FailFast's check).

    That statement also tells whether any sibling is still queued or waiting, and
    whether any failed or was cancelled: two probes of ``ix_nbjobs_jobs_parent``
    (parent, fan-out, status), O(log n) each, where counting the siblings scans all
    of them (every child of a fan-out checks once: O(n^2) in all).
    """
    child = jobs.alias("fanin_child")
    sibling = jobs.alias("fanin_sibling")
    columns = (
        jobs.c.id,
        jobs.c.status,
        jobs.c.waiting_for,
        checkpoints.c.name,
        checkpoints.c.done,
        checkpoints.c.detail,
    )

    def any_sibling(name: str, *statuses: Status, of: Any = child.c) -> Any:
        # One probe per status, each an equality on all three index columns (an IN
        # list left PostgreSQL filtering every sibling's entry); inline literals,
        # as a partial index needs, and no re-compiling of an expanding IN.
        probes = [
            select(literal_column("1"))  # the index alone answers
            .select_from(sibling)
            .where(
                sibling.c.parent_id == of.parent_id,
                sibling.c.fanout == of.fanout,
                sibling.c.status == literal_column(f"'{status.value}'"),
            )
            .exists()
            for status in statuses
        ]
        return or_(*probes).label(name)

    fanout_cp = and_(checkpoints.c.job_id == jobs.c.id, checkpoints.c.kind == "fanout")
    by_child = select(
        *columns,
        any_sibling("pending", Status.QUEUED, Status.WAITING),
        any_sibling("not_ok", Status.FAILED, Status.CANCELLED),
    ).select_from(
        child.join(jobs, jobs.c.id == child.c.parent_id).join(
            checkpoints, and_(fanout_cp, checkpoints.c.name == child.c.fanout)
        )
    )
    by_child = by_child.where(child.c.id == bindparam("child"))
    by_parent = (
        select(*columns)
        .select_from(jobs.join(checkpoints, fanout_cp))
        .where(jobs.c.id == bindparam("parent"), checkpoints.c.name == bindparam("name"))
    )
    siblings = (jobs.c.parent_id == bindparam("parent"), jobs.c.fanout == bindparam("name"))

    def any_child(*statuses: Status) -> Any:
        # As any_sibling, for the decision itself (by parent and fan-out name).
        return or_(
            *(
                select(literal_column("1"))
                .select_from(jobs)
                .where(*siblings, jobs.c.status == literal_column(f"'{status.value}'"))
                .exists()
                for status in statuses
            )
        )

    # A group of children recorded together (a group commit) is checked once per
    # fan-out: the undecided fan-outs of their parents first (by primary key: a
    # join through the children let PostgreSQL scan all siblings), then each
    # one's probes by parent and name.
    undecided = select(checkpoints.c.job_id, checkpoints.c.name, checkpoints.c.detail).where(
        checkpoints.c.job_id.in_(bindparam("parents", expanding=True)),
        checkpoints.c.kind == "fanout",
        checkpoints.c.done.is_(False),
    )
    named = SimpleNamespace(parent_id=bindparam("parent"), fanout=bindparam("name"))
    by_fanout = (
        select(
            *columns,
            any_sibling("pending", Status.QUEUED, Status.WAITING, of=named),
            any_sibling("not_ok", Status.FAILED, Status.CANCELLED, of=named),
        )
        .select_from(jobs.join(checkpoints, fanout_cp))
        .where(jobs.c.id == bindparam("parent"), checkpoints.c.name == bindparam("name"))
    )
    return SimpleNamespace(
        undecided=undecided,
        by_fanout=by_fanout,
        unfinished=select(
            any_child(Status.QUEUED, Status.WAITING, Status.RUNNING).label("unfinished"),
            any_child(Status.FAILED, Status.CANCELLED).label("not_ok"),
        ),
        by_child=by_child,
        by_parent=lock(by_parent),
        shared=lock(
            select(checkpoints.c.done).where(
                checkpoints.c.job_id == bindparam("parent"),
                checkpoints.c.name == bindparam("name"),
            ),
            shared=True,
        ),
        counts=select(jobs.c.status, func.count()).where(*siblings).group_by(jobs.c.status),
        children=select(jobs.c.id, jobs.c.status, jobs.c.result, jobs.c.error)
        .where(*siblings)
        .order_by(jobs.c.fanout_index),
    )
