"""MariaDB wake-ups: an idle worker in another process starts a job at once, not at its poll.

The worker processes here poll every 30 s, and each test waits for far less, so only a
wake-up can start the job in time; no assertion times anything.  The mechanism (see
``nbjobs.dialects.mysql._Sentinel``): an idle worker's wake-up thread holds its queue's
named lock and sleeps in ``SELECT SLEEP``; a commit that makes a job ready ends that
connection with ``KILL CONNECTION``; the other idle workers wait for the lock and take
over.
"""

from __future__ import annotations

import logging
import os
import signal
import uuid
import warnings
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, make_url, text

import nbjobs
from nbjobs.dialects.mysql import wake_lock_name
from tests import backends
from tests.conftest import NO_WORKER, make_app
from tests.support import wait_until, worker_process

TARGET = "tests.apps.wake_app:app"
#: Far below the workers' 30 s poll, far above any wake-up.
WAIT = 20.0

pytestmark = pytest.mark.parametrize("backend", backends.selected("mysql"))


def _submitter(url: str, **options) -> nbjobs.App:
    app = make_app(url, poll_seconds=30.0, **options)

    @app.workflow(name="ping")
    def ping(cs: nbjobs.CallState, n: int = 0) -> int:
        raise AssertionError("only the worker process runs it")

    return app


def _sentinel(url: str, queue: str = "default") -> int | None:
    """The connection id holding ``queue``'s wake lock (an idle worker), or None."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            name = wake_lock_name(make_url(url).database, queue)
            return conn.execute(text("SELECT IS_USED_LOCK(:n)"), {"n": name}).scalar()
    finally:
        engine.dispose()


@pytest.fixture
def url(backend: str) -> Iterator[str]:
    with backends.server_database(backend) as database:
        yield database


def test_an_idle_worker_in_another_process_is_woken_by_a_submit(url, tmp_path):
    submitter = _submitter(url)
    try:
        with worker_process(TARGET, url, tmp_path / "w.log", "-c", "2") as proc:
            wait_until(lambda: _sentinel(url), timeout=60, what="the worker idle")
            for _ in range(3):  # the worker is idle again after each job
                h = submitter.get_workflow("ping").submit()
                assert h.result(timeout=WAIT) == proc.pid
            # A group of more jobs than slots, in one transaction: the sentinel claims
            # two, and stands ready again (and finds the rest) as its slots free up.
            group = submitter.get_workflow("ping").map(range(6))
            assert [h.result(timeout=WAIT) for h in group.jobs] == [proc.pid] * 6
    finally:
        submitter.close()


def test_resuming_a_queue_wakes_an_idle_worker_in_another_process(url, tmp_path):
    submitter = _submitter(url)
    try:
        submitter.pause_queue("default")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", NO_WORKER, UserWarning)
            h = submitter.get_workflow("ping").submit()
        with worker_process(TARGET, url, tmp_path / "w.log") as proc:
            wait_until(lambda: _sentinel(url), timeout=60, what="the worker idle")
            assert h.status == "queued"
            submitter.resume_queue("default")
            assert h.result(timeout=WAIT) == proc.pid
    finally:
        submitter.close()


def test_a_job_submitted_while_every_worker_is_busy_starts_when_a_slot_frees(url, tmp_path):
    """No worker is idle, so the submit wakes nobody (a busy worker lets its wake lock
    go); the worker claims it when its slot frees, not at its poll."""
    submitter = _submitter(url)

    @submitter.workflow(name="nap")
    def nap(cs: nbjobs.CallState, seconds: float) -> int:
        raise AssertionError("only the worker process runs it")

    try:
        with worker_process(TARGET, url, tmp_path / "w.log", "-c", "1") as proc:
            wait_until(lambda: _sentinel(url), timeout=60, what="the worker idle")
            busy = nap.submit(2.0)
            wait_until(lambda: busy.status == "running", what="the worker busy")
            wait_until(lambda: _sentinel(url) is None, what="the wake lock let go")
            h = submitter.get_workflow("ping").submit()
            assert busy.result(timeout=WAIT) == proc.pid
            assert h.result(timeout=WAIT) == proc.pid
    finally:
        submitter.close()


def test_a_job_made_ready_without_a_wake_up_starts_at_the_poll(url, tmp_path):
    """A job made ready by a path that rings no one (here an UPDATE outside nbjobs moves
    a job's time forward) loses nothing: the worker finds it at its poll (1 s here)."""
    submitter = _submitter(url)
    try:
        env = {"NBJOBS_WAKE_POLL": "1"}
        with worker_process(TARGET, url, tmp_path / "w.log", env=env) as proc:
            wait_until(lambda: _sentinel(url), timeout=60, what="the worker idle")
            h = submitter.get_workflow("ping").options(delay=3600).submit()
            engine = create_engine(url)
            try:
                with engine.begin() as conn:
                    conn.execute(
                        text("UPDATE nbjobs_jobs SET run_at = run_at - 3600 WHERE id = :id"),
                        {"id": h.id},
                    )
            finally:
                engine.dispose()
            assert h.result(timeout=WAIT) == proc.pid
    finally:
        submitter.close()


def test_a_stranger_holding_the_wake_lock_is_no_sentinel_for_long(url, tmp_path):
    """Whoever holds a queue's wake lock is ended by the next submit: the idle worker
    waiting for the lock takes it over and claims, at once, not at its poll."""
    submitter = _submitter(url)
    stranger = create_engine(url).connect()
    try:
        name = wake_lock_name(make_url(url).database, "default")
        assert stranger.execute(text("SELECT GET_LOCK(:n, 0)"), {"n": name}).scalar() == 1
        with worker_process(TARGET, url, tmp_path / "w.log") as proc:
            wait_until(lambda: submitter.workers(), timeout=60, what="the worker up")
            h = submitter.get_workflow("ping").submit()
            assert h.result(timeout=WAIT) == proc.pid
            # The worker's wake-up connection, once it is idle again after the job.
            wait_until(lambda: _sentinel(url) is not None, what="the worker the sentinel")
    finally:
        stranger.invalidate()
        submitter.close()


def test_a_worker_killed_while_idle_breaks_no_submit_and_another_takes_over(url, tmp_path):
    submitter = _submitter(url)
    try:
        with worker_process(TARGET, url, tmp_path / "a.log") as first:
            wait_until(lambda: _sentinel(url), timeout=60, what="the first worker idle")
            with worker_process(TARGET, url, tmp_path / "b.log") as second:
                wait_until(lambda: len(submitter.workers()) == 2, timeout=60, what="both up")
                held = _sentinel(url)
                first.send_signal(signal.SIGKILL)
                first.wait(timeout=30)
                # The submit wakes a dead connection or none; it must not fail, and the
                # second worker (waiting for the lock) takes over as the sentinel.
                h = submitter.get_workflow("ping").submit()
                assert h.result(timeout=WAIT) == second.pid
                # Idle again once its job is recorded, it holds the lock (a moment later).
                wait_until(lambda: _sentinel(url) not in (None, held), what="a new sentinel")
    finally:
        submitter.close()


def test_a_submitter_that_may_not_kill_degrades_to_polling_with_one_log_line(
    url, tmp_path, caplog: pytest.LogCaptureFixture
):
    """A submitter connected as another user, without the privilege to end the workers'
    queries, cannot wake them: it says so once and submits on; the jobs start at the
    workers' poll."""
    user = f"nbjobs_{uuid.uuid4().hex[:8]}"
    parsed = make_url(url)
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'"))
        conn.execute(text(f"GRANT ALL PRIVILEGES ON `{parsed.database}`.* TO '{user}'@'%'"))
    other = parsed.set(username=user, password="pw").render_as_string(hide_password=False)
    submitter = _submitter(other)
    try:
        env = {"NBJOBS_WAKE_POLL": "1"}
        with worker_process(TARGET, url, tmp_path / "w.log", env=env) as proc:
            wait_until(lambda: _sentinel(url), timeout=60, what="the worker idle")
            caplog.set_level(logging.WARNING, logger="nbjobs")
            handles = [submitter.get_workflow("ping").submit() for _ in range(3)]
            assert [h.result(timeout=WAIT) for h in handles] == [proc.pid] * 3
        refused = [r for r in caplog.records if "cannot wake idle workers" in r.getMessage()]
        assert len(refused) == 1
        assert "pw" not in refused[0].getMessage()
    finally:
        submitter.close()
        with admin.begin() as conn:
            conn.execute(text(f"DROP USER '{user}'@'%'"))
        admin.dispose()


def test_a_stopped_worker_lets_its_wake_lock_go(url):
    """``stop()`` interrupts the wake-up thread's sleep and closes its connection."""
    worker = make_app(url, poll_seconds=30.0)
    worker.workflow(name="ping")(lambda cs: os.getpid())
    worker.start(concurrency=1)
    try:
        wait_until(lambda: _sentinel(url), timeout=30, what="the worker idle")
    finally:
        worker.close()
    assert _sentinel(url) is None
