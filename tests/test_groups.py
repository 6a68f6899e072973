"""Sweeps: ``wf.map`` and ``app.submit_many`` make a ``JobGroup`` in one transaction.

Every backend: the basics, all-or-nothing inserts (a bad spec, a database error after
the jobs went in), idempotent keys, counts, progress, the results frame, wait, cancel,
retry, ``app.group``/``app.groups`` and purge.  SQLite and PostgreSQL: ten thousand
items drained by real worker processes, one of them SIGKILLed mid-group.
"""

from __future__ import annotations

import collections
import gc
import itertools
import signal
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

import nbjobs
from nbjobs.group import COST_FACTOR
from nbjobs.options import Spec
from nbjobs.schema import group_jobs, groups, jobs, workers
from nbjobs.store import groups as store_groups
from tests import backends
from tests.conftest import make_app
from tests.support import killed_worker_jobs, wait_until, worker_process

#: Items that fail until ``FLAKY`` is emptied (a retry then succeeds).
FLAKY: set[int] = set()


def _register(app: nbjobs.App) -> tuple:
    @app.workflow(name="square")
    def square(cs: nbjobs.CallState, x: int) -> int:
        if x in FLAKY:
            raise ValueError(f"flaky {x}")
        return cs.checkpoint("square", lambda: x * x)

    @app.workflow(name="greet")
    def greet(cs: nbjobs.CallState, name: str, punct: str = "!") -> str:
        return f"hello {name}{punct}"

    return square, greet


def _count(app: nbjobs.App, table: sa.Table) -> int:
    with app.store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def test_map_runs_one_job_per_item_and_reports_as_one(app):
    square, _ = _register(app)
    app.start(concurrency=2)
    group = square.map([3, 1, 2])
    assert isinstance(group, nbjobs.JobGroup)
    assert group.size == len(group) == 3 and group.label == "square"
    assert group.wait(timeout=60) is group
    assert group.progress == 1.0
    assert group.status_counts() == {
        "queued": 0,
        "running": 0,
        "waiting": 0,
        "succeeded": 3,
        "failed": 0,
        "cancelled": 0,
    }
    frame = group.results_frame()
    assert list(frame.columns) == [
        "position",
        "job_id",
        "workflow",
        "input",
        "status",
        "result",
        "error",
        "duration_s",
    ]
    assert frame["input"].tolist() == [3, 1, 2]  # submission order, the items themselves
    assert frame["result"].tolist() == [9, 1, 4]
    assert frame["status"].tolist() == ["succeeded"] * 3
    assert (frame["duration_s"] >= 0).all()
    assert [h.result() for h in group.jobs] == [9, 1, 4]
    assert "3 succeeded" in repr(group)
    assert "3/3" in group._repr_html_()


def test_submit_many_mixes_workflows_arguments_and_options(app):
    square, greet = _register(app)
    app.start()
    group = app.submit_many(
        [
            square.spec(4),
            greet.options(priority=5).spec("ann", punct="?"),
            greet.spec("bob"),
        ],
        label="mixed",
    )
    group.wait(timeout=60)
    frame = group.results_frame()
    assert frame["workflow"].tolist() == ["square", "greet", "greet"]
    assert frame["result"].tolist() == [16, "hello ann?", "hello bob!"]
    # One argument: the item; more: the whole input.
    assert frame["input"].tolist()[1] == {"args": ["ann"], "kwargs": {"punct": "?"}}
    assert frame["input"].tolist()[2] == "bob"
    assert app.job(frame["job_id"][1]).info()["priority"] == 5
    assert group.label == "mixed"
    # map's options, over those of wf.options(...), apply to every job.
    tuned = square.options(priority=2).map([5, 6], retries=3)
    for handle in tuned.jobs:
        info = handle.info()
        assert (info["priority"], info["max_retries"]) == (2, 3)
    assert tuned.wait(timeout=60).results_frame()["result"].tolist() == [25, 36]


#: Job columns a submit and ``submit_many`` of the same spec may store differently.
_OWN = {"id", "root_id", "key", "created_at", "updated_at", "run_at", "expires_at"}


def _stored(app: nbjobs.App, ids: list[str]) -> list[dict]:
    with app.store.engine.connect() as conn:
        rows = {r.id: r._asdict() for r in conn.execute(sa.select(jobs).where(jobs.c.id.in_(ids)))}
    return [rows[i] for i in ids]


@pytest.mark.no_worker
def test_submit_many_stores_each_job_as_submit_does(app):
    """The bulk insert (COPY on PostgreSQL; multi-row INSERTs of the columns some row
    sets on SQLite, whatever the count: two full statements and a rest here) stores the
    row one ``submit`` stores, column for column, for every mix of options, and a
    column NULL in every row is NULL."""
    square, greet = _register(app)

    def spec(i: int, tag: str) -> Spec:
        kind = i % 5
        if kind == 0:
            return square.spec(i)
        if kind == 1:
            return greet.options(priority=3, timeout=12.5, retries=2).spec(
                f'n{i} \u00e9"\\{{', punct="?"
            )
        if kind == 2:
            return square.options(key=f"{tag}{i}", steps=4, partition="p").spec(i)
        if kind == 3:
            return greet.options(delay=60, expires=3600, queue="q2").spec("x", punct=i)
        return square.spec({"nested": [i, None, 1.5, float("nan")]}, big=2**70)

    def specs(n: int, tag: str) -> list[Spec]:
        return [spec(i, tag) for i in range(n)]

    def submitted_alone(spec) -> str:
        wf = {"square": square, "greet": greet}[spec.workflow]
        options = {k: v for k, v in vars(spec.options).items() if v is not None}
        return wf.options(**options).submit(*spec.args, **spec.kwargs).id

    for n, tag in ((253, "mixed-"), (205, "plain-")):
        group_specs = specs(n, tag) if tag == "mixed-" else [square.spec(i) for i in range(n)]
        many = _stored(app, [h.id for h in app.submit_many(group_specs).jobs])
        alone_specs = specs(n, "alone-") if tag == "mixed-" else group_specs
        alone = _stored(app, [submitted_alone(spec) for spec in alone_specs])
        for index, (bulk, one) in enumerate(zip(many, alone, strict=True)):
            assert {k: v for k, v in bulk.items() if k not in _OWN} == {
                k: v for k, v in one.items() if k not in _OWN
            }, index
            assert bulk["root_id"] == bulk["id"]
            assert (bulk["key"] is None) == (one["key"] is None), index
            for column in ("run_at", "expires_at"):
                if one[column] is None:
                    assert bulk[column] is None, (index, column)
                else:
                    mine, theirs = (r[column] - r["created_at"] for r in (bulk, one))
                    assert abs(mine - theirs) < 5, (index, column)
    with pytest.raises(nbjobs.SerializationError, match=r"^spec 1: .*reserves"):
        app.submit_many([square.spec(1), square.spec(2, __nbjobs_artifact__=1)])


@pytest.mark.no_worker
def test_sqlite_bulk_insert_errors_are_sqlalchemy_errors_and_roll_back(sqlite_app):
    """SQLite's multi-row INSERT (``copy_rows``) refuses what the one-row ``INSERT`` did:
    a duplicate id, a row without a NOT NULL column, as SQLAlchemy's IntegrityError
    showing one row's statement; the transaction keeps nothing of it."""
    square, _ = _register(sqlite_app)
    group = square.map(range(150))
    store = sqlite_app.store
    with store.engine.connect() as conn:
        good = [r._asdict() for r in conn.execute(sa.select(jobs).order_by(jobs.c.id))]
    fresh = [{**row, "id": f"{row['id'][:-4]}beef"} for row in good]
    for rows in (fresh[:120] + good[119:121], [{**row, "priority": None} for row in fresh]):
        with store.engine.begin() as conn:
            with pytest.raises(sa.exc.IntegrityError) as caught:
                store.dialect.copy_rows(conn, jobs, rows)
            conn.rollback()
        assert "VALUES (?" in str(caught.value) and "), (" not in str(caught.value)
    assert _count(sqlite_app, jobs) == 150 and group.status_counts()["queued"] == 150


@pytest.mark.no_worker
def test_submit_many_leaves_the_garbage_collector_as_it_found_it(sqlite_app):
    """The collector is paused while a group's rows are built and inserted, then back
    on, after a bad spec too; an app that turned it off finds it still off."""
    square, _ = _register(sqlite_app)
    assert gc.isenabled()
    square.map(range(3))
    assert gc.isenabled()
    with pytest.raises(nbjobs.SerializationError):
        square.map([1, object()])
    assert gc.isenabled()
    gc.disable()
    try:
        square.map(range(3))
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_bad_spec_inserts_nothing_and_names_its_index(app):
    square, greet = _register(app)
    specs = [square.spec(1), greet.spec("x"), square.spec(object()), square.spec(2)]
    with pytest.raises(nbjobs.SerializationError, match=r"^spec 2: .*nothing was submitted"):
        app.submit_many(specs)
    with pytest.raises(nbjobs.ConfigurationError, match=r"^spec 1: not a spec"):
        app.submit_many([square.spec(1), ("square", 2)])  # type: ignore[list-item]
    with pytest.raises(nbjobs.SerializationError, match=r"^item 1: "):
        square.map([1, {2: "int key"}, 3])
    with pytest.raises(nbjobs.ConfigurationError, match=r"^item 2: .*key"):
        square.map([1, 2, 3], key=lambda x: "k" if x < 3 else "")
    with pytest.raises(nbjobs.ConfigurationError, match="function of the item"):
        square.map([1, 2], key="same")  # type: ignore[arg-type]
    assert _count(app, jobs) == 0 and _count(app, groups) == 0 and _count(app, group_jobs) == 0
    assert app.groups() == []


def test_a_database_error_after_the_jobs_went_in_leaves_nothing(app, monkeypatch):
    square, _ = _register(app)
    app.start()
    first = square.map([1, 2]).wait(timeout=60)
    # The next group takes the first one's id: its row fails on the primary key, after
    # every job of it was inserted (by COPY on PostgreSQL), in the same transaction.
    monkeypatch.setattr(store_groups, "new_id", lambda: first.id)
    with pytest.raises(sa.exc.IntegrityError):
        square.map(range(1500))
    assert _count(app, jobs) == 2 and _count(app, group_jobs) == 2
    assert [g.id for g in app.groups()] == [first.id]
    monkeypatch.undo()
    assert square.map(range(3)).wait(timeout=60).progress == 1.0


def test_keys_return_the_jobs_that_hold_them(app):
    square, _ = _register(app)
    app.start()
    alone = square.options(key="sq-1").submit(1)
    specs = [
        square.options(key="sq-1").spec(1),
        square.options(key="sq-2").spec(2),
        square.options(key="sq-2").spec(2),  # the same key twice: one job
        square.spec(3),
    ]
    group = app.submit_many(specs)
    ids = [h.id for h in group.jobs]
    assert ids[0] == alone.id and ids[1] == ids[2] and len(set(ids)) == 3
    assert _count(app, jobs) == 3
    group.wait(timeout=60)
    # All keyed, all taken: the same jobs again, so the same group.
    keyed = [square.options(key=f"k{x}").spec(x) for x in range(5)]
    once = app.submit_many(keyed)
    again = app.submit_many(keyed)
    assert again == once and len(app.groups()) == 2
    by_map = square.map(range(5), key=lambda x: f"k{x}")
    assert by_map == once
    # Some taken, some new: a new group holding both.
    more = square.map(range(3, 7), key=lambda x: f"k{x}")
    assert more != once
    assert [h.id for h in more.jobs][:2] == [h.id for h in once.jobs][3:]
    assert _count(app, jobs) == 3 + 5 + 2
    assert more.wait(timeout=60).results_frame()["result"].tolist() == [9, 16, 25, 36]


@pytest.mark.no_worker
def test_cancel_then_retry_and_wait_with_a_timeout(app):
    square, _ = _register(app)
    group = square.map(range(4))
    assert group.status_counts()["queued"] == 4 and group.progress == 0.0
    with pytest.raises(nbjobs.ResultTimeout, match=r"0 of 4 jobs finished .*4 queued"):
        group.wait(timeout=0.05)
    assert group.cancel() == 4
    assert group.status_counts()["cancelled"] == 4 and group.progress == 1.0
    assert group.cancel() == 0
    assert group.retry_failed() == 0  # none failed
    assert group.retry_failed(include_cancelled=True) == 4
    assert group.status_counts()["queued"] == 4
    app.start()
    assert group.wait(timeout=60).results_frame()["result"].tolist() == [0, 1, 4, 9]


def test_retry_failed_runs_only_the_failed_jobs_again(app):
    square, _ = _register(app)
    FLAKY.update({1, 3})
    try:
        app.start(concurrency=2)
        group = square.map(range(5)).wait(timeout=60)
        counts = group.status_counts()
        assert counts["succeeded"] == 3 and counts["failed"] == 2
        frame = group.results_frame()
        assert frame["error"].tolist()[1] == "ValueError: flaky 1"
        assert frame["result"].tolist()[1] is None
        first_ids = set(frame[frame["status"] == "succeeded"]["job_id"])
        FLAKY.clear()
        assert group.retry_failed() == 2
        assert group.wait(timeout=60).status_counts()["succeeded"] == 5
        assert group.results_frame()["result"].tolist() == [0, 1, 4, 9, 16]
        for job_id in first_ids:  # the succeeded ones did not run again
            assert len(app.job(job_id).attempts) == 1
    finally:
        FLAKY.clear()


def test_app_group_and_groups(app):
    square, greet = _register(app)
    app.start()
    a = square.map([1], label="first")
    b = app.submit_many(greet.spec(name) for name in ["z"])  # any iterable of specs
    assert app.group(a.id) == a and app.group(a.id).label == "first"
    assert app.group(b.id).label is None and app.group(b.id).size == 1
    assert [g.id for g in app.groups()] == [b.id, a.id]  # newest first
    assert [g.id for g in app.groups(limit=1)] == [b.id]
    with pytest.raises(nbjobs.UnknownJob, match="no job group"):
        app.group("nope")
    with pytest.raises(nbjobs.ConfigurationError):
        square.map([1], label="")
    empty = square.map([])
    assert empty.size == 0 and empty.progress == 1.0 and empty.wait(timeout=1) is empty


def test_purge_drops_the_memberships_and_the_groups_left_empty(app):
    square, _ = _register(app)
    app.start()
    done = square.map(range(3)).wait(timeout=60)
    h = square.submit(10)
    h.result(timeout=60)
    shared = app.submit_many([square.spec(20), square.options(key="kept").spec(21)])
    shared.wait(timeout=60)
    FLAKY.add(31)
    try:
        partial = square.map([30, 31, 32]).wait(timeout=60)
    finally:
        FLAKY.clear()
    # Only the succeeded jobs go: the partly purged group stays, counting what is left.
    assert app.purge(0, status="succeeded") == 3 + 1 + 2 + 2
    assert app.groups() == [partial] and _count(app, group_jobs) == 1
    assert partial.size == 3 and partial.status_counts()["failed"] == 1
    assert sum(partial.status_counts().values()) == 1 and partial.progress == 1.0
    assert partial.results_frame()["position"].tolist() == [1]
    with pytest.raises(nbjobs.UnknownJob):
        app.group(done.id)
    assert app.purge(0) == 1
    assert app.groups() == [] and _count(app, group_jobs) == 0 and _count(app, groups) == 0


def test_watch_shows_the_whole_group(sqlite_app):
    square, _ = _register(sqlite_app)
    sqlite_app.start(concurrency=2)
    group = square.map(range(6), label="watched")
    view = group.watch(poll_seconds=0.05)
    try:
        assert view.wait(timeout=60)
        view.refresh()
        assert view.bar.value == view.bar.max == 6
        assert view.bar.bar_style == "success"
        assert "6/6 finished" in view.counts.value and "6 succeeded" in view.counts.value
        assert "watched" in view.header.value
    finally:
        view.close()


@pytest.mark.no_worker
def test_dashboard_lists_groups_filters_jobs_and_acts_in_bulk(sqlite_app):
    from nbjobs.views import Dashboard

    app = sqlite_app
    square, greet = _register(app)
    other = greet.submit("not in a group")
    group = square.map(range(5), label="grid <b>")
    dash = Dashboard(app=app, live=False)
    view = dash.groups
    row = view.table.value.iloc[0]
    assert row["id"] == group.id and row["jobs"] == 5
    assert row["label"] == "grid &lt;b&gt;"  # escaped: a label is the user's text
    assert "0/5" in row["progress"] and "5 queued" in row["counts"]
    # "Show jobs": the jobs table lists the group's jobs only, until the filter is cleared.
    view.table.selection = [0]
    view.show_button.clicks += 1
    assert dash.jobs.group_id == group.id and dash.jobs.total == 5
    assert other.id not in set(dash.jobs.table.value["id"])
    assert dash.jobs._group_w.visible and group.id in dash.jobs._group_w.label
    dash.jobs._group_w.clicks += 1
    assert dash.jobs.group_id == "" and dash.jobs.total == 6
    # Bulk cancel, then retry (the cancelled jobs, through the group's API).
    view.cancel_button.clicks += 1
    assert group.status_counts()["cancelled"] == 5
    assert "5 cancelled" in view.table.value.iloc[0]["counts"]
    FLAKY.add(2)
    try:
        assert group.retry_failed(include_cancelled=True) == 5
        app.start()
        group.wait(timeout=60)
        view.load()
        assert "1 failed" in view.table.value.iloc[0]["counts"]
        FLAKY.clear()
        view.table.selection = [0]
        view.retry_button.clicks += 1
        group.wait(timeout=60)
        assert group.status_counts()["succeeded"] == 5
    finally:
        FLAKY.clear()
    read_only = Dashboard(app=app, live=False, read_only=True).groups
    assert not read_only.cancel_button.visible and read_only.show_button.visible


# -- real worker processes, one SIGKILLed mid-group --------------------------------------
ITEMS = 10_000
WORKER = "tests.apps.group_app:app"


@pytest.mark.slow
@pytest.mark.no_worker(strict=False)
@pytest.mark.parametrize("backend", backends.selected("sqlite", "postgres"))
def test_a_map_of_ten_thousand_survives_a_killed_worker(backend, tmp_path: Path, monkeypatch):
    ledger = tmp_path / "ledger.txt"
    monkeypatch.setenv("NBJOBS_LEDGER", str(ledger))
    with backends.fresh_database(backend, tmp_path) as url:
        app = make_app(url)
        engine = app.store.engine

        @app.workflow(name="sweep-item")
        def sweep_item(cs: nbjobs.CallState, x: int) -> int:  # runs in the workers
            raise AssertionError("the test process runs no jobs")

        def finished() -> int:
            return sum(app.group(group.id).status_counts()[s] for s in ("succeeded", "failed"))

        def held_by(worker_id: str) -> sa.Select:
            return sa.select(jobs.c.id).where(
                jobs.c.worker_id == worker_id, jobs.c.status == "running"
            )

        try:
            group = sweep_item.map(range(ITEMS))
            assert _count(app, jobs) == ITEMS
            logs = [tmp_path / f"worker{i}.log" for i in range(2)]
            with (
                worker_process(WORKER, url, logs[0], "-c", "4") as victim,
                worker_process(WORKER, url, logs[1], "-c", "4"),
            ):
                wait_until(lambda: finished() >= ITEMS // 5, timeout=300, what="a fifth done")
                with engine.connect() as conn:
                    victim_id = conn.execute(
                        sa.select(workers.c.id).where(workers.c.pid == victim.pid)
                    ).scalar_one()

                def holding() -> int:
                    with engine.connect() as conn:
                        return len(conn.execute(held_by(victim_id)).all())

                wait_until(holding, timeout=60, interval=0.001, what="the victim holds jobs")
                victim.send_signal(signal.SIGKILL)
                victim.wait(timeout=30)
                with engine.connect() as conn:
                    orphans = set(conn.execute(held_by(victim_id)).scalars())
                assert finished() < ITEMS, "the group finished before the kill; nothing tested"
                group.wait(timeout=600)
            counts = group.status_counts()
            assert counts["succeeded"] == ITEMS, counts
            frame = group.results_frame()
            assert frame["result"].tolist() == [2 * x for x in range(ITEMS)]
            orphans = killed_worker_jobs(engine, victim_id, orphans, set(frame["job_id"]))
            # The side effect ran for every job; twice only where a killed attempt may
            # have run it without recording its checkpoint.
            ran = collections.Counter(line.split()[1] for line in ledger.read_text().splitlines())
            assert set(ran) == set(frame["job_id"])
            twice = {job_id for job_id, n in ran.items() if n > 1}
            assert twice <= orphans, twice - orphans
        finally:
            app.close()


@pytest.mark.no_worker
def test_wait_counts_a_big_group_within_its_budget_while_jobs_finish_here(sqlite_app):
    """``group.wait()`` beside a worker in the same process: each commit of finished
    jobs here wakes the waiter, but it counts the group again only once the pause the
    last count bought (``COST_FACTOR`` times what it took) is over.  Counting at every
    wake-up doubled the database's work per job on PostgreSQL."""
    app = sqlite_app

    @app.workflow(name="noop")
    def noop(cs: nbjobs.CallState, n: int) -> int:
        return n

    app.pause_queue("default")
    group = noop.map(range(2000))
    spans: list[tuple[float, float]] = []
    real = group.status_counts

    def timed() -> dict:
        began = time.monotonic()
        try:
            return real()
        finally:
            spans.append((began, time.monotonic()))

    group.status_counts = timed  # type: ignore[method-assign]
    app.start(concurrency=4)
    app.resume_queue("default")
    assert group.wait(timeout=120) is group
    assert real()["succeeded"] == 2000
    assert len(spans) > 1
    early = [
        (round(began - last_began, 4), round(COST_FACTOR * (last_end - last_began), 4))
        for (last_began, last_end), (began, _) in itertools.pairwise(spans)
        if began - last_began < COST_FACTOR * (last_end - last_began)
    ]
    assert early == [], f"counted again before the budget: (gap, budget) {early}"
