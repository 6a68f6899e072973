"""Bad input: each gets a clear error where it is given, and nothing is lost."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from datetime import datetime, timezone

import pytest

import nbjobs
from tests.conftest import make_app


@dataclasses.dataclass(frozen=True)
class Point:
    """A custom class: JSON cannot store it, pickle can (it is importable)."""

    x: int
    y: int


# -- values --------------------------------------------------------------------------
def test_unserialisable_argument_is_refused_at_submit_and_nothing_is_queued(app):
    @app.workflow(name="takes-anything")
    def takes_anything(cs: nbjobs.CallState, value: object) -> str:
        return "ran"

    with pytest.raises(nbjobs.SerializationError) as info:
        takes_anything.submit({1, 2})
    message = str(info.value)
    assert "builtins.set" in message
    assert "serializer='pickle'" in message
    assert "takes-anything" in message
    with pytest.raises(nbjobs.SerializationError, match=r"threading\.Event|Event"):
        takes_anything.submit(value=threading.Event())
    with pytest.raises(nbjobs.SerializationError, match="Point"):
        takes_anything.run(Point(1, 2))
    assert app.jobs() == []
    app.start(concurrency=1)
    assert takes_anything.submit([1, 2]).result(timeout=30) == "ran"


def test_unserialisable_checkpoint_value_fails_the_job_without_retries(app):
    @app.workflow(name="bad-step", retries=3)
    def bad_step(cs: nbjobs.CallState) -> None:
        cs.checkpoint("ok", lambda: [1, 2])
        cs.checkpoint("bad", lambda: Point(1, 2))

    app.start(concurrency=1)
    h = bad_step.submit()
    with pytest.raises(nbjobs.JobFailed) as info:
        h.result(timeout=30)
    assert "SerializationError" in info.value.error
    assert "'bad'" in info.value.error and "Point" in info.value.error
    assert "serializer='pickle'" in info.value.error
    assert h.checkpoints == {"ok": [1, 2]}  # earlier work is kept
    assert len(h.attempts) == 1  # retrying cannot make the value storable


def test_unserialisable_result_fails_the_job(app):
    @app.workflow(name="bad-result", retries=2)
    def bad_result(cs: nbjobs.CallState) -> object:
        cs.checkpoint("done", lambda: "x")
        return {1, 2, 3}

    app.start(concurrency=1)
    h = bad_result.submit()
    with pytest.raises(nbjobs.JobFailed, match="result cannot be stored") as info:
        h.result(timeout=30)
    assert "set" in info.value.error
    assert h.checkpoints == {"done": "x"}
    assert [a["outcome"] for a in h.attempts] == ["failed"]


def test_pickle_serializer_opt_in(db_url):
    application = make_app(db_url, serializer="pickle")
    try:

        @application.workflow(name="pickled")
        def pickled(cs: nbjobs.CallState, tags: set, origin: Point) -> dict:
            moved = cs.checkpoint("move", lambda: Point(origin.x + 1, origin.y + 1))
            return {"tags": tags | {"done"}, "moved": moved, "when": datetime(2024, 1, 1)}

        application.start(concurrency=1)
        h = pickled.submit({"a"}, Point(0, 0))
        assert h.result(timeout=30) == {
            "tags": {"a", "done"},
            "moved": Point(1, 1),
            "when": datetime(2024, 1, 1),
        }
        assert h.checkpoints == {"move": Point(1, 1)}
        assert h.input == {"args": [{"a"}, Point(0, 0)], "kwargs": {}}
        assert pickled.run({"b"}, Point(5, 5))["moved"] == Point(6, 6)
        job_id = h.id
    finally:
        application.close()

    # An app that did not opt in refuses to load pickled text (it could run code).
    plain = make_app(db_url)
    try:
        h = plain.job(job_id)
        assert h.status == "succeeded"
        with pytest.raises(nbjobs.SerializationError, match="serializer='pickle'"):
            h.result(timeout=5)
        with pytest.raises(nbjobs.SerializationError, match="pickle"):
            _ = h.checkpoints
    finally:
        plain.close()


def test_unknown_serializer(tmp_path):
    with pytest.raises(nbjobs.ConfigurationError, match="unknown serializer 'yaml'"):
        nbjobs.App(f"sqlite:///{tmp_path / 'x.db'}", serializer="yaml")


# -- URLs ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("not a url at all", "cannot parse database URL"),
        ("", "non-empty"),
        ("oracle://scott:tiger@db/orcl", "unsupported database 'oracle'"),
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
        ("sqlite:///file:x?mode=memory&uri=true", "in-memory"),
    ],
)
def test_bad_urls(url, match):
    with pytest.raises(nbjobs.ConfigurationError, match=match):
        nbjobs.App(url)


def test_unknown_scheme_does_not_leak_the_password():
    with pytest.raises(nbjobs.ConfigurationError) as info:
        nbjobs.App("oracle://scott:hunter2@db/orcl")
    assert "hunter2" not in str(info.value)


def test_unwritable_sqlite_path(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(nbjobs.ConfigurationError, match="cannot open the nbjobs database"):
        nbjobs.App(f"sqlite:///{blocker / 'jobs.db'}")


def test_url_from_environment(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("NBJOBS_URL", url)
    application = nbjobs.App()
    try:
        assert application.url == url
        assert (tmp_path / "env.db").exists()
    finally:
        application.close()


# -- options -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"delay": -1}, "delay must be >= 0"),
        ({"delay": "soon"}, "delay must be a number"),
        ({"priority": "high"}, "priority must be an integer"),
        ({"priority": 1.5}, "priority must be an integer"),
        ({"priority": True}, "priority must be an integer"),
        ({"priority": 2**31}, "priority must be < 2"),
        ({"retries": 10**12}, "retries must be < 2"),
        ({"retries": -1}, "retries must be >= 0"),
        ({"timeout": 0}, "timeout must be >= "),
        ({"timeout": float("nan")}, "timeout"),
        ({"key": ""}, "key must be a non-empty string"),
        ({"key": "   "}, "key must be a non-empty string"),
        ({"key": 7}, "key must be a non-empty string"),
        ({"queue": ""}, "queue must be a non-empty string"),
        ({"queue": "q" * 101}, "queue is longer than 100 characters"),
        ({"key": "k" * 256}, "key is longer than 255 characters"),
        ({"run_at": "tomorrow"}, "run_at must be a datetime"),
        ({"delay": 5, "run_at": datetime(2030, 1, 1, tzinfo=timezone.utc)}, "not both"),
        ({"priorty": 5}, "unknown option"),
    ],
)
def test_bad_submit_options(app, options, match):
    @app.workflow(name="opts")
    def opts(cs: nbjobs.CallState) -> None:
        return None

    with pytest.raises(nbjobs.ConfigurationError, match=match):
        opts.options(**options).submit()
    assert app.jobs() == []


def test_bad_workflow_options_and_names(app):
    def fn(cs: nbjobs.CallState) -> None:
        return None

    with pytest.raises(nbjobs.ConfigurationError, match="retries"):
        app.workflow(fn, retries=-2)
    with pytest.raises(nbjobs.ConfigurationError, match="priority"):
        app.workflow(priority="urgent")
    with pytest.raises(nbjobs.ConfigurationError, match="workflow name"):
        app.workflow(fn, name="")
    with pytest.raises(nbjobs.ConfigurationError, match="workflow name"):
        app.workflow(fn, name="  ")
    with pytest.raises(nbjobs.ConfigurationError, match="needs a function"):
        app.workflow(name="x")(42)
    with pytest.raises(TypeError):
        app.workflow(fn, colour="red")
    assert app.workflow_names() == []


@pytest.mark.parametrize("name", ["", "   ", None, 7, "x" * 201])
def test_bad_checkpoint_names_fail_the_run(app, name):
    @app.workflow(name="names")
    def names(cs: nbjobs.CallState) -> None:
        cs.checkpoint(name, lambda: 1)

    app.start(concurrency=1)
    with pytest.raises(nbjobs.JobFailed, match="checkpoint name"):
        names.submit().result(timeout=30)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"heartbeat_seconds": 5, "stale_after_seconds": 10}, "at least three heartbeats"),
        ({"heartbeat_seconds": 0}, "heartbeat_seconds must be a positive number"),
        ({"stale_after_seconds": -1}, "stale_after_seconds must be a positive number"),
        ({"poll_seconds": "fast"}, "poll_seconds must be a positive number"),
        ({"max_reclaims": -1}, "max_reclaims"),
        ({"sqlite_synchronous": "SOMETIMES"}, "sqlite_synchronous"),
    ],
)
def test_bad_app_options(tmp_path, options, match):
    with pytest.raises(nbjobs.ConfigurationError, match=match):
        nbjobs.App(f"sqlite:///{tmp_path / 'x.db'}", **options)


def test_bad_worker_options(app):
    for concurrency in (0, -1, 1.5, True, "4"):
        with pytest.raises(nbjobs.ConfigurationError, match="concurrency"):
            app.start(concurrency=concurrency)
    assert app.workers() == []


def test_unknown_job_id(app):
    with pytest.raises(nbjobs.UnknownJob):
        app.job("does-not-exist")
    with pytest.raises(nbjobs.UnknownJob):
        app.cancel("does-not-exist")
    with pytest.raises(nbjobs.UnknownJob):
        nbjobs.JobHandle(app._engine, "does-not-exist").logs()


@pytest.mark.no_worker
def test_a_job_without_output_has_empty_logs(app):
    wf = app.workflow(name="silent")(lambda cs: None)
    assert wf.submit().logs() == ""


@pytest.mark.no_worker
@pytest.mark.parametrize("timeout", [float("nan"), "1", True])
def test_a_result_timeout_that_is_no_number_of_seconds_is_refused(app, timeout):
    """A NaN deadline is never reached: ``result(timeout=nan)`` would wait forever."""
    h = app.workflow(name="never-run")(lambda cs: None).submit()
    with pytest.raises(nbjobs.ConfigurationError, match="timeout"):
        h.result(timeout=timeout)
    with pytest.raises(nbjobs.ConfigurationError, match="timeout"):
        asyncio.run(h.result_async(timeout=timeout))


@pytest.mark.parametrize(
    "filters",
    [{"status": "done"}, {"workflow": "a\x00b"}, {"queue": ""}, {"limit": 0}, {"limit": "9"}],
)
def test_bad_job_filters_are_refused_clearly(app, filters):
    with pytest.raises(nbjobs.ConfigurationError):
        app.jobs(**filters)
    with pytest.raises(nbjobs.ConfigurationError):
        app.jobs_frame(**filters)
