"""Checkpoints and workflow definitions: replay-or-run, identity, redefinition, call state."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

import nbjobs
from tests.support import wait_until


def test_checkpoint_replays_stored_value_without_calling_fn(app):
    calls: list[str] = []

    def fetch(n: int) -> dict:
        calls.append("fetch")
        return {"rows": n}

    @app.workflow(name="replay", retries=2)
    def replay(cs: nbjobs.CallState, n: int) -> dict:
        data = cs.checkpoint("fetch", fetch, n)
        if cs.attempt < 3:
            raise RuntimeError(f"flaky after the step (attempt {cs.attempt})")
        return {"data": data, "attempt": cs.attempt}

    app.start(concurrency=1)
    h = replay.submit(7)
    assert h.result(timeout=30) == {"data": {"rows": 7}, "attempt": 3}
    assert calls == ["fetch"]
    assert h.checkpoints == {"fetch": {"rows": 7}}
    assert [a["outcome"] for a in h.attempts] == ["failed", "failed", "succeeded"]


def test_checkpoint_is_committed_before_it_returns(app):
    seen: dict[str, object] = {}

    @app.workflow(name="committed")
    def committed(cs: nbjobs.CallState) -> str:
        cs.checkpoint("first", lambda: "one")
        # Read through a fresh handle, from the database, before the run ends.
        seen["during"] = app.job(cs.job_id).checkpoints
        seen["status"] = app.job(cs.job_id).status
        return "done"

    app.start(concurrency=1)
    assert committed.submit().result(timeout=30) == "done"
    assert seen == {"during": {"first": "one"}, "status": "running"}


def test_checkpoint_returns_the_json_round_tripped_value_on_first_run_and_replay(app):
    runs: list[object] = []

    @app.workflow(name="roundtrip", retries=1)
    def roundtrip(cs: nbjobs.CallState) -> str:
        value = cs.checkpoint("pair", lambda: (1, ("a", 2)))
        runs.append(value)
        if cs.attempt == 1:
            raise RuntimeError("fail once")
        return "ok"

    app.start(concurrency=1)
    roundtrip.submit().result(timeout=30)
    # A tuple is stored as JSON, so the first run already sees what a replay sees.
    assert runs == [[1, ["a", 2]], [1, ["a", 2]]]


def test_duplicate_checkpoint_name_fails_the_run(app):
    @app.workflow(name="dup")
    def dup(cs: nbjobs.CallState) -> None:
        cs.checkpoint("step", lambda: 1)
        cs.checkpoint("step", lambda: 2)

    app.start(concurrency=1)
    h = dup.submit()
    with pytest.raises(nbjobs.JobFailed) as info:
        h.result(timeout=30)
    assert "DuplicateCheckpoint" in info.value.error
    assert "'step'" in info.value.error
    assert h.checkpoints == {"step": 1}
    assert issubclass(nbjobs.DuplicateCheckpoint, nbjobs.NbjobsError)


def test_replay_with_different_arguments_logs_a_warning(app, caplog):
    calls: list[int] = []

    def step(x: int) -> int:
        calls.append(x)
        return x * 10

    @app.workflow(name="drift", retries=1)
    def drift(cs: nbjobs.CallState) -> int:
        value = cs.checkpoint("scaled", step, cs.attempt)  # the argument differs on replay
        if cs.attempt == 1:
            raise RuntimeError("fail once")
        return value

    app.start(concurrency=1)
    with caplog.at_level(logging.WARNING, logger="nbjobs"):
        assert drift.submit().result(timeout=30) == 10
    assert calls == [1]
    messages = [r.getMessage() for r in caplog.records]
    assert any("'scaled'" in m and "different arguments" in m for m in messages), messages


def test_same_arguments_on_replay_log_no_warning(app, caplog):
    @app.workflow(name="steady", retries=1)
    def steady(cs: nbjobs.CallState, x: int) -> int:
        value = cs.checkpoint("scaled", lambda v: v * 10, x)
        if cs.attempt == 1:
            raise RuntimeError("fail once")
        return value

    app.start(concurrency=1)
    with caplog.at_level(logging.WARNING, logger="nbjobs"):
        assert steady.submit(4).result(timeout=30) == 40
    assert not [r for r in caplog.records if "different" in r.getMessage()]


def test_replay_under_changed_code_logs_a_warning(app, caplog):
    @app.workflow(name="edited")
    def edited(cs: nbjobs.CallState) -> str:
        cs.checkpoint("load", lambda: "loaded")
        raise RuntimeError("bug in version 1")

    app.start(concurrency=1)
    h = edited.submit()
    with pytest.raises(nbjobs.JobFailed, match="bug in version 1"):
        h.result(timeout=30)

    with caplog.at_level(logging.INFO, logger="nbjobs"):
        # The same definition edited (a re-run cell): same name, module and qualname.
        @app.workflow(name="edited")
        def edited(cs: nbjobs.CallState) -> str:
            data = cs.checkpoint("load", lambda: "loaded again")
            return f"fixed: {data}"

        assert h.retry().result(timeout=30) == "fixed: loaded"
    messages = [r.getMessage() for r in caplog.records]
    assert any("'edited' redefined" in m for m in messages), messages
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("'load'" in m and "different code" in m for m in warnings), warnings


def test_redefinition_replaces_for_new_claims_while_running_job_keeps_old(app):
    release = threading.Event()
    started = threading.Event()

    @app.workflow(name="versioned")
    def versioned(cs: nbjobs.CallState) -> str:
        started.set()
        assert release.wait(30)
        return cs.checkpoint("which", lambda: "v1")

    app.start(concurrency=2)
    old = versioned.submit()
    assert started.wait(30)

    with pytest.warns(UserWarning, match="'versioned' changed while 1 of its runs"):

        @app.workflow(name="versioned")  # the cell re-run with an edit
        def versioned(cs: nbjobs.CallState) -> str:
            return cs.checkpoint("which", lambda: "v2")

    new = versioned.submit()
    assert new.result(timeout=30) == "v2"
    assert old.status == "running"
    release.set()
    assert old.result(timeout=30) == "v1"
    assert app.workflow_names().count("versioned") == 1


def test_async_workflow_with_sync_and_async_steps(app):
    threads: dict[str, str] = {}

    async def download(url: str) -> str:
        await asyncio.sleep(0)
        threads["async-step"] = threading.current_thread().name
        return f"<html>{url}</html>"

    def parse(page: str) -> int:
        threads["sync-step"] = threading.current_thread().name
        return len(page)

    @app.workflow(name="crawl")
    async def crawl(cs: nbjobs.CallState, url: str) -> dict:
        threads["body"] = threading.current_thread().name
        page = await cs.checkpoint("download", download, url)
        size = await cs.checkpoint("parse", parse, page)
        return {"page": page, "size": size}

    app.start(concurrency=2)
    h = crawl.submit("x.org")
    assert h.result(timeout=30) == {"page": "<html>x.org</html>", "size": 18}
    assert list(h.checkpoints) == ["download", "parse"]
    # The body runs on the worker's own loop; a sync step runs off that loop.
    assert threads["body"] == threads["async-step"] != threads["sync-step"]


def test_async_workflow_replays_without_calling_step(app):
    calls: list[int] = []

    async def step() -> int:
        calls.append(1)
        return 5

    @app.workflow(name="async-replay", retries=1)
    async def async_replay(cs: nbjobs.CallState) -> int:
        value = await cs.checkpoint("five", step)
        if cs.attempt == 1:
            raise RuntimeError("fail once")
        return value + cs.attempt

    app.start(concurrency=1)
    assert async_replay.submit().result(timeout=30) == 7
    assert calls == [1]


def test_sync_workflow_refuses_an_async_step(app):
    async def coro() -> int:
        return 1

    @app.workflow(name="wrong-kind")
    def wrong_kind(cs: nbjobs.CallState) -> int:
        return cs.checkpoint("c", coro)

    app.start(concurrency=1)
    with pytest.raises(nbjobs.JobFailed, match="async def"):
        wrong_kind.submit().result(timeout=30)


def test_call_state_identity_input_and_progress(app):
    at_step = threading.Event()
    release = threading.Event()

    def long_step(cs: nbjobs.CallState) -> str:
        cs.progress(0.25)
        at_step.set()
        assert release.wait(30)
        cs.progress("almost there")
        return "done"

    @app.workflow(name="ident", retries=1)
    def ident(cs: nbjobs.CallState, a: int, *, b: str) -> dict:
        step = cs.checkpoint("long", long_step, cs)
        if cs.attempt == 1:
            raise RuntimeError("fail once")
        return {"job": cs.job_id, "attempt": cs.attempt, "input": cs.input, "step": step}

    app.start(concurrency=1)
    h = ident.submit(1, b="two")
    assert at_step.wait(30)
    assert h.progress == 0.25
    release.set()
    result = h.result(timeout=30)
    assert result == {
        "job": h.id,
        "attempt": 2,
        "input": {"args": [1], "kwargs": {"b": "two"}},
        "step": "done",
    }
    assert h.input == {"args": [1], "kwargs": {"b": "two"}}
    assert h.progress == 1.0


def test_progress_fraction_is_clamped(app):
    seen: list[float | None] = []
    release = threading.Event()

    @app.workflow(name="clamp")
    def clamp(cs: nbjobs.CallState) -> None:
        cs.progress(7)
        seen.append(app.job(cs.job_id).progress)
        cs.progress(-1)
        seen.append(app.job(cs.job_id).progress)
        release.set()

    app.start(concurrency=1)
    clamp.submit().result(timeout=30)
    assert release.is_set()
    assert seen == [1.0, 0.0]


def test_workflow_name_defaults_to_qualname_and_direct_call_is_refused(app):
    @app.workflow
    def plain(cs: nbjobs.CallState) -> int:
        return 1

    assert plain.name.endswith("plain")
    assert plain.name in app.workflow_names()
    with pytest.raises(TypeError, match="submit"):
        plain()


def test_retry_from_checkpoint_reruns_that_step_and_later_ones(app):
    calls: list[str] = []

    def step(name: str) -> str:
        calls.append(name)
        return name.upper()

    @app.workflow(name="pipeline")
    def pipeline(cs: nbjobs.CallState) -> list:
        return [cs.checkpoint(n, step, n) for n in ("extract", "transform", "load")]

    app.start(concurrency=1)
    h = pipeline.submit()
    assert h.result(timeout=30) == ["EXTRACT", "TRANSFORM", "LOAD"]
    assert h.retry(from_checkpoint="transform") is h
    wait_until(
        lambda: [a["outcome"] for a in h.attempts] == ["succeeded", "succeeded"],
        what="the re-run",
    )
    assert calls == ["extract", "transform", "load", "transform", "load"]
    assert list(h.checkpoints) == ["extract", "transform", "load"]
    with pytest.raises(nbjobs.ConfigurationError, match="no checkpoint 'nope'"):
        h.retry(from_checkpoint="nope")


def test_short_steps_are_counted_on_the_job_row_by_the_end_of_the_run(db_url):
    """Where the database allows it, a step soon after the last write of its job's row
    stores only its checkpoint; the count reaches the row before the outcome does."""
    from nbjobs.clock import FakeClock
    from tests.conftest import make_app

    clock = FakeClock()  # never moves by itself: every step after the first is "soon"
    app = make_app(db_url, clock=clock)
    gate = threading.Event()
    try:

        @app.workflow(name="short-steps")
        def short_steps(cs: nbjobs.CallState) -> int:
            for i in range(5):
                cs.checkpoint(f"s{i}", lambda i=i: i)
            gate.wait(30)
            cs.checkpoint("after", lambda: "late")  # a "long" step: it writes the row
            gate.clear()
            gate.wait(30)
            for i in range(3):
                cs.checkpoint(f"t{i}", lambda i=i: i)
            return 9

        app.start(concurrency=1)
        h = short_steps.submit()
        wait_until(lambda: len(h.checkpoints) == 5, what="five steps")
        deferred = app.store.defers_touches
        assert h.info()["steps_done"] == (1 if deferred else 5)
        clock.advance(1.0)
        gate.set()
        wait_until(lambda: len(h.checkpoints) == 6, what="the sixth step")
        wait_until(lambda: not gate.is_set(), what="the workflow to wait again")
        assert h.info()["steps_done"] == 6
        gate.set()
        assert h.result(timeout=30) == 9
        assert h.info()["steps_done"] == 9
    finally:
        app.close()


@pytest.mark.no_worker
def test_a_step_fenced_by_reading_the_lease_is_refused_after_a_takeover(app):
    """The one-row step (``count=None``) is fenced like the two-row one: a worker whose
    lease was taken over writes nothing."""

    @app.workflow(name="fenced")
    def fenced(cs: nbjobs.CallState) -> None:
        return None

    job_id = fenced.submit().id
    store = app.store
    (claimed,) = store.claim_jobs(
        worker_id="w", queue="default", workflows=["fenced"], limit=1, lease_seconds=60
    )
    step = dict(
        job_id=job_id, seq=1, value="1", args_hash=None, code_fingerprint=None, attempt=1,
        started_at=store.now(),
    )  # fmt: skip
    for count in (None, 1):
        assert not store.record_checkpoint(
            token="taken-over", name=f"z{count}", count=count, **step
        )
    assert store.load_checkpoints(job_id) == {}
    assert store.record_checkpoint(token=claimed.lease_token, name="a", count=None, **step)
    assert store.record_checkpoint(token=claimed.lease_token, name="b", count=2, **step)
    assert list(store.load_checkpoints(job_id)) == ["a", "b"]
    assert store.get_job(job_id).steps_done == (2 if store.defers_touches else 3)
