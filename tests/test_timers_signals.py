"""Durable timers and signals on real worker threads (a FakeClock stands in for hours)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

import nbjobs
from nbjobs.clock import FakeClock
from tests.conftest import make_app
from tests.support import wait_until

TIMEOUT = 60


def sleeper(app: nbjobs.App, calls: list[str]):
    def before() -> str:
        calls.append("before")
        return "b"

    @app.workflow
    def nap(cs: nbjobs.CallState, seconds: float) -> str:
        first = cs.checkpoint("before", before)
        cs.sleep("cool-down", seconds)
        return first + "-awake"

    return nap


def waiting_on(h: nbjobs.JobHandle, what: str) -> bool:
    info = h.info()
    return info["status"] == "waiting" and info["waiting_for"] == what


def test_sleep_frees_the_slot_and_wakes_when_due(db_url: str) -> None:
    clock = FakeClock()
    app = make_app(db_url, clock=clock)
    try:
        calls: list[str] = []
        nap = sleeper(app, calls)

        @app.workflow
        def other(cs: nbjobs.CallState) -> str:
            return "ran"

        app.start(concurrency=1)
        h = nap.submit(3600)
        wait_until(lambda: waiting_on(h, "sleep:cool-down"), TIMEOUT, what="sleeping")
        assert h.info()["run_at"].timestamp() == pytest.approx(clock.now() + 3600, abs=1)
        # The sleeper holds no slot: with concurrency=1 another job runs meanwhile.
        assert other.submit().result(timeout=TIMEOUT) == "ran"
        clock.advance(1800)
        assert h.status == "waiting"
        clock.advance(1801)
        assert h.result(timeout=TIMEOUT) == "b-awake"
        assert calls == ["before"]  # the replay did not run the finished step again
        assert list(h.checkpoints) == ["before", "cool-down"]
        assert [a["outcome"] for a in h.attempts] == ["suspended", "succeeded"]
    finally:
        app.close()


def test_sleep_survives_a_worker_restart(db_url: str) -> None:
    clock = FakeClock()
    calls: list[str] = []
    first = make_app(db_url, clock=clock)
    nap = sleeper(first, calls)
    first.start(concurrency=1)
    h = nap.submit(600)
    wait_until(lambda: waiting_on(h, "sleep:cool-down"), TIMEOUT, what="sleeping")
    first.close()

    second = make_app(db_url, clock=clock)
    try:
        sleeper(second, calls)
        second.start(concurrency=1)
        clock.advance(601)
        assert second.job(h.id).result(timeout=TIMEOUT) == "b-awake"
        assert calls == ["before"]
    finally:
        second.close()


def test_sleep_until_the_past_and_async_sleep(app: nbjobs.App) -> None:
    @app.workflow
    async def late(cs: nbjobs.CallState) -> str:
        await cs.sleep_until("dawn", datetime(2000, 1, 1, tzinfo=timezone.utc))
        await cs.sleep("short", 0.3)
        return "done"

    app.start(concurrency=1)
    h = late.submit()
    assert h.result(timeout=TIMEOUT) == "done"
    assert list(h.checkpoints) == ["dawn", "short"]
    # sleep_until in the past never suspended; the short sleep did, once.
    assert [a["outcome"] for a in h.attempts] == ["suspended", "succeeded"]


@pytest.mark.no_worker
def test_signal_sent_before_the_wait_is_consumed_by_it(app: nbjobs.App) -> None:
    @app.workflow
    def approve(cs: nbjobs.CallState) -> dict:
        return cs.wait_signal("approved", timeout=600)

    h = approve.submit()
    h.signal("approved", {"by": "ana"})  # no worker yet: the job is still queued
    app.start(concurrency=1)
    assert h.result(timeout=TIMEOUT) == {"by": "ana"}
    assert [a["outcome"] for a in h.attempts] == ["succeeded"]  # it never had to wait


def test_two_signals_consumed_in_order_once_each(app: nbjobs.App) -> None:
    @app.workflow
    def collect(cs: nbjobs.CallState) -> list:
        first = cs.wait_signal("item")
        second = cs.wait_signal("item")
        return [first, second]

    app.start(concurrency=1)
    h = collect.submit()
    wait_until(lambda: waiting_on(h, "signal:item"), TIMEOUT, what="waiting for a signal")
    h.signal("item", "a")
    app.signal(h.id, "item", "b")
    app.signal(h.id, "item", "c")
    assert h.result(timeout=TIMEOUT) == ["a", "b"]
    rows = app.store.job_signals(h.id)
    assert [(app.codec.loads(r.payload), r.consumed_by) for r in rows] == [
        ("a", "signal:item"),
        ("b", "signal:item#2"),
        ("c", None),
    ]


def test_signal_timeout_is_durable_and_raised_in_the_workflow(db_url: str) -> None:
    clock = FakeClock()
    app = make_app(db_url, clock=clock)
    try:

        @app.workflow
        def patient(cs: nbjobs.CallState) -> str:
            try:
                cs.wait_signal("never", timeout=3600)
            except nbjobs.SignalTimeout:
                return "gave up"
            return "got it"

        @app.workflow
        async def impatient(cs: nbjobs.CallState) -> None:
            await cs.wait_signal("never", timeout=60)

        app.start(concurrency=2)
        h = patient.submit()
        a = impatient.submit()
        wait_until(lambda: waiting_on(h, "signal:never"), TIMEOUT, what="waiting")
        wait_until(lambda: waiting_on(a, "signal:never"), TIMEOUT, what="waiting")
        clock.advance(3601)
        assert h.result(timeout=TIMEOUT) == "gave up"
        with pytest.raises(nbjobs.JobFailed, match="SignalTimeout"):
            a.result(timeout=TIMEOUT)
        # A late signal is buffered, never consumed by the finished wait.
        h.signal("never", 1)
        assert [r.consumed_at for r in app.store.job_signals(h.id)] == [None]
    finally:
        app.close()


def test_signal_survives_a_worker_restart(db_url: str) -> None:
    def define(app: nbjobs.App):
        @app.workflow
        async def gate(cs: nbjobs.CallState) -> str:
            payload = await cs.wait_signal("open")
            return f"opened by {payload}"

        return gate

    first = make_app(db_url)
    gate = define(first)
    first.start(concurrency=1)
    h = gate.submit()
    wait_until(lambda: waiting_on(h, "signal:open"), TIMEOUT, what="waiting")
    first.close()

    second = make_app(db_url)
    try:
        define(second)
        second.signal(h.id, "open", "bob")  # sent while no worker runs
        assert second.job(h.id).status == "queued"
        second.start(concurrency=1)
        assert second.job(h.id).result(timeout=TIMEOUT) == "opened by bob"
    finally:
        second.close()


@pytest.mark.no_worker
def test_signal_to_an_unknown_job_and_bad_names(app: nbjobs.App) -> None:
    with pytest.raises(nbjobs.UnknownJob):
        app.signal("no-such-job", "x")

    @app.workflow
    def w(cs: nbjobs.CallState) -> None:
        cs.wait_signal("x", timeout=-1)

    h = w.submit()
    with pytest.raises(nbjobs.ConfigurationError):
        h.signal("", 1)
    app.start(concurrency=1)
    with pytest.raises(nbjobs.JobFailed, match="timeout must be"):
        h.result(timeout=TIMEOUT)
