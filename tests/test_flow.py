"""Flow control on every backend, in one process: concurrency, rate and partition limits,
expiry, the hold a queued job reports, no starvation, priorities, bad input.

The fleet-wide tests (three worker processes) are in ``test_flow_fleet.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

import nbjobs
from nbjobs.schema import SCHEMA_VERSION, jobs, meta
from tests import backends
from tests.conftest import make_app
from tests.support import cli, wait_until


class Ledger:
    """Start and end times of job bodies, recorded by the jobs themselves."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[tuple[float, float, str | None]] = []
        self.running: dict[str | None, int] = {}
        self.peak: dict[str | None, int] = {}
        self.order: list[object] = []

    def run(self, group: str | None, seconds: float, tag: object = None) -> None:
        with self.lock:
            self.running[group] = self.running.get(group, 0) + 1
            self.peak[group] = max(self.peak.get(group, 0), self.running[group])
            self.order.append(tag)
            start = time.monotonic()
        time.sleep(seconds)
        with self.lock:
            self.running[group] -= 1
            self.spans.append((start, time.monotonic(), group))


def peak_overlap(spans: list[tuple[float, float, str | None]]) -> int:
    """The most spans open at one moment (an end before a start at the same time)."""
    events = sorted([(s, 1) for s, _, _ in spans] + [(e, -1) for _, e, _ in spans])
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def test_queue_concurrency_limit_holds_and_is_reached(app: nbjobs.App) -> None:
    ledger = Ledger()
    app.set_queue("api", concurrency=2)

    @app.workflow(queue="api")
    def call_api(cs: nbjobs.CallState, n: int) -> int:
        ledger.run("api", 0.05)
        return n

    app.start(concurrency=8)
    handles = [call_api.submit(n) for n in range(12)]
    assert [h.result(timeout=60) for h in handles] == list(range(12))
    assert ledger.peak["api"] == 2
    assert peak_overlap(ledger.spans) == 2
    assert app.queue_limits() == {"api": {"concurrency": 2, "rate": None}}


def test_workflow_limit_and_no_starvation(app: nbjobs.App) -> None:
    """A full limit holds back its own jobs only: the other queue's jobs and the other
    workflow of the same queue run meanwhile, and the held job says what holds it."""
    release = threading.Event()
    ledger = Ledger()

    @app.workflow(name="heavy", concurrency=1)
    def heavy(cs: nbjobs.CallState, n: int) -> int:
        ledger.run("heavy", 0.0)
        release.wait(30)
        return n

    @app.workflow(name="light")
    def light(cs: nbjobs.CallState, n: int) -> int:
        return n

    app.set_queue("slow", concurrency=1)

    @app.workflow(name="slow_job", queue="slow")
    def slow_job(cs: nbjobs.CallState) -> None:
        release.wait(30)

    app.start(concurrency=6)
    first, second = heavy.submit(1), heavy.submit(2)
    slow_first, slow_second = slow_job.submit(), slow_job.submit()
    wait_until(lambda: first.status == "running" and slow_first.status == "running")
    lights = [light.submit(n) for n in range(10)]
    assert [h.result(timeout=60) for h in lights] == list(range(10))
    assert second.status == "queued" and slow_second.status == "queued"
    assert second.status_detail == (
        "queued: held by the concurrency limit of workflow 'heavy' (1 of 1 running)"
    )
    assert slow_second.status_detail == (
        "queued: held by the concurrency limit of queue 'slow' (1 of 1 running)"
    )
    release.set()
    assert second.result(timeout=60) == 2
    slow_second.result(timeout=60)
    assert ledger.peak["heavy"] == 1


def test_priorities_order_jobs_inside_a_limit(app: nbjobs.App) -> None:
    ledger = Ledger()
    app.set_queue("one", concurrency=1)

    @app.workflow(queue="one")
    def ranked(cs: nbjobs.CallState, n: int) -> int:
        ledger.run("one", 0.0, tag=n)
        return n

    app.start(concurrency=4)
    app.pause_queue("one")
    handles = [ranked.options(priority=p).submit(p) for p in (1, 5, 3, 9, 0, 7)]
    app.resume_queue("one")
    for h in handles:
        h.result(timeout=60)
    assert ledger.order == [9, 7, 5, 3, 1, 0]


def test_partitions_never_overlap_inside_one(app: nbjobs.App) -> None:
    ledger = Ledger()

    @app.workflow(queue="parts", partition_concurrency=1)
    def sync_customer(cs: nbjobs.CallState, customer: str, n: int) -> int:
        ledger.run(customer, 0.05)
        return n

    app.start(concurrency=8)
    app.pause_queue("parts")
    handles = [
        sync_customer.options(partition=f"c{c}").submit(f"c{c}", n)
        for n in range(4)
        for c in range(5)
    ]
    app.resume_queue("parts")
    for h in handles:
        h.result(timeout=60)
    for c in range(5):
        assert ledger.peak[f"c{c}"] == 1
    assert peak_overlap(ledger.spans) >= 3


def test_a_waiting_job_holds_no_slot(app: nbjobs.App) -> None:
    app.set_queue("one", concurrency=1)

    @app.workflow(queue="one")
    def waits(cs: nbjobs.CallState) -> str:
        return cs.wait_signal("go", timeout=60)

    @app.workflow(queue="one")
    def quick(cs: nbjobs.CallState) -> str:
        return "done"

    app.start(concurrency=2)
    waiting = waits.submit()
    wait_until(lambda: waiting.status == "waiting")
    assert quick.submit().result(timeout=60) == "done"
    waiting.signal("go", "went")
    assert waiting.result(timeout=60) == "went"


def test_limits_change_while_workers_run(app: nbjobs.App) -> None:
    release = threading.Event()
    app.set_queue("q", concurrency=1)

    @app.workflow(queue="q")
    def hold(cs: nbjobs.CallState, n: int) -> int:
        release.wait(30)
        return n

    app.start(concurrency=6)
    handles = [hold.submit(n) for n in range(5)]

    def running() -> int:
        return sum(h.status == "running" for h in handles)

    wait_until(lambda: running() == 1)
    app.set_queue("q", concurrency=3)
    wait_until(lambda: running() == 3)
    app.set_queue("q", concurrency=None)  # no limit at all
    wait_until(lambda: running() == 5)
    assert app.queue_limits() == {}
    release.set()
    assert [h.result(timeout=60) for h in handles] == list(range(5))


def test_rate_limit_window(app: nbjobs.App) -> None:
    """``rate="10/s"`` drained for about 2.5 s by two workers (two Apps): no window of
    one second holds more than 10 starts, as the database recorded them."""
    app.set_queue("rated", rate="10/s")
    other = make_app(str(app.store.url))
    try:
        for each in (app, other):

            @each.workflow(name="tick", queue="rated")
            def tick(cs: nbjobs.CallState, n: int) -> int:
                return n

        app.start(concurrency=4)
        other.start(concurrency=4)
        app.pause_queue("rated")
        handles = [app.get_workflow("tick").submit(n) for n in range(25)]
        app.resume_queue("rated")
        for h in handles:
            h.result(timeout=60)
    finally:
        other.close()
    with app.store.engine.connect() as conn:
        starts = sorted(conn.execute(sa.select(jobs.c.started_at)).scalars())
    assert len(starts) == 25
    worst = max(sum(1 for t in starts if s <= t < s + 1.0 - 1e-6) for s in starts)
    assert worst <= 10
    # Three windows' worth: the third window cannot open before two seconds.
    assert starts[-1] - starts[0] >= 2.0 - 1e-6


def test_expired_jobs_end_cancelled_with_the_reason(app: nbjobs.App) -> None:
    @app.workflow(queue="late")
    def late(cs: nbjobs.CallState, n: int) -> int:
        return n

    app.start(concurrency=2)
    app.pause_queue("late")
    gone = late.options(expires=0.2).submit(1)
    gone_at = late.options(expires=datetime.now(timezone.utc) + timedelta(seconds=0.2)).submit(2)
    kept = late.options(expires=600).submit(3)
    wait_until(lambda: gone.status == "cancelled" and gone_at.status == "cancelled")
    for h in (gone, gone_at):
        assert h.error == "expired"
        assert h.status_detail == "cancelled: expired"
    app.resume_queue("late")
    assert kept.result(timeout=60) == 3
    assert kept.status_detail == "succeeded"


@pytest.mark.parametrize(
    "rate", ["20", "20/day", "0/s", "-1/s", "x/s", "1.5/s", "/s", "20/", 20, "20 per s"]
)
def test_bad_rates_are_refused(sqlite_app: nbjobs.App, rate: object) -> None:
    with pytest.raises(nbjobs.ConfigurationError, match="rate"):
        sqlite_app.set_queue("api", rate=rate)  # type: ignore[arg-type]
    with pytest.raises(nbjobs.ConfigurationError, match="rate"):
        sqlite_app.workflow(name="w", rate=rate)(lambda cs: None)  # type: ignore[arg-type]
    assert sqlite_app.queue_limits() == {}


@pytest.mark.parametrize("rate", ["20/s", "20/second", "100/minute", "100/min", "5/hour", "5/h"])
def test_good_rates_are_stored(sqlite_app: nbjobs.App, rate: str) -> None:
    sqlite_app.set_queue("api", rate=rate)
    count, unit = rate.split("/")
    shown = {"s": "s", "second": "s", "minute": "minute", "min": "minute"}.get(unit, "hour")
    assert sqlite_app.queue_limits() == {"api": {"concurrency": None, "rate": f"{count}/{shown}"}}


@pytest.mark.parametrize(
    "bad",
    [
        dict(concurrency=0),
        dict(concurrency=-2),
        dict(concurrency=1.5),
        dict(concurrency="2"),
        dict(partition_concurrency=0),
    ],
)
def test_bad_limits_are_refused(sqlite_app: nbjobs.App, bad: dict) -> None:
    name = next(iter(bad))
    with pytest.raises(nbjobs.ConfigurationError, match=name):
        sqlite_app.workflow(name="w", **bad)(lambda cs: None)
    if name == "concurrency":
        with pytest.raises(nbjobs.ConfigurationError, match=name):
            sqlite_app.set_queue("api", **bad)


@pytest.mark.parametrize(
    "bad",
    [
        dict(expires=0),
        dict(expires=-5),
        dict(expires=float("nan")),
        dict(expires="soon"),
        dict(expires=datetime(2030, 1, 1)),  # naive
        dict(partition=""),
        dict(partition=7),
    ],
)
def test_bad_expiry_and_partition_are_refused(sqlite_app: nbjobs.App, bad: dict) -> None:
    @sqlite_app.workflow(name="w")
    def w(cs: nbjobs.CallState) -> None:
        pass

    with pytest.raises(nbjobs.ConfigurationError, match=next(iter(bad))):
        w.options(**bad)


def _schema_version(conn: sa.Connection) -> str | None:
    """The schema version a database records."""
    return conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar()


@pytest.mark.no_worker
def test_a_version_4_database_gains_the_flow_columns(db_url: str) -> None:
    app = make_app(db_url)

    @app.workflow(name="later")
    def later(cs: nbjobs.CallState) -> str:
        return "done"

    kept = later.options(delay=3600).submit()
    app.close()
    # Put the database back the way version 4 left it: no flow columns, version "4".
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        # A table of its own: an Index on ``jobs`` would join nbjobs' metadata.
        old = sa.Table("nbjobs_jobs", sa.MetaData(), sa.Column("expires_at", sa.Double))
        sa.Index("ix_nbjobs_jobs_expires", old.c.expires_at).drop(conn)
        # DuckDB cannot drop a column that an index follows: there the columns stay,
        # and the migration must take them as they are.
        if conn.dialect.name != "duckdb":
            for column in ("partition_key", "expires_at"):
                conn.exec_driver_sql(f"ALTER TABLE nbjobs_jobs DROP COLUMN {column}")
        conn.execute(sa.update(meta).where(meta.c.key == "schema_version").values(value="4"))
    engine.dispose()
    app = make_app(db_url)
    try:
        with app.store.engine.connect() as conn:
            version = _schema_version(conn)
            columns = set(conn.exec_driver_sql("SELECT * FROM nbjobs_jobs WHERE 1 = 0").keys())
        assert version == str(SCHEMA_VERSION) == "7"
        assert {"partition_key", "expires_at"} <= columns
        job = app.store.get_job(kept.id, full=True)
        assert job.status == "queued" and job.partition_key is None and job.expires_at is None
    finally:
        app.close()


def test_a_version_6_database_gains_the_running_index_on_postgresql(db_url: str) -> None:
    """Version 7 indexes the running jobs on PostgreSQL, where the limits' counts read
    every dead version of a job that ran without it; the other databases keep theirs."""
    app = make_app(db_url)
    app.close()
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    postgres = engine.dialect.name == "postgresql"
    with engine.begin() as conn:
        if postgres:
            conn.exec_driver_sql("DROP INDEX ix_nbjobs_jobs_running")
        conn.execute(sa.update(meta).where(meta.c.key == "schema_version").values(value="6"))
    app = make_app(db_url)
    try:
        with app.store.engine.connect() as conn:
            version = _schema_version(conn)
            if postgres:
                # The count of a limited claim reads the new index.
                plan = conn.exec_driver_sql(
                    "EXPLAIN SELECT count(*) FROM nbjobs_jobs "
                    "WHERE status = 'running' AND queue = 'default'"
                ).scalars()
                assert "ix_nbjobs_jobs_running" in "\n".join(plan)
        assert version == str(SCHEMA_VERSION) == "7"
        if engine.dialect.name != "duckdb":  # duckdb-engine cannot reflect indexes
            names = {i["name"] for i in sa.inspect(engine).get_indexes("nbjobs_jobs")}
            assert ("ix_nbjobs_jobs_running" in names) == postgres
    finally:
        app.close()
        engine.dispose()


def test_queues_show_limits_running_and_held(app: nbjobs.App) -> None:
    """``app.queues()`` and ``/metrics`` show a queue's limits and the ready jobs they
    hold back."""
    from nbjobs.metrics import JobsCollector

    release = threading.Event()

    @app.workflow(queue="api")
    def hold(cs: nbjobs.CallState, n: int) -> int:
        release.wait(30)
        return n

    app.set_queue("api", concurrency=1, rate="100/minute")
    app.start(concurrency=4)
    handles = [hold.submit(n) for n in range(3)]
    wait_until(lambda: handles[0].status == "running")

    def api() -> dict:
        return next(q for q in app.queues() if q["queue"] == "api")

    wait_until(lambda: api()["held"] == 2)
    row = api()
    assert (row["concurrency"], row["rate"], row["running"]) == (1, "100/minute", 1)
    samples = {
        tuple(s.labels.values()): s.value
        for family in JobsCollector(app).collect()
        if family.name == "nbjobs_jobs_held_back"
        for s in family.samples
    }
    assert samples[("api", "limit")] == 2 and samples[("api", "paused")] == 0
    release.set()
    assert [h.result(timeout=60) for h in handles] == [0, 1, 2]
    assert api()["held"] == 0


def test_cli_sets_and_lists_queue_limits(sqlite_app: nbjobs.App, sqlite_url: str) -> None:
    release = threading.Event()

    @sqlite_app.workflow(queue="api")
    def hold(cs: nbjobs.CallState, n: int) -> int:
        release.wait(30)
        return n

    done = cli(
        "queues", "limit", "api", "--concurrency", "1", "--rate", "100/minute", url=sqlite_url
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "queue api: concurrency 1, 100/minute"
    sqlite_app.start(concurrency=4)
    handles = [hold.submit(n) for n in range(3)]
    wait_until(lambda: handles[0].status == "running")
    wait_until(lambda: next(q for q in sqlite_app.queues() if q["queue"] == "api")["held"] == 2)
    listing = cli("queues", "list", url=sqlite_url).stdout.splitlines()
    assert listing[0].split()[-2:] == ["limits", "held"]
    [line] = [ln for ln in listing if ln.startswith("api")]
    assert "concurrency 1, 100/minute" in line and line.split()[-1] == "2"
    bad = cli("queues", "limit", "api", "--rate", "fast", url=sqlite_url)
    assert bad.returncode != 0 and "rate" in bad.stderr
    assert cli("queues", "limit", "api", url=sqlite_url).returncode != 0  # nothing to set
    cleared = cli("queues", "limit", "api", "--clear", url=sqlite_url)
    assert cleared.stdout.strip() == "queue api: no limits"
    release.set()
    assert [h.result(timeout=60) for h in handles] == [0, 1, 2]
    assert sqlite_app.queue_limits() == {}


def test_dashboard_queues_table_sets_limits_and_pauses(
    sqlite_app: nbjobs.App, caplog: pytest.LogCaptureFixture
) -> None:
    from nbjobs.views.overview import QueueDepths

    app = sqlite_app
    app.set_queue("api", concurrency=2)
    view = QueueDepths(app=app)
    view.load()
    frame = view._table.value.set_index("queue")
    assert frame.loc["api", "limits"] == "concurrency 2" and frame.loc["api", "held"] == 0
    assert not view.set_limits()  # nothing selected
    view._table.selection = [list(view._table.value["queue"]).index("api")]
    assert (view.concurrency.value, view.rate.value) == (2, "")  # the selection's limits
    view.concurrency.value, view.rate.value = 5, "30/minute"
    with caplog.at_level("INFO", logger="nbjobs.views.overview"):
        assert view.set_limits()
        assert view.set_paused(True)
    assert app.queue_limits() == {"api": {"concurrency": 5, "rate": "30/minute"}}
    assert "queue api set to concurrency 5, 30/minute by a local user" in caplog.text
    assert "queue api paused by a local user" in caplog.text
    row = view._table.value.set_index("queue").loc["api"]
    assert (row["limits"], row["paused"]) == ("concurrency 5, 30/minute", "paused")
    view.rate.value = "lots"
    assert not view.set_limits()  # refused, nothing changed
    assert app.queue_limits()["api"]["rate"] == "30/minute"
    assert view.set_paused(False)
    view.concurrency.value, view.rate.value = None, ""
    assert view.set_limits()
    assert app.queue_limits() == {}
    # A read-only dashboard, or one served with a login nobody gave, refuses.
    for refused in (
        QueueDepths(app=app, read_only=True),
        QueueDepths(app=app, require_auth=True),
    ):
        refused.load()
        refused._table.selection = [0]
        assert not refused.set_paused(True)
    assert not any(q["paused"] for q in app.queues())


@pytest.mark.no_worker
def test_batched_claims_stop_exactly_at_a_roomy_limit(app: nbjobs.App, db_url: str) -> None:
    """Claims of a batch each under a queue's concurrency limit with room for many
    batches (the capped claim; on SQLite and PostgreSQL it then counts inside its claim
    statement) stop exactly at the limit, and a limit that another process lowers, or
    turns into a rate, holds from the next claim, though this store read the limits
    before the change (a raised limit may take ``LIMITS_TTL_SECONDS`` to be seen, so
    this one is raised with the cache cleared)."""
    wide, names = _capped_queue(app, "wide", 1000)
    app.submit_many([wide.spec(n) for n in range(1300)])

    def claim() -> list:
        return app.store.claim_jobs(
            worker_id="claimer", queue="wide", workflows=names, limit=64, lease_seconds=600
        )

    def running() -> int:
        return app.store.count_jobs(status="running")

    claimed = [job for _ in range(3) for job in claim()]
    assert len(claimed) == running() == 192
    operator = make_app(db_url)
    try:
        operator.set_queue("wide", concurrency=1000, rate="1/hour")
        claimed += claim()
        assert len(claimed) == running() == 193 and claim() == []
        operator.set_queue("wide", concurrency=200)
        claimed += claim()
        assert len(claimed) == running() == 200 and claim() == []
        operator.set_queue("wide", concurrency=1000)
        app.store._limits_cache = None  # as after LIMITS_TTL_SECONDS
        while got := claim():
            claimed += got
        assert running() == 1000 == len({job.id for job in claimed})
    finally:
        operator.close()


def test_workers_starting_together_store_a_workflow_limit_once(db_url: str) -> None:
    """Every worker stores its workflows' limits as it starts.  Workers starting at once
    found no row to lock, and all but the first to insert one failed on its key (seen:
    a worker process died at start); each now stores it or updates it in turn."""
    apps = [make_app(db_url) for _ in range(4)]
    failed: list[BaseException] = []
    try:
        for n in range(10):
            barrier = threading.Barrier(len(apps))

            def store(app: nbjobs.App, n: int = n, barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                try:
                    app.store.set_limit("workflow", f"w{n}", partition_concurrency=1)
                except BaseException as exc:  # what a racing worker met
                    failed.append(exc)

            threads = [threading.Thread(target=store, args=(app,)) for app in apps]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert failed == []
        stored = [lim for lim in apps[0].store.list_limits() if lim.kind == "workflow"]
        assert sorted(lim.name for lim in stored) == sorted(f"w{n}" for n in range(10))
        assert {lim.partition_concurrency for lim in stored} == {1}
    finally:
        for app in apps:
            app.close()


def _capped_queue(app: nbjobs.App, name: str, concurrency: int) -> tuple[Any, tuple[str, ...]]:
    """Queue ``name`` with a concurrency limit and a workflow of its own that returns its
    argument; returns the workflow and the names a claim asks for."""
    app.set_queue(name, concurrency=concurrency)

    @app.workflow(name=name, queue=name)
    def capped(cs: nbjobs.CallState, n: int) -> int:
        return n

    return capped, tuple(app.runtime.registry.claim_names)


def _roomy_queue(app: nbjobs.App) -> tuple[Any, Callable[[], list]]:
    """Queue ``vast``, whose concurrency limit (100,000) never binds here: its workflow,
    and a claim of up to 64 of its jobs."""
    vast, names = _capped_queue(app, "vast", 100_000)

    def claim() -> list:
        return app.store.claim_jobs(
            worker_id="claimer", queue="vast", workflows=names, limit=64, lease_seconds=600
        )

    return vast, claim


@pytest.mark.no_worker
def test_a_limit_far_from_binding_shares_its_lock_and_stays_exact(
    app: nbjobs.App, db_url: str
) -> None:
    """A limit with room for every claim the server can have in flight at once is
    locked shared on PostgreSQL; lowered close to the running jobs, the next claims
    lock it for themselves and stop exactly at it (on every backend)."""
    vast, claim = _roomy_queue(app)
    app.submit_many([vast.spec(n) for n in range(300)])
    claimed = [job for _ in range(2) for job in claim()]
    assert len(claimed) == app.store.count_jobs(status="running") == 128
    operator = make_app(db_url)
    try:
        operator.set_queue("vast", concurrency=138)
        for _ in range(3):
            claimed += claim()
        assert len(claimed) == app.store.count_jobs(status="running") == 138
        assert len({job.id for job in claimed}) == 138
    finally:
        operator.close()


@pytest.mark.no_worker
def test_a_roomy_limit_stays_shared_when_its_queue_runs_dry(app: nbjobs.App, db_url: str) -> None:
    """On PostgreSQL a roomy limit is locked shared from the first claim on, and stays
    so when its queue runs dry: the last claims of a drain do not take the exclusive
    lock one after another.  Lowered close to the running jobs, the next claims still
    lock it for themselves and stop exactly at it (on every backend)."""
    vast, claim = _roomy_queue(app)
    app.submit_many([vast.spec(n) for n in range(10)])
    shared = app.store.dialect.name == "postgresql"
    claimed = claim()
    assert len(claimed) == 10
    assert ("vast" in (app.store._shared or ())) == shared
    assert claim() == []  # dry
    assert ("vast" in (app.store._shared or ())) == shared
    app.submit_many([vast.spec(n) for n in range(100)])
    operator = make_app(db_url)
    try:
        operator.set_queue("vast", concurrency=15)
        for _ in range(3):
            claimed += claim()
        assert len(claimed) == app.store.count_jobs(status="running") == 15
        assert "vast" not in (app.store._shared or ())
    finally:
        operator.close()


@pytest.mark.no_worker
def test_a_finish_claims_the_freed_slot_of_a_small_limit_exactly(
    app: nbjobs.App, db_url: str
) -> None:
    """A finishing job's transaction claims the next jobs of a small limit (on SQLite
    and PostgreSQL the claim counts its own room, sent with the lock): it takes the
    slot it freed, holds jobs ahead only from room the limit has four times over, and
    stops exactly at a limit another process lowered or turned into a rate; a finish
    whose lease was lost claims nothing."""
    from nbjobs.jobs import Status

    small, names = _capped_queue(app, "small", 10)
    app.submit_many([small.spec(n) for n in range(40)])
    store = app.store
    held = store.claim_jobs(
        worker_id="w", queue="small", workflows=names, limit=3, lease_seconds=600
    )
    assert len(held) == 3

    def finish(limit: int, ahead: int = 0, token: str | None = None) -> list:
        job = held.pop(0)
        accepted, claimed = store.finish_and_claim(
            job_id=job.id,
            token=token or job.lease_token,
            attempt=job.attempt,
            status=Status.SUCCEEDED,
            result="0",
            claim=dict(
                worker_id="w", queue="small", workflows=names, lease_seconds=600,
                limit=limit, ahead=ahead,
            ),
            parent_id=None,
        )  # fmt: skip
        if token is not None:  # a lease lost: nothing written, nothing claimed
            assert (accepted, claimed) == (False, [])
            held.insert(0, job)
        assert accepted or token is not None
        held.extend(claimed)
        return claimed

    def running() -> int:
        return store.count_jobs(status="running")

    # 2 running, 8 free: 1 now and (8 - 1) // 4 = 1 of the 4 asked ahead.
    assert len(finish(5, ahead=4)) == 2 and running() == 4
    # 3 running, 7 free: the same.
    assert len(finish(5, ahead=4)) == 2 and running() == 5
    assert len(finish(1)) == 1 and running() == 5
    assert finish(1, token="lost") == [] and running() == 5
    assert len(finish(1)) == 1 and running() == 5
    operator = make_app(db_url)
    try:
        operator.set_queue("small", concurrency=4)
        assert finish(1) == [] and running() == 4  # lowered: the freed slot is not its
        assert len(finish(3)) == 1 and running() == 4
        operator.set_queue("small", concurrency=4, rate="1/hour")
        assert len(finish(2)) == 1 and running() == 4  # the rate's one start
        assert finish(1) == [] and running() == 3
    finally:
        operator.close()


@pytest.mark.no_worker
@pytest.mark.parametrize("backend", backends.selected("postgres"))
def test_a_finish_that_loses_its_connection_in_its_own_commit(
    db_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL a finish under a small limit sends its own BEGIN and COMMIT with
    its statements (``Dialect.run_committed``), so a connection lost there leaves the
    outcome unknown, as a lost COMMIT does.  The attempt row tells: committed, the
    success stands and is reported (the job claimed with it comes back when its lease
    expires); not committed, the finish runs again and claims the freed slot."""
    from nbjobs.jobs import Status

    app = make_app(db_url)
    store = app.store
    small, names = _capped_queue(app, "small", 2)
    app.submit_many([small.spec(n) for n in range(6)])
    held = store.claim_jobs(
        worker_id="w", queue="small", workflows=names, limit=2, lease_seconds=600
    )
    lost = sa.exc.OperationalError("COMMIT", None, Exception("connection lost"))
    lost.connection_invalidated = True
    real = store.dialect.run_committed

    def finish(job: Any) -> tuple[bool, list]:
        return store.finish_and_claim(
            job_id=job.id,
            token=job.lease_token,
            attempt=job.attempt,
            status=Status.SUCCEEDED,
            result="0",
            claim=dict(worker_id="w", queue="small", workflows=names, lease_seconds=600),
            parent_id=None,
        )

    def lost_after_commit(conn: Any, calls: Any) -> Any:
        assert real(conn, calls) is not None  # the pipelined commit is the path taken
        raise lost

    def lost_before_commit(conn: Any, calls: Any) -> Any:
        raise lost

    try:
        monkeypatch.setattr(store.dialect, "run_committed", lost_after_commit)
        with caplog.at_level("WARNING", logger="nbjobs.store.finish"):
            assert finish(held[0]) == (True, [])
        assert store.get_job(held[0].id).status == "succeeded"
        assert "then the connection was lost" in caplog.text
        # The job claimed in the lost commit holds the freed slot until it is reaped.
        assert store.count_jobs(status="running") == 2

        monkeypatch.setattr(store.dialect, "run_committed", lost_before_commit)
        accepted, claimed = finish(held[1])
        assert accepted and len(claimed) == 1
        assert store.get_job(held[1].id).status == "succeeded"
        assert store.count_jobs(status="running") == 2
    finally:
        app.close()


#: The gate and the ledger of ``aliased`` (a module-level workflow needs module state).
_ALIASED_GATE = threading.Event()
_ALIASED_LEDGER = Ledger()


def aliased(cs: nbjobs.CallState, n: int) -> int:
    """A workflow of an importable module: registered as ``module.aliased``, it also
    runs the jobs a script submitted under its bare qualname, ``aliased``."""
    with _ALIASED_LEDGER.lock:
        _ALIASED_LEDGER.running["started"] = _ALIASED_LEDGER.running.get("started", 0) + 1
    _ALIASED_GATE.wait(30)
    _ALIASED_LEDGER.run("aliased", 0.02)
    return n


def test_a_workflow_limit_holds_jobs_submitted_under_its_alias(db_url: str) -> None:
    """A script submits under the bare qualname (its ``__main__`` knows no module);
    the worker's workflow, registered as ``module.qualname`` with ``concurrency=2``,
    runs those jobs and the ones stored under its name, never more than 2 at once, and
    a held job of either name says which limit holds it, to the worker's App and to
    the script's.  Leases last 30 s: on a loaded machine a 1 s lease may lapse while
    the jobs wait at the gate, and the reaper would then run them again."""
    app = make_app(db_url, heartbeat_seconds=1.0, stale_after_seconds=30.0)
    _ALIASED_GATE.clear()
    _ALIASED_LEDGER.__init__()  # type: ignore[misc]
    worker_wf = app.workflow(concurrency=2)(aliased)
    name = f"{aliased.__module__}.aliased"
    assert worker_wf.name == name and app.runtime.registry.aliases == {"aliased": name}
    script = make_app(db_url)
    try:

        @script.workflow(name="aliased")
        def as_script(cs: nbjobs.CallState, n: int) -> int:
            return n

        app.start(concurrency=8)
        by_alias = [as_script.submit(n) for n in range(6)]
        by_name = [worker_wf.submit(n) for n in range(6, 9)]
        assert {h.workflow for h in by_alias} == {"aliased"}
        wait_until(lambda: _ALIASED_LEDGER.running.get("started", 0) >= 2)
        assert _ALIASED_LEDGER.running["started"] == 2
        held = "queued: held by the concurrency limit of workflow "
        held += f"{name!r} (2 of 2 running)"
        assert script.job(by_alias[-1].id).status_detail == held
        assert app.job(by_alias[-1].id).status_detail == held
        assert app.job(by_name[-1].id).status_detail == held
        for reader in (app, script):
            assert next(q for q in reader.queues() if q["queue"] == "default")["held"] == 7
        time.sleep(0.3)  # time for a claim that would break the limit to start
        assert _ALIASED_LEDGER.running["started"] == 2
        _ALIASED_GATE.set()
        results = [h.result(timeout=60) for h in by_alias + by_name]
        assert sorted(results) == list(range(9))
    finally:
        script.close()
        app.close()
    assert peak_overlap(_ALIASED_LEDGER.spans) <= 2
    assert _ALIASED_LEDGER.peak["aliased"] <= 2
    assert len(_ALIASED_LEDGER.spans) == 9


@pytest.mark.no_worker
@pytest.mark.parametrize("kind", ["queue", "workflow", "partition"])
def test_a_late_heartbeat_frees_no_slot_until_the_job_is_reaped(app: nbjobs.App, kind: str) -> None:
    """A running job whose lease lapsed (its heartbeat is late: a loaded machine, a
    stalled thread) still holds its slot: a limit frees it only when the reaper takes
    the job back.  Counting lapsed leases as free let a second job of a full limit start
    while the first still ran (two CI failures)."""

    @app.workflow(name="late", queue="late")
    def late(cs: nbjobs.CallState, n: int) -> int:
        return n

    if kind == "queue":
        app.set_queue("late", concurrency=1)
    else:  # as a worker registering the workflow stores its limits
        one = dict(concurrency=1) if kind == "workflow" else dict(partition_concurrency=1)
        app.store.set_limit("workflow", "late", **one)

    submitted = [late.options(partition="p").submit(n) for n in range(3)]
    names = app.runtime.registry.claim_names
    store = app.store

    def claim() -> list:
        return store.claim_jobs(
            worker_id="w", queue="late", workflows=names, limit=4, lease_seconds=600
        )

    first = claim()
    assert len(first) == 1
    with store.engine.begin() as conn:  # the heartbeat is late: the lease lapses
        conn.execute(
            sa.update(jobs)
            .where(jobs.c.id == first[0].id)
            .values(lease_expires_at=store.now() - 5.0)
        )
    assert claim() == []
    waiting = next(h for h in submitted if h.id != first[0].id)
    detail = app.job(waiting.id).status_detail
    assert detail is not None and detail.startswith("queued: held by the ")
    assert store.reap_expired(max_reclaims=5) == 1  # the reaper takes the job back
    assert len(claim()) == 1 and store.count_jobs(status="running") == 1
