"""Submitting, running inline, handles, listing, priorities, delays, keys, retries, timeouts."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

import nbjobs
from nbjobs.clock import FakeClock, to_datetime
from tests.conftest import make_app
from tests.support import wait_until


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake_app(db_url: str, clock: FakeClock) -> Iterator[nbjobs.App]:
    """An app whose time moves only with ``clock.advance``."""
    application = make_app(db_url, clock=clock)
    yield application
    application.close()


@pytest.mark.no_worker
def test_submit_returns_a_handle_and_the_result(app):
    @app.workflow(name="double")
    def double(cs: nbjobs.CallState, x: int) -> int:
        return cs.checkpoint("double", lambda: 2 * x)

    h = double.submit(21)
    assert isinstance(h, nbjobs.JobHandle)
    assert h.status == "queued"
    assert h.workflow == "double"
    app.start(concurrency=2)
    assert h.result(timeout=30) == 42
    assert h.status == "succeeded"
    assert h.checkpoints == {"double": 42}
    [attempt] = h.attempts
    assert attempt["outcome"] == "succeeded"
    assert attempt["finished_at"] >= attempt["started_at"]


@pytest.mark.no_worker
def test_options_submit_and_chained_options(app):
    @app.workflow(name="opt", queue="io", priority=1)
    def opt(cs: nbjobs.CallState) -> str:
        return "ok"

    h = opt.options(priority=9).options(key="k-1").submit()
    info = h.info()
    assert (info["priority"], info["queue"], info["key"]) == (9, "io", "k-1")
    h2 = opt.submit()
    assert (h2.info()["priority"], h2.info()["queue"]) == (1, "io")
    app.start(concurrency=1, queues=["io"])
    assert h.result(timeout=30) == "ok"


def test_submit_async_and_await_handle(app):
    @app.workflow(name="square")
    def square(cs: nbjobs.CallState, x: int) -> int:
        return x * x

    app.start(concurrency=2)

    async def main() -> tuple:
        h = await square.submit_async(5)
        first = await h
        second = await h.result_async(timeout=30)
        return h, first, second

    h, first, second = asyncio.run(main())
    assert (first, second) == (25, 25)
    assert h.status == "succeeded"


@pytest.mark.no_worker
def test_result_timeout_when_nothing_runs_the_job(app):
    @app.workflow(name="idle")
    def idle(cs: nbjobs.CallState) -> None:
        return None

    h = idle.submit()
    with pytest.raises(nbjobs.ResultTimeout):
        h.result(timeout=0.2)
    with pytest.raises(TimeoutError):
        asyncio.run(h.result_async(timeout=0.2))
    assert h.status == "queued"


def test_run_is_durable_and_executes_in_the_calling_thread(app):
    where: list[int] = []

    @app.workflow(name="inline")
    def inline(cs: nbjobs.CallState, x: int) -> int:
        where.append(threading.get_ident())
        return cs.checkpoint("inc", lambda: x + 1)

    assert inline.run(1) == 2
    assert where == [threading.get_ident()]
    [h] = app.jobs(workflow="inline")
    assert h.status == "succeeded"
    assert h.checkpoints == {"inc": 2}
    assert len(h.attempts) == 1


def test_run_retries_in_the_calling_thread(app):
    where: list[int] = []

    @app.workflow(name="flaky-inline")
    def flaky_inline(cs: nbjobs.CallState) -> int:
        where.append(threading.get_ident())
        if cs.attempt < 3:
            raise ValueError(f"flake {cs.attempt}")
        return cs.attempt

    assert flaky_inline.options(retries=2).run() == 3
    assert where == [threading.get_ident()] * 3
    [h] = app.jobs(workflow="flaky-inline")
    assert [a["outcome"] for a in h.attempts] == ["failed", "failed", "succeeded"]
    assert "ValueError: flake 1" in h.attempts[0]["error"]


def test_run_raises_job_failed_with_remote_traceback(app):
    @app.workflow(name="broken")
    def broken(cs: nbjobs.CallState) -> None:
        raise KeyError("missing-column")

    with pytest.raises(nbjobs.JobFailed) as info:
        broken.run()
    assert "KeyError" in info.value.error
    assert "missing-column" in info.value.traceback
    assert app.jobs(workflow="broken")[0].status == "failed"


def test_closing_the_app_stops_the_heartbeat_of_inline_runs(app):
    # The heartbeat must not write while close() disposes of the pool: its connection,
    # given back afterwards, would stay open until the garbage collector found it.
    started, release = threading.Event(), threading.Event()

    @app.workflow(name="held")
    def held(cs: nbjobs.CallState) -> int:
        started.set()
        release.wait(30)
        return 1

    outcome: list[BaseException | int] = []

    def run() -> None:
        try:
            outcome.append(held.run())
        except BaseException as exc:
            outcome.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        assert started.wait(30)
        beat = app._engine.inline._monitor
        assert beat is not None and beat.is_alive()
        app.close()
        assert not beat.is_alive()
    finally:
        release.set()
        runner.join(30)
    # The run outlived its app: its outcome cannot be stored, and it says so.
    (error,) = outcome
    assert isinstance(error, nbjobs.ConfigurationError) and "closed" in str(error)


def test_run_of_an_async_workflow(app):
    @app.workflow(name="arun")
    async def arun(cs: nbjobs.CallState, x: int) -> int:
        await asyncio.sleep(0)
        return await cs.checkpoint("x", lambda: x * 3)

    assert arun.run(4) == 12


@pytest.mark.no_worker
def test_handle_lookup_and_listing(app):
    @app.workflow(name="listed")
    def listed(cs: nbjobs.CallState, ok: bool) -> bool:
        if not ok:
            raise RuntimeError("no")
        return ok

    @app.workflow(name="other")
    def other(cs: nbjobs.CallState) -> None:
        return None

    good = [listed.submit(True) for _ in range(3)]
    bad = listed.submit(False)
    waiting = other.submit()
    assert app.job(good[0].id) == good[0]
    with pytest.raises(nbjobs.UnknownJob):
        app.job("no-such-job")

    with app.running(concurrency=2):
        for h in good:
            h.result(timeout=30)
        with pytest.raises(nbjobs.JobFailed):
            bad.result(timeout=30)
        waiting.result(timeout=30)

    assert {h.id for h in app.jobs(status="succeeded", workflow="listed")} == {h.id for h in good}
    assert [h.id for h in app.jobs(status="failed")] == [bad.id]
    assert len(app.jobs(limit=2)) == 2
    assert app.jobs(limit=1)[0] == waiting  # newest first
    frame = app.jobs_frame(workflow="listed")
    assert len(frame) == 4
    assert sorted(frame["status"]) == ["failed", "succeeded", "succeeded", "succeeded"]
    assert {"id", "workflow", "status", "attempts", "error", "created_at"} <= set(frame.columns)
    assert str(frame["created_at"].dt.tz) == "UTC"


def test_retry_keeps_finished_checkpoints(app):
    calls: list[str] = []
    fixed = threading.Event()

    def step(name: str) -> str:
        calls.append(name)
        return name

    @app.workflow(name="fixable")
    def fixable(cs: nbjobs.CallState) -> str:
        cs.checkpoint("one", step, "one")
        if not fixed.is_set():
            raise RuntimeError("not yet")
        return cs.checkpoint("two", step, "two")

    app.start(concurrency=1)
    h = fixable.submit()
    with pytest.raises(nbjobs.JobFailed, match="not yet"):
        h.result(timeout=30)
    with pytest.raises(nbjobs.ConfigurationError):
        fixable.options(delay=3600).submit().retry()  # a queued job cannot be retried
    fixed.set()
    assert h.retry().result(timeout=30) == "two"
    assert calls.count("one") == 1  # the retry replayed "one" from its checkpoint
    assert [a["outcome"] for a in h.attempts] == ["failed", "succeeded"]
    assert h.checkpoints == {"one": "one", "two": "two"}
    with pytest.raises(nbjobs.ConfigurationError, match="succeeded"):
        h.retry()


@pytest.mark.no_worker
def test_priorities_higher_first_fifo_within_a_priority(app):
    order: list[str] = []

    @app.workflow(name="prio")
    def prio(cs: nbjobs.CallState, label: str) -> None:
        order.append(label)

    plan = [("low-1", 0), ("high-1", 10), ("mid-1", 5), ("high-2", 10), ("low-2", 0)]
    plan += [("mid-2", 5), ("neg-1", -3), ("high-3", 10)]
    handles = [prio.options(priority=p).submit(label) for label, p in plan]
    app.start(concurrency=1)
    for h in handles:
        h.result(timeout=30)
    assert order == ["high-1", "high-2", "high-3", "mid-1", "mid-2", "low-1", "low-2", "neg-1"]


@pytest.mark.no_worker
def test_delay_holds_a_job_until_its_time(fake_app, clock):
    @fake_app.workflow(name="later")
    def later(cs: nbjobs.CallState, label: str) -> str:
        return label

    delayed = later.options(delay=60).submit("delayed")
    fake_app.start(concurrency=1)
    # A job submitted after it but due now runs first; the delayed one stays queued.
    assert later.submit("now").result(timeout=30) == "now"
    assert delayed.status == "queued"
    clock.advance(59)
    assert later.submit("still-now").result(timeout=30) == "still-now"
    assert delayed.status == "queued"
    clock.advance(1.5)
    assert delayed.result(timeout=30) == "delayed"


@pytest.mark.no_worker
def test_run_at_holds_a_job_until_that_datetime(fake_app, clock):
    @fake_app.workflow(name="at")
    def at(cs: nbjobs.CallState) -> str:
        return "ran"

    when = to_datetime(clock.now() + 3600)
    h = at.options(run_at=when).submit()
    assert h.info()["run_at"] == when
    fake_app.start(concurrency=1)
    with pytest.raises(nbjobs.ResultTimeout):
        h.result(timeout=0.5)
    clock.set(when)
    assert h.result(timeout=30) == "ran"


@pytest.mark.no_worker
def test_idempotency_key_returns_the_first_job(app):
    calls: list[int] = []

    @app.workflow(name="once")
    def once(cs: nbjobs.CallState, n: int) -> int:
        calls.append(n)
        return n

    first = once.options(key="invoice-17").submit(1)
    second = once.options(key="invoice-17").submit(2)
    assert second.id == first.id
    assert second.input == {"args": [1], "kwargs": {}}
    app.start(concurrency=2)
    assert first.result(timeout=30) == 1
    third = once.options(key="invoice-17").submit(3)
    assert third.id == first.id
    assert once.options(key="invoice-17").run(4) == 1  # run returns the first job's result
    assert calls == [1]
    assert len(app.jobs(workflow="once")) == 1


@pytest.mark.no_worker
def test_per_job_retries_with_exponential_backoff(db_url, clock):
    application = make_app(
        db_url, clock=clock, retry_backoff_seconds=10, retry_backoff_max_seconds=1000
    )
    try:

        @application.workflow(name="backoff")
        def backoff(cs: nbjobs.CallState) -> int:
            if cs.attempt < 3:
                raise ConnectionError(f"try {cs.attempt}")
            return cs.attempt

        h = backoff.options(retries=2).submit()
        application.start(concurrency=1)
        for failures, (low, high) in enumerate([(5, 10), (10, 20)], start=1):
            # The failure first, then the status: the time stands still, so it stays queued.
            wait_until(
                lambda n=failures: [a["outcome"] for a in h.attempts] == ["failed"] * n,
                what=f"failure {failures}",
            )
            assert h.status == "queued"
            wait_s = h.info()["run_at"].timestamp() - clock.now()
            assert low - 1e-3 <= wait_s <= high + 1e-3, (failures, wait_s)
            assert h.error == f"ConnectionError: try {failures}"
            clock.advance(high + 0.01)
        assert h.result(timeout=30) == 3
        outcomes = [(a["outcome"], a["error"]) for a in h.attempts]
        assert outcomes == [
            ("failed", "ConnectionError: try 1"),
            ("failed", "ConnectionError: try 2"),
            ("succeeded", None),
        ]
    finally:
        application.close()


def test_retries_exhausted_fail_the_job(app):
    @app.workflow(name="hopeless", retries=2)
    def hopeless(cs: nbjobs.CallState) -> None:
        raise RuntimeError(f"attempt {cs.attempt}")

    app.start(concurrency=1)
    h = hopeless.submit()
    with pytest.raises(nbjobs.JobFailed, match="attempt 3"):
        h.result(timeout=30)
    assert [a["outcome"] for a in h.attempts] == ["failed"] * 3
    no_retry = hopeless.options(retries=0).submit()
    with pytest.raises(nbjobs.JobFailed, match="attempt 1"):
        no_retry.result(timeout=30)


def test_per_job_timeout_then_retry_succeeds(app):
    release = threading.Event()

    @app.workflow(name="slow-first")
    def slow_first(cs: nbjobs.CallState) -> int:
        if cs.attempt == 1:
            cs.checkpoint("hang", lambda: release.wait(30))
        return cs.attempt

    app.start(concurrency=2)
    h = slow_first.options(timeout=0.5, retries=1).submit()
    try:
        assert h.result(timeout=30) == 2
    finally:
        release.set()
    assert [a["outcome"] for a in h.attempts] == ["timeout", "succeeded"]
    assert "JobTimeout" in h.attempts[0]["error"]


def test_run_keeps_its_lease_while_a_reaper_is_active(app):
    """A ``wf.run`` longer than the stale threshold heartbeats like a worker's job."""

    def outlive_the_lease(job_id: str) -> str:
        first = app.store.get_job(job_id).lease_expires_at
        wait_until(
            lambda: (
                app.clock.now() > first + 0.5
                and app.store.get_job(job_id).lease_expires_at > app.clock.now()
            ),
            what="the lease to be extended past its first expiry",
        )
        return "held"

    @app.workflow(name="long-inline")
    def long_inline(cs: nbjobs.CallState) -> str:
        return cs.checkpoint("long", outlive_the_lease, cs.job_id)

    app.start(concurrency=1)  # its reaper would take a job whose lease lapsed
    assert long_inline.run() == "held"
    [h] = app.jobs(workflow="long-inline")
    assert [a["outcome"] for a in h.attempts] == ["succeeded"]


def _ticking(app, name: str, started: threading.Event, ids: list[str]):
    """A workflow of many short steps, so a stop request lands at a step boundary."""

    @app.workflow(name=name)
    def ticking(cs: nbjobs.CallState) -> str:
        ids.append(cs.job_id)
        started.set()
        for i in range(600):
            cs.checkpoint(f"tick-{i}", time.sleep, 0.05)
        return "finished"

    return ticking


def test_run_hears_a_cancel_written_elsewhere_through_the_shared_heartbeat(app):
    """A cancel another process writes (not this App's own, which also tells the run
    directly) reaches a ``wf.run`` through the same lease heartbeat a worker uses."""
    started, ids = threading.Event(), []
    ticking = _ticking(app, "cancel-inline", started, ids)

    def cancel_from_elsewhere() -> None:
        started.wait(30)
        app.store.cancel_job(ids[0])  # the request row only, as another process writes it

    threading.Thread(target=cancel_from_elsewhere, daemon=True).start()
    with pytest.raises(nbjobs.JobCancelled):
        ticking.run()
    [h] = app.jobs(workflow="cancel-inline")
    assert h.status == "cancelled" and 0 < len(h.checkpoints) < 600


def test_run_past_its_timeout_is_stopped_by_the_shared_heartbeat(app):
    started, ids = threading.Event(), []
    ticking = _ticking(app, "timeout-inline", started, ids)
    with pytest.raises(nbjobs.JobTimeout):
        ticking.options(timeout=0.5).run()
    [h] = app.jobs(workflow="timeout-inline")
    assert [a["outcome"] for a in h.attempts] == ["timeout"]
    assert 0 < len(h.checkpoints) < 600


@pytest.mark.no_worker
def test_run_with_the_key_of_a_queued_job_runs_that_job_here(app):
    where: list[int] = []

    @app.workflow(name="keyed-run")
    def keyed_run(cs: nbjobs.CallState, n: int) -> int:
        where.append(threading.get_ident())
        return n

    queued = keyed_run.options(key="only-once").submit(1)
    # No worker runs: run() must take the queued job itself rather than wait forever.
    assert keyed_run.options(key="only-once").run(2) == 1
    assert where == [threading.get_ident()]
    assert queued.status == "succeeded"


def test_cancel_a_run_from_another_thread(app):
    at_step = threading.Event()
    release = threading.Event()
    after: list[str] = []

    @app.workflow(name="inline-cancel")
    def inline_cancel(cs: nbjobs.CallState) -> None:
        cs.checkpoint("wait", lambda: (at_step.set(), release.wait(30))[1])
        cs.checkpoint("next", after.append, "next")

    outcome: list[BaseException] = []

    def call() -> None:
        try:
            inline_cancel.run()
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    assert at_step.wait(30)
    [h] = app.jobs(workflow="inline-cancel")
    assert h.cancel() == "running"
    release.set()
    caller.join(30)
    assert [type(e) for e in outcome] == [nbjobs.JobCancelled]
    assert after == []
    assert h.status == "cancelled"


def test_run_timeout_stops_a_step_that_reports_progress(app):
    ticks: list[int] = []

    def long_step(cs: nbjobs.CallState) -> None:
        for i in range(3000):  # about 30 s unless the timeout stops it
            ticks.append(i)
            cs.progress(i / 3000)
            threading.Event().wait(0.01)

    @app.workflow(name="inline-timeout")
    def inline_timeout(cs: nbjobs.CallState) -> None:
        cs.checkpoint("long", long_step, cs)

    with pytest.raises(nbjobs.JobFailed, match="timed out"):
        inline_timeout.options(timeout=0.3).run()
    assert len(ticks) < 3000
    [h] = app.jobs(workflow="inline-timeout")
    assert [a["outcome"] for a in h.attempts] == ["timeout"]
