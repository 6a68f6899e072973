"""Retention: ``app.purge`` and automatic retention delete finished history in bounded
batches, with every row that belongs to a job, and never orphan a fan-out child."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

import nbjobs
from nbjobs.schema import attempts, checkpoints, jobs, logs, signals
from tests.conftest import make_app
from tests.support import wait_until

TIMEOUT = 60


def rows_of(app: nbjobs.App, job_ids: list[str]) -> dict[str, int]:
    """How many rows each table still holds for these jobs."""
    out = {}
    with app.store._read() as conn:
        for table in (jobs, checkpoints, attempts, signals, logs):
            column = table.c.id if table is jobs else table.c.job_id
            out[table.name] = conn.execute(
                select(func.count()).select_from(table).where(column.in_(job_ids))
            ).scalar()
    return out


def test_purge_deletes_old_finished_jobs_with_all_their_rows(app: nbjobs.App) -> None:
    @app.workflow(name="chatty")
    def chatty(cs: nbjobs.CallState, x: int) -> int:
        print(f"working on {x}")
        cs.checkpoint("one", lambda: x)
        cs.wait_signal("go")
        if x < 0:
            raise ValueError("negative")
        return x

    app.start(concurrency=4)
    old = [chatty.submit(x) for x in (1, 2, -3)]
    for h in old:
        h.signal("go", {"x": 1})
    for h in old:
        wait_until(lambda h=h: h.status in ("succeeded", "failed"), TIMEOUT, what="old jobs")
    old_ids = [h.id for h in old]
    before = rows_of(app, old_ids)
    assert before["nbjobs_checkpoints"] >= 6 and before["nbjobs_signals"] == 3
    assert before["nbjobs_attempts"] >= 3 and before["nbjobs_logs"] >= 3

    cutoff = datetime.fromtimestamp(app.clock.now() + 0.001, timezone.utc)
    time.sleep(0.01)
    recent = chatty.submit(4)
    recent.signal("go")
    assert recent.result(timeout=TIMEOUT) == 4
    unfinished = chatty.submit(5)  # waits for a signal that never comes

    wait_until(lambda: unfinished.status == "waiting", TIMEOUT, what="a waiting job")
    # A dry run counts what would go and deletes nothing.
    assert app.purge(older_than=cutoff, dry_run=True) == 3
    assert rows_of(app, old_ids) == before
    assert app.purge(older_than=cutoff) == 3
    assert rows_of(app, old_ids) == dict.fromkeys(before, 0)
    assert recent.status == "succeeded" and recent.checkpoints["one"] == 4
    assert unfinished.status == "waiting"
    # An age: everything finished before "now" goes; the unfinished job never does.
    assert app.purge(older_than=0) == 1
    assert [h.id for h in app.jobs()] == [unfinished.id]
    assert app.purge(older_than=timedelta(0)) == 0


def test_status_filter_and_batches(sqlite_app: nbjobs.App) -> None:
    app = sqlite_app

    @app.workflow(name="maybe")
    def maybe(cs: nbjobs.CallState, ok: bool) -> bool:
        if not ok:
            raise RuntimeError("no")
        return ok

    app.start(concurrency=2)
    handles = [maybe.submit(i % 3 != 0) for i in range(9)]  # 3 fail, 6 succeed
    for h in handles:
        wait_until(lambda h=h: h.status in ("succeeded", "failed"), TIMEOUT)
    assert app.purge(older_than=0, status="failed") == 3
    assert app.store.status_counts() == {"succeeded": 6}
    # Bounded batches: one batch of two trees, more left; then the rest.
    deleted, more = app.store.purge_jobs(
        finished_before=app.clock.now(), batch_size=2, max_batches=1
    )
    assert (deleted, more) == (2, True)
    assert app.purge(older_than=0, status=["succeeded", "cancelled"], batch_size=3) == 4
    assert app.store.count_jobs() == 0


@pytest.mark.parametrize(
    ("older_than", "status", "match"),
    [
        (0, "running", "finished jobs only"),
        (0, ["succeeded", "queued"], "finished jobs only"),
        (0, [], "finished jobs only"),
        ("yesterday", None, "older_than"),
        (-1, None, "older_than"),
        (float("nan"), None, "older_than"),
    ],
)
def test_purge_arguments_are_checked(sqlite_app, older_than, status, match) -> None:
    with pytest.raises(nbjobs.ConfigurationError, match=match):
        sqlite_app.purge(older_than=older_than, status=status)


def test_a_tree_goes_only_whole_and_only_once_every_job_of_it_finished(db_url: str) -> None:
    # The slow kid must stay running until the gate opens: a heartbeat that a loaded
    # machine delays past the tests' 1 s staleness would let the reaper take it back,
    # and, its cancel requested, end it early (seen in CI).
    app = make_app(db_url, stale_after_seconds=30.0)
    try:
        gate = threading.Event()
        started = threading.Event()

        @app.workflow(name="leaf")
        def leaf(cs: nbjobs.CallState, i: int) -> int:
            return cs.checkpoint("leaf-step", lambda: i)

        @app.workflow(name="kid")
        def kid(cs: nbjobs.CallState, i: int) -> int:
            if i == 0:
                raise ValueError("the first kid fails")
            if i == 1:  # keeps running after FailFast cancels it, until the gate opens
                started.set()
                cs.checkpoint("slow", gate.wait, 60)
            outcomes = cs.fan_out("leaves", [leaf.spec(i * 10 + j) for j in range(2)])
            return sum(o.value for o in outcomes)

        @app.workflow(name="top")
        def top(cs: nbjobs.CallState) -> int:
            cs.fan_out("kids", [kid.spec(i) for i in range(3)], strategy=nbjobs.FailFast())
            return 0

        app.start(concurrency=4)
        h = top.submit()
        assert started.wait(TIMEOUT)
        wait_until(lambda: h.status == "failed", TIMEOUT, what="the root to fail fast")
        kids = h.children
        assert kids[1].status == "running"  # cancel requested, still in its step
        everyone = [r.id for r in app.store.list_jobs(limit=1000)]

        # The root is finished and old enough, but a job of its tree is not: nothing goes.
        assert app.purge(older_than=0) == 0
        assert rows_of(app, everyone)["nbjobs_jobs"] == len(everyone)

        gate.set()
        wait_until(lambda: kids[1].status == "cancelled", TIMEOUT, what="the slow kid to stop")
        wait_until(
            lambda: all(
                r.status in ("succeeded", "failed", "cancelled") for r in app.store.list_jobs()
            ),
            TIMEOUT,
            what="every job of the tree to finish",
        )
        everyone = [r.id for r in app.store.list_jobs(limit=1000)]
        assert app.purge(older_than=0) == len(everyone)
        assert app.store.count_jobs() == 0
        assert rows_of(app, everyone) == dict.fromkeys(rows_of(app, []), 0)
    finally:
        app.close()


def test_finished_children_of_a_waiting_parent_are_kept(app: nbjobs.App) -> None:
    @app.workflow(name="small")
    def small(cs: nbjobs.CallState, i: int) -> int:
        return i

    @app.workflow(name="holder")
    def holder(cs: nbjobs.CallState) -> int:
        outcomes = cs.fan_out("kids", [small.spec(i) for i in range(3)])
        cs.wait_signal("release")
        return sum(o.value for o in outcomes)

    app.start(concurrency=2)
    h = holder.submit()
    wait_until(lambda: h.info()["waiting_for"] == "signal:release", TIMEOUT)
    assert [k.status for k in h.children] == ["succeeded"] * 3
    assert app.purge(older_than=0) == 0  # the root is unfinished: its tree stays whole
    assert len(h.children) == 3
    h.signal("release")
    assert h.result(timeout=TIMEOUT) == 3
    assert app.purge(older_than=0) == 4


def test_automatic_retention_purges_in_the_worker_monitor(sqlite_url) -> None:
    app = make_app(sqlite_url, retention_seconds=0.5)
    try:

        @app.workflow(name="quick")
        def quick(cs: nbjobs.CallState, x: int) -> int:
            return cs.checkpoint("s", lambda: x)

        @app.workflow(name="parked")
        def parked(cs: nbjobs.CallState) -> None:
            cs.wait_signal("never")

        app.start(concurrency=2)
        keep = parked.submit()
        done = [quick.submit(i) for i in range(20)]
        assert [h.result(timeout=TIMEOUT) for h in done] == list(range(20))
        wait_until(lambda: app.store.count_jobs() == 1, TIMEOUT, what="retention to purge")
        assert app.store.count_jobs(status="waiting") == 1
        assert keep.status == "waiting"
        assert rows_of(app, [h.id for h in done]) == dict.fromkeys(rows_of(app, []), 0)
    finally:
        app.close()


@pytest.mark.parametrize("bad", [0, -5, "1 day", True])
def test_retention_seconds_is_checked(sqlite_url, bad) -> None:
    with pytest.raises(nbjobs.ConfigurationError, match="retention_seconds"):
        nbjobs.App(sqlite_url, retention_seconds=bad)
