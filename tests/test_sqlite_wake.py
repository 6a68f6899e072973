"""SQLite wake-ups: an idle worker in another process starts a job at once, not at its poll.

The worker processes here poll every 30 s, and each test waits for far less, so only a
wake-up can start the job in time; no assertion times anything.  The mechanism (see
``nbjobs.dialects.sqlite_wake``): an idle worker's watch thread reads ``PRAGMA
data_version`` every few milliseconds and, when another connection committed, looks for
a ready job in its queues.
"""

from __future__ import annotations

import threading
import time

import pytest

import nbjobs
from nbjobs.dialects.sqlite_wake import ChangeWatch
from tests.conftest import make_app
from tests.support import wait_until, worker_process

TARGET = "tests.apps.wake_app:app"
#: Far below the workers' 30 s poll, far above any wake-up.
WAIT = 20.0


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'wake.db'}"


def _submitter(url: str) -> nbjobs.App:
    app = make_app(url, poll_seconds=30.0)

    @app.workflow(name="ping")
    def ping(cs: nbjobs.CallState, n: int = 0) -> int:
        raise AssertionError("only the worker process runs it")

    return app


def _idle_worker(submitter: nbjobs.App) -> None:
    """Wait for the worker process, then let its first claim (at start) pass: a job
    submitted afterwards is started by a wake-up or by the poll, 30 s later."""
    wait_until(lambda: submitter.workers(), timeout=60, what="the worker registered")
    time.sleep(1.0)


def test_an_idle_worker_in_another_process_is_woken_by_a_submit(url, tmp_path):
    submitter = _submitter(url)
    try:
        with worker_process(TARGET, url, tmp_path / "w.log", "-c", "2") as proc:
            _idle_worker(submitter)
            ping = submitter.get_workflow("ping")
            for _ in range(3):  # the worker is idle again after each job
                assert ping.submit().result(timeout=WAIT) == proc.pid
                time.sleep(0.3)  # quiet: the watch looks less often
            group = ping.map(range(6))  # more jobs than slots, in one transaction
            assert [h.result(timeout=WAIT) for h in group.jobs] == [proc.pid] * 6
    finally:
        submitter.close()


def test_resuming_a_queue_wakes_an_idle_worker_in_another_process(url, tmp_path):
    submitter = _submitter(url)
    try:
        with worker_process(TARGET, url, tmp_path / "w.log", "-c", "2") as proc:
            _idle_worker(submitter)
            submitter.pause_queue("default")
            h = submitter.get_workflow("ping").submit()
            time.sleep(0.5)
            assert h.status == "queued"  # paused: woken or not, nothing starts
            submitter.resume_queue("default")
            assert h.result(timeout=WAIT) == proc.pid
    finally:
        submitter.close()


@pytest.mark.no_worker
def test_the_watch_calls_back_for_ready_jobs_of_its_queues_only(url):
    watcher, writer = make_app(url), make_app(url)
    calls: list[str] = []
    called = threading.Event()
    idle = threading.Event()

    def callback(queue: str) -> None:
        calls.append(queue)
        called.set()

    try:
        ping = writer.workflow(name="ping")(lambda cs: 0)
        pong = writer.workflow(name="pong")(lambda cs: 0)
        watch = ChangeWatch(
            watcher.store.engine,
            watcher.store.dialect.ready_time(),
            callback,
            idle,
            lambda: ["default"],
            lambda: ["ping"],
            lambda: False,
        )
        watch.start()
        try:
            pong.submit()  # a workflow the watch's worker does not run
            ping.options(queue="other").submit()  # not the watch's queue
            ping.options(delay=3600).submit()  # not due
            idle.set()  # the watch starts: it looks for jobs ready so far
            time.sleep(0.3)
            writer.pause_queue("default")
            ping.submit()  # held by the pause
            time.sleep(0.3)
            assert calls == []
            writer.resume_queue("default")
            assert called.wait(WAIT)
            assert set(calls) == {"default"}
        finally:
            watch.stop()
    finally:
        writer.close()
        watcher.close()
