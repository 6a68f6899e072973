"""app.history_frame (nbjobs.notebook.frames, store/history.py) and the changed-code warning."""

from __future__ import annotations

import warnings

import pytest

WAIT = 60


def test_history_frame_has_jobs_attempts_and_steps(app):
    @app.workflow(name="etl", retries=1)
    def etl(cs, fail_first):
        cs.checkpoint("extract", lambda: [1, 2, 3])
        if fail_first and cs.attempt == 1:
            raise RuntimeError("flaky")
        cs.checkpoint("load", lambda: "ok")
        return "done"

    @app.workflow(name="broken")
    def broken(cs):
        raise ValueError("always")

    app.start()
    handles = [etl.submit(False), etl.submit(True), broken.submit()]
    for h in handles:
        try:
            h.result(timeout=WAIT)
        except Exception:
            pass

    frame = app.history_frame()
    jobs = frame[frame.kind == "job"].set_index("job_id")
    assert set(jobs.index) == {h.id for h in handles}
    assert jobs.loc[handles[1].id, "status"] == "succeeded"
    assert jobs.loc[handles[1].id, "attempt"] == 2
    assert jobs.loc[handles[2].id, "status"] == "failed"
    assert "ValueError: always" in jobs.loc[handles[2].id, "error"]

    attempts = frame[frame.kind == "attempt"]
    retried = attempts[attempts.job_id == handles[1].id].sort_values("attempt")
    assert list(retried.status) == ["failed", "succeeded"]
    assert "RuntimeError: flaky" in retried.iloc[0].error
    assert retried.worker_id.notna().all()

    steps = frame[frame.kind == "step"]
    assert list(steps[steps.job_id == handles[1].id].sort_values("seq").name) == [
        "extract",
        "load",
    ]
    # The retried job made "extract" in attempt 1 and "load" in attempt 2.
    made_in = steps[steps.job_id == handles[1].id].set_index("name").attempt
    assert (made_in["extract"], made_in["load"]) == (1, 2)
    assert (steps.duration_s >= 0).all()
    assert str(frame.started_at.dtype).startswith("datetime64")

    # Filters: one workflow, one status, a limit.
    only_etl = app.history_frame(workflow="etl")
    assert set(only_etl.workflow) == {"etl"}
    failed = app.history_frame(status="failed")
    assert set(failed[failed.kind == "job"].job_id) == {handles[2].id}
    assert len(app.history_frame(limit=1).query("kind == 'job'")) == 1


def test_history_frame_of_an_empty_database(app):
    frame = app.history_frame()
    assert frame.empty
    assert {"kind", "job_id", "name", "duration_s"} <= set(frame.columns)


@pytest.mark.no_worker
def test_history_frame_since(sqlite_app):
    from datetime import datetime, timedelta, timezone

    @sqlite_app.workflow
    def noop(cs):
        return 1

    h = noop.submit()
    future = datetime.now(timezone.utc) + timedelta(hours=1)
    assert sqlite_app.history_frame(since=future).empty
    past = datetime.now(timezone.utc) - timedelta(hours=1)
    assert list(sqlite_app.history_frame(since=past).job_id) == [h.id]


@pytest.mark.no_worker
def test_changed_code_warns_about_unfinished_runs(sqlite_app):
    def define(version):
        namespace = {}
        exec(
            f"def pipeline(cs):\n    return cs.checkpoint('step', lambda: {version})\n",
            namespace,
        )
        return sqlite_app.workflow(name="pipeline")(namespace["pipeline"])

    # Unchanged code, or nothing unfinished: no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = define(1)
        define(1)
    h1 = first.submit()
    h2 = first.submit()

    with pytest.warns(UserWarning) as caught:
        second = define(2)
    (warning,) = caught
    message = str(warning.message)
    assert "'pipeline' changed while 2 of its runs are unfinished" in message
    assert h1.id in message and h2.id in message
    assert "retry(from_checkpoint=" in message and "cancel" in message
    assert warning.filename == __file__  # it points at the user's line, not nbjobs

    # After a "kernel restart" (a new App on the same file) the first definition warns too.
    from tests.conftest import make_app

    restarted = make_app(sqlite_app.url)
    try:
        namespace: dict = {}
        exec("def pipeline(cs):\n    return 3\n", namespace)
        with pytest.warns(UserWarning, match="2 of its runs are unfinished"):
            restarted.workflow(name="pipeline")(namespace["pipeline"])
    finally:
        restarted.close()

    # Cancelling them (one of the three choices) silences it.
    h1.cancel()
    h2.cancel()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        define(3)
    assert second.name == "pipeline"
