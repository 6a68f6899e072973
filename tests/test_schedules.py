"""Schedules: stored in the database, each tick fired exactly once, driven by a fake clock.

Most tests drive :meth:`nbjobs.runtime.scheduler.Scheduler.tick` (what every worker's monitor
thread calls) directly, so time is exact; the worker tests let real worker threads and
processes fire the ticks.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections import Counter
from datetime import datetime, timezone

import pytest

import nbjobs
from nbjobs import ConfigurationError, SerializationError
from nbjobs.clock import FakeClock
from nbjobs.runtime.scheduler import MAX_TICKS_PER_PASS, MISFIRE_GRACE_SECONDS, Scheduler
from tests import backends
from tests.conftest import BACKENDS, make_app
from tests.support import wait_until, worker_process

UTC = timezone.utc
START = datetime(2024, 1, 1, 9, 59, 30, tzinfo=UTC)


def at(*parts: int) -> float:
    return datetime(*parts, tzinfo=UTC).timestamp()


def utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def sapp(db_url: str, clock: FakeClock):
    application = make_app(db_url, clock=clock)
    yield application
    application.close()


def fired(app: nbjobs.App, name: str) -> list[float]:
    """The tick of every job the schedule made, oldest first (duplicates kept)."""
    return sorted(r.tick_at for r in app.store.schedule_jobs(name, limit=100_000))


def only(app: nbjobs.App) -> dict:
    rows = app.schedules()
    assert len(rows) == 1
    return rows[0]


def drive(app: nbjobs.App, clock: FakeClock, until: float, step: float) -> None:
    """Move the clock to ``until`` in ``step``s, with a worker's tick after each step."""
    ticker = Scheduler(app.runtime)
    while clock.now() < until:
        clock.advance(min(step, until - clock.now()))
        ticker.tick()


# -- defining and listing ------------------------------------------------------------------
def test_a_schedule_is_stored_listed_and_survives_a_restart(db_url: str, clock: FakeClock) -> None:
    app = make_app(db_url, clock=clock)

    @app.workflow(name="report", queue="reports", priority=3)
    def report(cs: nbjobs.CallState, region: str, full: bool = False) -> str:
        return region

    row = app.schedule(
        "nightly",
        report,
        cron="0 3 * * *",
        args=("eu",),
        kwargs={"full": True},
        timezone="Europe/Berlin",
    )
    assert row == {
        "name": "nightly",
        "workflow": "report",
        "cron": "0 3 * * *",
        "timezone": "Europe/Berlin",
        "next_run": datetime(2024, 1, 2, 2, 0, tzinfo=UTC),  # 03:00 CET
        "last_run": None,
        "last_status": None,
        "paused": False,
        "catch_up": "latest",
        "queue": "reports",  # the workflow's defaults
        "priority": 3,
        "args": ["eu"],
        "kwargs": {"full": True},
        "last_job_id": None,
    }
    assert row["next_run"].tzinfo is UTC
    app.close()

    # A new process (a restarted kernel) sees it without any code defining it.
    again = make_app(db_url, clock=clock)
    try:
        assert again.schedules() == [row]
        frame = again.schedules_frame()
        assert list(frame["name"]) == ["nightly"]
        assert {"next_run", "last_run", "last_status", "paused"} <= set(frame.columns)
    finally:
        again.close()


def test_each_tick_fires_once_as_a_job_recording_schedule_and_tick(
    sapp: nbjobs.App, clock: FakeClock
) -> None:
    sapp.schedule("minutely", "report", cron="* * * * *", args=(1,), queue="q", priority=7)
    other = Scheduler(sapp.runtime)  # a second worker polling the same database
    while clock.now() < at(2024, 1, 1, 10, 4, 30):
        clock.advance(7)
        Scheduler(sapp.runtime).tick()
        other.tick()
    ticks = [at(2024, 1, 1, 10, m) for m in range(5)]
    assert fired(sapp, "minutely") == ticks
    history = sapp.store.schedule_jobs("minutely")
    assert [r.tick_at for r in history] == ticks[::-1]  # latest first
    newest = sapp.store.get_job(history[0].id, full=True)
    assert (newest.workflow, newest.queue, newest.priority, newest.status) == (
        "report",
        "q",
        7,
        "queued",
    )
    assert (newest.schedule, newest.run_at) == ("minutely", ticks[-1])
    assert sapp.codec.loads(newest.input) == {"args": [1], "kwargs": {}}
    row = only(sapp)
    assert row["last_run"] == utc(ticks[-1])
    assert row["next_run"] == datetime(2024, 1, 1, 10, 5, tzinfo=UTC)
    assert row["last_job_id"] == newest.id
    assert row["last_status"] == "queued"


def test_racing_workers_fire_each_tick_exactly_once(db_url: str, clock: FakeClock) -> None:
    apps = [make_app(db_url, clock=clock) for _ in range(4)]
    try:
        apps[0].schedule("fast", "report", cron="* * * * * *")
        rounds = 12
        barrier = threading.Barrier(len(apps) + 1)
        counts: list[list[int]] = [[] for _ in apps]

        def worker(i: int) -> None:
            ticker = Scheduler(apps[i].runtime)
            for _ in range(rounds):
                barrier.wait(timeout=60)
                counts[i].append(ticker.tick())
                barrier.wait(timeout=60)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(apps))]
        for t in threads:
            t.start()
        for _ in range(rounds):
            clock.advance(1)
            barrier.wait(timeout=60)  # all tick at once...
            barrier.wait(timeout=60)  # ...and are done
        for t in threads:
            t.join(timeout=60)
        per_round = [sum(c[r] for c in counts) for r in range(rounds)]
        assert per_round == [1] * rounds
        first = at(2024, 1, 1, 9, 59, 31)
        assert fired(apps[0], "fast") == [first + i for i in range(rounds)]
    finally:
        for a in apps:
            a.close()


# -- daylight-saving time ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cron", "start", "end", "expected"),
    [
        pytest.param(
            "30 2 * * *",
            at(2024, 10, 26, 22),
            at(2024, 10, 28, 3),
            [at(2024, 10, 27, 0, 30), at(2024, 10, 28, 1, 30)],  # the 2nd 02:30 is not run
            id="fall-back-daily",
        ),
        pytest.param(
            "0 * * * *",
            at(2024, 10, 26, 22, 30),
            at(2024, 10, 27, 4, 30),
            [at(2024, 10, 26, 23) + 3600 * i for i in range(6)],  # every real hour once
            id="fall-back-hourly",
        ),
        pytest.param(
            "30 2 * * *",
            at(2024, 3, 29, 22),
            at(2024, 3, 31, 23),
            [at(2024, 3, 30, 1, 30), at(2024, 3, 31, 1)],  # 02:30 missing: runs at 03:00
            id="spring-forward-daily",
        ),
        pytest.param(
            "0 * * * *",
            at(2024, 3, 30, 22, 30),
            at(2024, 3, 31, 3, 30),
            [at(2024, 3, 30, 23) + 3600 * i for i in range(5)],
            id="spring-forward-hourly",
        ),
    ],
)
def test_berlin_dst_changes_neither_double_fire_nor_lose_a_run(
    sapp: nbjobs.App, clock: FakeClock, cron: str, start: float, end: float, expected: list
) -> None:
    clock.set(start)
    sapp.schedule("berlin", "report", cron=cron, timezone="Europe/Berlin")
    drive(sapp, clock, end, step=300)
    assert fired(sapp, "berlin") == expected
    # The same ticks when no worker ran at all and catch_up="all" fires the backlog.
    clock.set(start)
    sapp.schedule("berlin-offline", "report", cron=cron, timezone="Europe/Berlin", catch_up="all")
    clock.set(end)
    Scheduler(sapp.runtime).tick()
    assert fired(sapp, "berlin-offline") == expected


# -- catch-up policies ---------------------------------------------------------------------
def test_catch_up_latest_runs_only_the_latest_missed_tick(
    sapp: nbjobs.App, clock: FakeClock
) -> None:
    sapp.schedule("ten", "report", cron="*/10 * * * *")
    assert only(sapp)["catch_up"] == "latest"
    clock.set(at(2024, 1, 1, 11, 5))  # 10:00 .. 11:00 missed: seven ticks
    assert Scheduler(sapp.runtime).tick() == 1
    assert Scheduler(sapp.runtime).tick() == 0
    assert fired(sapp, "ten") == [at(2024, 1, 1, 11, 0)]
    assert only(sapp)["next_run"] == utc(at(2024, 1, 1, 11, 10))


def test_catch_up_all_fires_every_missed_tick_in_bounded_passes(
    sapp: nbjobs.App, clock: FakeClock
) -> None:
    sapp.schedule("second", "report", cron="* * * * * *", catch_up="all")
    first = at(2024, 1, 1, 9, 59, 31)
    missed = 2 * MAX_TICKS_PER_PASS + 500
    clock.set(first + missed - 1 + 0.5)
    ticker = Scheduler(sapp.runtime)
    assert ticker.tick() == MAX_TICKS_PER_PASS
    assert only(sapp)["next_run"] == utc(first + MAX_TICKS_PER_PASS)
    assert ticker.tick() == MAX_TICKS_PER_PASS
    assert ticker.tick() == 500
    assert ticker.tick() == 0
    assert fired(sapp, "second") == [first + i for i in range(missed)]
    assert only(sapp)["last_run"] == utc(first + missed - 1)


def test_catch_up_none_skips_missed_ticks_but_fires_on_time_ones(
    sapp: nbjobs.App, clock: FakeClock
) -> None:
    sapp.schedule("ten", "report", cron="*/10 * * * *", catch_up="none")
    clock.set(at(2024, 1, 1, 11, 5))
    assert Scheduler(sapp.runtime).tick() == 0
    assert only(sapp)["next_run"] == utc(at(2024, 1, 1, 11, 10))
    clock.set(at(2024, 1, 1, 11, 10) + 5)  # a few seconds late: still on time
    assert Scheduler(sapp.runtime).tick() == 1
    clock.set(at(2024, 1, 1, 11, 20) + MISFIRE_GRACE_SECONDS + 1)  # too late: skipped
    assert Scheduler(sapp.runtime).tick() == 0
    assert fired(sapp, "ten") == [at(2024, 1, 1, 11, 10)]
    assert only(sapp)["next_run"] == utc(at(2024, 1, 1, 11, 30))
    assert only(sapp)["last_run"] == utc(at(2024, 1, 1, 11, 10))


# -- pause, resume, redefine, remove -------------------------------------------------------
def test_pause_and_resume(sapp: nbjobs.App, clock: FakeClock) -> None:
    sapp.schedule("ten", "report", cron="*/10 * * * *", catch_up="all")
    sapp.pause_schedule("ten")
    row = only(sapp)
    assert row["paused"] is True and row["next_run"] is None
    clock.set(at(2024, 1, 1, 10, 35))
    assert Scheduler(sapp.runtime).tick() == 0
    sapp.resume_schedule("ten")
    row = only(sapp)
    assert row["paused"] is False
    assert row["next_run"] == utc(at(2024, 1, 1, 10, 40))  # ticks while paused are skipped
    assert Scheduler(sapp.runtime).tick() == 0
    sapp.resume_schedule("ten")  # resuming a running schedule changes nothing
    clock.set(at(2024, 1, 1, 10, 40, 1))
    assert Scheduler(sapp.runtime).tick() == 1
    assert fired(sapp, "ten") == [at(2024, 1, 1, 10, 40)]


def test_run_schedule_fires_once_now_and_leaves_its_ticks_alone(
    sapp: nbjobs.App, clock: FakeClock
) -> None:
    sapp.schedule("ten", "report", cron="*/10 * * * *", args=("eu",), queue="reports")
    sapp.pause_schedule("ten")
    clock.set(at(2024, 1, 1, 10, 3))
    run = sapp.run_schedule("ten")  # paused or not: the operator asked for it
    info = run.info()
    assert (info["status"], info["schedule"], info["queue"]) == ("queued", "ten", "reports")
    assert info["tick_at"] == utc(at(2024, 1, 1, 10, 3))
    assert run.input == {"args": ["eu"], "kwargs": {}}
    row = only(sapp)
    assert row["last_run"] == utc(at(2024, 1, 1, 10, 3)) and row["last_job_id"] == run.id
    assert row["last_status"] == "queued" and row["paused"] is True
    sapp.resume_schedule("ten")
    assert only(sapp)["next_run"] == utc(at(2024, 1, 1, 10, 10))
    assert Scheduler(sapp.runtime).tick() == 0
    clock.set(at(2024, 1, 1, 10, 10, 1))
    assert Scheduler(sapp.runtime).tick() == 1
    assert fired(sapp, "ten") == [at(2024, 1, 1, 10, 3), at(2024, 1, 1, 10, 10)]
    with pytest.raises(ConfigurationError, match="no schedule named 'nope'"):
        sapp.run_schedule("nope")


def test_redefinition_updates_by_name(sapp: nbjobs.App, clock: FakeClock) -> None:
    sapp.schedule("job", "report", cron="0 * * * *", args=("a",))
    clock.set(at(2024, 1, 1, 10, 5))
    assert Scheduler(sapp.runtime).tick() == 1  # the 10:00 run

    # A new cron: the next fire is recomputed from now (10:15, not 11:00).
    row = sapp.schedule("job", "report", cron="*/15 * * * *", args=("b",))
    assert row["next_run"] == utc(at(2024, 1, 1, 10, 15))
    assert row["last_run"] == utc(at(2024, 1, 1, 10, 0))
    assert row["args"] == ["b"]
    clock.set(at(2024, 1, 1, 10, 15, 1))
    assert Scheduler(sapp.runtime).tick() == 1
    newest = sapp.store.schedule_jobs("job")[0]
    assert sapp.codec.loads(sapp.store.get_job(newest.id, full=True).input)["args"] == ["b"]

    # Same cron, new arguments: the pending tick is kept; a paused schedule stays paused.
    sapp.pause_schedule("job")
    clock.set(at(2024, 1, 1, 10, 20))
    row = sapp.schedule("job", "report", cron="*/15  *  * * *", kwargs={"x": 1})
    assert row["paused"] is True and row["kwargs"] == {"x": 1}
    sapp.resume_schedule("job")
    assert only(sapp)["next_run"] == utc(at(2024, 1, 1, 10, 30))
    # Redefining a running schedule with its own cron keeps its next fire.
    sapp.schedule("job", "report", cron="*/15 * * * *", catch_up="none")
    assert only(sapp)["next_run"] == utc(at(2024, 1, 1, 10, 30))
    assert only(sapp)["catch_up"] == "none"
    assert fired(sapp, "job") == [at(2024, 1, 1, 10, 0), at(2024, 1, 1, 10, 15)]


def test_unschedule_deletes_the_schedule_but_keeps_its_jobs(
    sapp: nbjobs.App, clock: FakeClock
) -> None:
    sapp.schedule("gone", "report", cron="* * * * *")
    clock.set(at(2024, 1, 1, 10, 0, 1))
    assert Scheduler(sapp.runtime).tick() == 1
    sapp.unschedule("gone")
    assert sapp.schedules() == []
    clock.set(at(2024, 1, 1, 10, 5, 1))
    assert Scheduler(sapp.runtime).tick() == 0
    assert fired(sapp, "gone") == [at(2024, 1, 1, 10, 0)]


@pytest.mark.parametrize(
    ("arguments", "needle"),
    [
        (dict(cron="61 * * * *"), "bad cron expression '61 * * * *'"),
        (dict(cron="* * *"), "expected 5 fields"),
        (dict(cron="@reboot"), "unknown alias"),
        (dict(cron=""), "non-empty string"),
        (dict(cron="0 0 30 2 *"), "never fires"),
        (dict(cron="0 * * * *", timezone="Mars/Olympus_Mons"), "unknown timezone 'Mars/"),
        (dict(cron="0 * * * *", timezone=""), "timezone"),
        (dict(cron="0 * * * *", catch_up="sometimes"), "catch_up must be one of"),
        (dict(cron="0 * * * *", priority="high"), "priority"),
        (dict(cron="0 * * * *", queue=""), "queue"),
        (dict(cron="0 * * * *", args="abc"), "args"),
        (dict(cron="0 * * * *", name=""), "schedule name"),
        (dict(cron="0 * * * *", workflow=42), "workflow"),
    ],
)
def test_bad_definitions_raise_configuration_errors_and_store_nothing(
    sapp: nbjobs.App, arguments: dict, needle: str
) -> None:
    arguments = {"name": "bad", "workflow": "report", **arguments}
    with pytest.raises(ConfigurationError) as info:
        sapp.schedule(arguments.pop("name"), arguments.pop("workflow"), **arguments)
    assert needle in str(info.value)
    assert sapp.schedules() == []


def test_unknown_names_and_unstorable_arguments_are_refused(sapp: nbjobs.App) -> None:
    for action in (sapp.unschedule, sapp.pause_schedule, sapp.resume_schedule):
        with pytest.raises(ConfigurationError, match="no schedule named 'nope'"):
            action("nope")
    with pytest.raises(SerializationError, match="schedule 'obj'"):
        sapp.schedule("obj", "report", cron="* * * * *", args=(object(),))
    assert sapp.schedules() == []


# -- with real workers ---------------------------------------------------------------------
def test_only_a_worker_that_can_run_the_workflow_fires_its_schedule(
    db_url: str, clock: FakeClock
) -> None:
    first = make_app(db_url, clock=clock)
    second = make_app(db_url, clock=clock)
    try:

        @first.workflow
        def ping(cs: nbjobs.CallState) -> str:
            return "pong"

        first.schedule("later", "report-v2", cron="* * * * *", args=("eu",))
        first.schedule("elsewhere", ping, cron="* * * * *", queue="other")

        def named(app: nbjobs.App, name: str) -> dict:
            return {row["name"]: row for row in app.schedules()}[name]

        assert named(first, "later")["workflow"] == "report-v2"
        first.start(concurrency=2)  # serves 'default': not the queue 'other'
        clock.set(at(2024, 1, 1, 10, 0, 1))  # due: the worker's monitor passes over it
        # The worker is alive and its monitor has passed several times (a job ran), yet
        # it fired neither tick: one names a workflow it does not know, the other a
        # queue it does not serve; a tick fired here would wait orphaned.
        assert ping.submit().result(timeout=60) == "pong"
        assert first.store.schedule_jobs("later") == []
        assert first.store.schedule_jobs("elsewhere") == []
        first.stop()

        @second.workflow(name="report-v2")
        def report(cs: nbjobs.CallState, region: str) -> str:
            return f"report for {region}"

        second.start(concurrency=2)  # knows the workflow: fires the tick and runs it
        (job_id,) = wait_until(
            lambda: [r.id for r in second.store.schedule_jobs("later")], what="the tick's job"
        )
        assert second.job(job_id).result(timeout=60) == "report for eu"
        assert named(second, "later")["last_status"] == "succeeded"
        assert fired(second, "later") == [at(2024, 1, 1, 10, 0)]
    finally:
        first.close()
        second.close()


MULTI_PROCESS_BACKENDS = [b for b in BACKENDS if b in ("sqlite", "postgres")]


@pytest.fixture(params=MULTI_PROCESS_BACKENDS)
def shared_url(request, tmp_path):
    """A fresh database that several worker processes share."""
    with backends.fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.mark.slow
def test_three_worker_processes_fire_every_tick_exactly_once(shared_url: str, tmp_path) -> None:
    app = make_app(shared_url)
    name = "every-second"
    try:
        app.schedule(name, "cron-tick", cron="* * * * * *", catch_up="all")
        first = app.store.list_schedules(name)[0].next_fire_at
        last_fire = lambda: app.store.list_schedules(name)[0].last_fire_at or 0.0  # noqa: E731
        with contextlib.ExitStack() as stack:
            procs = [
                stack.enter_context(
                    worker_process(
                        "tests.apps.cron_app:app",
                        shared_url,
                        tmp_path / f"worker{i}.log",
                        "--concurrency",
                        "2",
                        "--grace",
                        "10",
                    )
                )
                for i in range(3)
            ]
            wait_until(lambda: len(app.workers()) == 3, timeout=120, what="three workers")
            all_up = app.clock.now()
            # About ten seconds of ticks with all three workers racing for each one.
            wait_until(lambda: last_fire() >= all_up + 10, timeout=120, interval=0.2)
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                assert proc.wait(timeout=60) == 0
        last = last_fire()
        rows = app.store.schedule_jobs(name, limit=100_000)
        per_tick = Counter(r.tick_at for r in rows)
        ticks = sorted(per_tick)
        assert set(per_tick.values()) == {1}, "a tick fired more than once"
        assert ticks == [first + i for i in range(len(ticks))], "a tick was lost"
        assert ticks[-1] == last
        assert len(ticks) >= 10
        statuses = Counter(r.status for r in rows)
        assert set(statuses) <= {"succeeded", "queued"}, statuses
        assert statuses["succeeded"] >= 1
        print(
            f"{len(ticks)} ticks in {time.strftime('%H:%M:%S', time.gmtime(ticks[0]))}.."
            f"{time.strftime('%H:%M:%S', time.gmtime(ticks[-1]))}; jobs {dict(statuses)}; "
            f"run by workers {dict(Counter(r.worker_id for r in rows if r.worker_id))}"
        )
    finally:
        app.close()
