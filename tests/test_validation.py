"""Arguments refused where they are given: unknown App options, naive datetimes, commas in
queue names, over-long cron expressions, and any call on a closed App.  Also what the
user is shown: the absolute path of a SQLite file, and a warning when a replay diverges.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import nbjobs
from tests.conftest import make_app
from tests.support import ROOT, wait_until

TIMEOUT = 60


# -- unknown options ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("option", "match"),
    [
        ("heartbeat_second", "did you mean 'heartbeat_seconds'"),
        ("retry_backof_seconds", "did you mean 'retry_backoff_seconds'"),
        ("sqlite_synchronus", "did you mean 'sqlite_synchronous'"),
        ("pool_sise", "did you mean 'pool_size'"),
        ("colour", "unknown App option 'colour'"),
    ],
)
def test_an_unknown_or_misspelled_app_option_is_refused(sqlite_url, option, match) -> None:
    with pytest.raises(nbjobs.ConfigurationError, match=match):
        nbjobs.App(sqlite_url, **{option: 3})
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()  # refused before opening


def test_the_database_options_are_still_accepted(sqlite_url) -> None:
    app = nbjobs.App(sqlite_url, sqlite_synchronous="FULL", sqlite_busy_timeout=5, pool_size=3)
    app.close()


# -- naive datetimes ------------------------------------------------------------------
NAIVE = datetime(2030, 1, 1, 6, 0)


def test_naive_datetimes_are_refused_everywhere_a_time_is_given(app) -> None:
    @app.workflow(name="later")
    def later(cs: nbjobs.CallState) -> str:
        return "done"

    @app.workflow(name="dawn")
    def dawn(cs: nbjobs.CallState) -> str:
        cs.sleep_until("dawn", NAIVE)
        return "woke"

    with pytest.raises(nbjobs.ConfigurationError, match="timezone-aware"):
        later.options(run_at=NAIVE).submit()
    with pytest.raises(nbjobs.ConfigurationError, match="timezone-aware"):
        app.purge(older_than=NAIVE)
    with pytest.raises(nbjobs.ConfigurationError, match="timezone-aware"):
        app.history_frame(since=NAIVE)
    assert app.jobs() == []
    with pytest.raises(nbjobs.JobFailed, match="sleep_until must be a timezone-aware datetime"):
        dawn.run()
    # Aware datetimes and epoch seconds work as before.
    aware = datetime.now(timezone.utc) - timedelta(seconds=1)
    assert later.options(run_at=aware).run() == "done"
    assert later.options(run_at=aware.timestamp()).run() == "done"
    assert app.purge(older_than=aware - timedelta(days=1)) == 0


# -- commas in queue names ------------------------------------------------------------
def test_a_comma_in_a_queue_name_is_refused_wherever_a_queue_is_named(app) -> None:
    def body(cs: nbjobs.CallState) -> None:
        return None

    calls = {
        "workflow(queue=)": lambda: app.workflow(body, name="q1", queue="a,b"),
        "options(queue=)": lambda: app.workflow(body, name="q2").options(queue="a,b"),
        "start(queues=[...])": lambda: app.start(queues=["io", "a,b"]),
        "pause_queue": lambda: app.pause_queue("a,b"),
        "resume_queue": lambda: app.resume_queue("a,b"),
        "jobs(queue=)": lambda: app.jobs(queue="a,b"),
        "schedule(queue=)": lambda: app.schedule("s", "q2", cron="* * * * *", queue="a,b"),
    }
    for where, call in calls.items():
        with pytest.raises(nbjobs.ConfigurationError, match="queue must not contain a comma"):
            call()
            pytest.fail(f"{where} accepted a queue name with a comma")
    assert app.workers() == [] and app.schedules() == [] and app.jobs() == []
    # The comma-separated string form still names several queues.
    app.start(queues="io, default")
    (worker,) = app.workers()
    assert worker["queues"] == ["io", "default"]


# -- cron expressions -----------------------------------------------------------------
def test_an_over_long_cron_expression_is_refused_before_it_is_parsed(sqlite_app) -> None:
    @sqlite_app.workflow(name="tick")
    def tick(cs: nbjobs.CallState) -> None:
        return None

    # 300 KB of fields: the parser would refuse it for its field count, echoing it all.
    with pytest.raises(nbjobs.ConfigurationError, match="longer than 200 characters") as info:
        sqlite_app.schedule("long", tick, cron="1 " * 150_000)
    assert len(str(info.value)) < 300
    # Whitespace is normalized before it is measured, as before.
    sqlite_app.schedule("spaced", tick, cron="*/5" + " " * 500 + "* * * *")
    assert sqlite_app.schedules()[0]["cron"] == "*/5 * * * *"


# -- a closed App ---------------------------------------------------------------------
@pytest.mark.no_worker
def test_a_closed_app_refuses_every_call_and_closing_twice_is_harmless(db_url) -> None:
    def ours() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("nbjobs")}

    before = ours()  # other tests in this process may have left threads behind
    app = make_app(db_url)

    @app.workflow(name="echo")
    def echo(cs: nbjobs.CallState, x: int) -> int:
        return x

    job = echo.submit(1)
    app.close()
    calls = {
        "submit": lambda: echo.submit(2),
        "run": lambda: echo.run(3),
        "start": lambda: app.start(),
        "running": lambda: app.running().__enter__(),
        "jobs": lambda: app.jobs(),
        "job": lambda: app.job(job.id),
        "handle.status": lambda: job.status,
        "cancel": lambda: app.cancel(job.id),
        "signal": lambda: app.signal(job.id, "go"),
        "schedule": lambda: app.schedule("s", echo, cron="* * * * *", args=(1,)),
        "schedules": lambda: app.schedules(),
        "workers": lambda: app.workers(),
        "purge": lambda: app.purge(older_than=0),
        "pause_queue": lambda: app.pause_queue("default"),
        "dashboard": lambda: app.dashboard(),
        "register a workflow": lambda: app.workflow(lambda cs: None, name="late"),
        "a store transaction": lambda: app.store.list_jobs(limit=1),
    }
    for where, call in calls.items():
        with pytest.raises(nbjobs.ConfigurationError, match="the app is closed"):
            call()
            pytest.fail(f"{where} worked on a closed app")
    assert not ours() - before, "a closed app started a thread"
    app.close()  # twice: harmless
    app.stop()
    # The database is untouched: a new App sees the job.
    again = make_app(db_url)
    try:
        assert again.job(job.id).status == "queued"
    finally:
        again.close()


# -- the absolute path of a SQLite file -----------------------------------------------
def test_a_relative_sqlite_path_is_shown_absolute_in_repr_header_and_banner(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    app = nbjobs.App("sqlite:///rel.db")
    try:
        absolute = f"sqlite:///{tmp_path / 'rel.db'}"
        assert absolute in repr(app)
        assert app.store.safe_url == absolute
        header = app.dashboard(live=False)._header().objects[0].object
        assert absolute in header
    finally:
        app.close()
    # A worker process started in another directory says which file it opened.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    log_path = tmp_path / "worker.log"
    env = {**os.environ, "NBJOBS_URL": "sqlite:///rel.db", "PYTHONPATH": str(ROOT)}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nbjobs.cli", "worker", "tests.apps.crash_app:app"],
            cwd=elsewhere,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: "nbjobs worker on" in log_path.read_text(), TIMEOUT)
    finally:
        proc.kill()
        proc.wait(30)
    assert f"nbjobs worker on sqlite:///{elsewhere / 'rel.db'}:" in log_path.read_text()


def test_a_relative_duckdb_path_is_shown_absolute(tmp_path, monkeypatch) -> None:
    pytest.importorskip("duckdb_engine")
    monkeypatch.chdir(tmp_path)
    app = nbjobs.App("duckdb:///rel.duckdb")
    try:
        assert f"duckdb:///{tmp_path / 'rel.duckdb'}" in repr(app)
    finally:
        app.close()


# -- a replay that takes another path -------------------------------------------------
def test_a_replay_that_skips_a_stored_checkpoint_is_warned_about(app, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="nbjobs")
    charges: list[str] = []

    @app.workflow(name="pay", retries=1)
    def pay(cs: nbjobs.CallState) -> str:
        # A step name from outside state (here the attempt; in real code the time or a
        # random id): the replay does not find the first attempt's checkpoint.
        name = f"charge-{117598 + cs.attempt}"
        cs.checkpoint(name, charges.append, name)
        if cs.attempt == 1:
            raise RuntimeError("network blip")
        return name

    @app.workflow(name="steady", retries=1)
    def steady(cs: nbjobs.CallState) -> str:
        cs.checkpoint("charge", charges.append, "steady")
        if cs.attempt == 1:
            raise RuntimeError("network blip")
        return "ok"

    assert steady.run() == "ok"
    assert not [r for r in caplog.records if "not replayed" in r.getMessage()]
    assert pay.run() == "charge-117600"
    assert charges == ["steady", "charge-117599", "charge-117600"]  # charged twice
    (warning,) = [r for r in caplog.records if "not replayed" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert "checkpoint 'charge-117599' stored by attempt 1 was not replayed by attempt 2" in (
        warning.getMessage()
    )
