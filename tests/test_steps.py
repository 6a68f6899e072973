"""Step policies: ``@nbjobs.step(retries=, backoff=, timeout=, retry_on=, give_up_on=)``,
the workflow's ``retry_on`` / ``give_up_on``, ``App(retries=)``, and what is never retried.

Every test that runs a workflow runs on each database (the ``app`` fixture); tries are
read back through the public API (``h.step_tries``, ``app.history_frame()``).
"""

from __future__ import annotations

import asyncio
import threading

import pytest

import nbjobs
from nbjobs.steps import StepOptions, jittered, step_options
from tests.conftest import make_app


class Flaky(ConnectionError):
    """The outside world failed for a moment."""


def failing(times: int, exc: type[Exception] = Flaky):
    """A step function that raises ``exc`` on its first ``times`` calls, then returns
    how many calls it took; ``calls`` counts them."""
    calls: list[int] = []

    def fetch(x: int) -> dict:
        calls.append(x)
        if len(calls) <= times:
            raise exc(f"call {len(calls)} failed")
        return {"x": x, "calls": len(calls)}

    return fetch, calls


# -- step retries ----------------------------------------------------------------------
def test_step_retries_inside_the_attempt_and_records_each_try(app):
    fetch, calls = failing(2)
    step = nbjobs.step(retries=3, backoff=0.01)(fetch)

    @app.workflow(name="fetcher")
    def fetcher(cs, x):
        return cs.checkpoint("fetch", step, x)

    assert fetcher.run(5) == {"x": 5, "calls": 3}
    assert calls == [5, 5, 5]
    job = app.jobs(workflow="fetcher")[0]
    assert [a["outcome"] for a in job.attempts] == ["succeeded"]  # one attempt, three tries
    tries = [(t["attempt"], t["step"], t["try"], t["outcome"]) for t in job.step_tries]
    assert tries == [
        (1, "fetch", 1, "failed"),
        (1, "fetch", 2, "failed"),
        (1, "fetch", 3, "succeeded"),
    ]
    assert job.step_tries[0]["error"] == "Flaky: call 1 failed"
    assert job.step_tries[2]["error"] is None
    assert job.step_tries[0]["finished_at"] >= job.step_tries[0]["started_at"]


def test_a_step_that_works_at_once_records_no_try(app):
    step = nbjobs.step(retries=3)(lambda: "ok")

    @app.workflow(name="smooth")
    def smooth(cs):
        return cs.checkpoint("easy", step)

    assert smooth.run() == "ok"
    assert app.jobs(workflow="smooth")[0].step_tries == []


def test_a_step_out_of_tries_fails_the_attempt_with_its_last_error(app):
    fetch, calls = failing(10)
    step = nbjobs.step(retries=2, backoff=0)(fetch)

    @app.workflow(name="hopeless", retries=1)
    def hopeless(cs):
        return cs.checkpoint("fetch", step, 1)

    with pytest.raises(nbjobs.JobFailed, match="Flaky: call 6 failed"):
        hopeless.run()
    assert len(calls) == 6  # three tries in each of two attempts
    job = app.jobs(workflow="hopeless")[0]
    assert [a["outcome"] for a in job.attempts] == ["failed", "failed"]
    assert [(t["attempt"], t["try"]) for t in job.step_tries] == [
        (1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3),
    ]  # fmt: skip


def test_the_workflow_can_catch_a_step_that_ran_out_of_tries(app):
    fetch, _calls = failing(10)
    step = nbjobs.step(retries=1, backoff=0)(fetch)

    @app.workflow(name="fallback")
    def fallback(cs):
        try:
            return cs.checkpoint("fetch", step, 1)
        except Flaky:
            return cs.checkpoint("cached", lambda: "stale copy")

    assert fallback.run() == "stale copy"


def test_step_tries_are_in_the_history_frame(app):
    fetch, _calls = failing(1)
    step = nbjobs.step(retries=1, backoff=0)(fetch)

    @app.workflow(name="framed")
    def framed(cs):
        return cs.checkpoint("fetch", step, 2)

    framed.run()
    frame = app.history_frame(workflow="framed")
    tries = frame[frame.kind == "try"]
    assert list(zip(tries.name, tries.seq, tries.status, strict=True)) == [
        ("fetch", 1, "failed"),
        ("fetch", 2, "succeeded"),
    ]
    assert tries.error.iloc[0] == "Flaky: call 1 failed"
    assert len(frame[frame.kind == "step"]) == 1


def test_step_tries_are_in_the_dashboard_detail(app):
    fetch, _calls = failing(1)
    step = nbjobs.step(retries=1, backoff=0)(fetch)

    @app.workflow(name="detailed")
    def detailed(cs):
        return cs.checkpoint("fetch", step, 2)

    detailed.run()
    job = app.jobs(workflow="detailed")[0]
    rows = app.store.job_detail(job.id)["step_tries"]
    assert [(r.step, r.try_number, r.outcome) for r in rows] == [
        ("fetch", 1, "failed"),
        ("fetch", 2, "succeeded"),
    ]


def test_the_dashboard_job_detail_shows_step_tries(sqlite_app):
    from nbjobs.views import JobDetail

    app = sqlite_app
    fetch, _calls = failing(1)
    step = nbjobs.step(retries=1, backoff=0)(fetch)

    @app.workflow(name="shown")
    def shown(cs):
        return cs.checkpoint("fetch", step, 2)

    shown.run()
    html = JobDetail(app=app, job_id=app.jobs(workflow="shown")[0].id)._attempts.object
    assert "Step tries" in html
    assert "<b>fetch</b></td><td>1</td>" in html and "Flaky: call 1 failed" in html
    assert "<b>fetch</b></td><td>2</td>" in html


def test_purge_deletes_step_tries_with_their_job(app):
    fetch, _calls = failing(1)
    step = nbjobs.step(retries=1, backoff=0)(fetch)

    @app.workflow(name="purged")
    def purged(cs):
        return cs.checkpoint("fetch", step, 2)

    purged.run()
    job_id = app.jobs(workflow="purged")[0].id
    assert len(app.store.list_step_tries([job_id])) == 2
    assert app.purge(older_than=0) == 1
    assert app.store.list_step_tries([job_id]) == []


# -- give_up_on / retry_on for steps -----------------------------------------------------
def test_step_give_up_on_fails_at_once(app):
    fetch, calls = failing(10, exc=PermissionError)
    step = nbjobs.step(retries=5, backoff=0, give_up_on=PermissionError)(fetch)

    @app.workflow(name="denied")
    def denied(cs):
        return cs.checkpoint("fetch", step, 1)

    with pytest.raises(nbjobs.JobFailed, match="PermissionError"):
        denied.run()
    assert len(calls) == 1
    assert [t["outcome"] for t in app.jobs(workflow="denied")[0].step_tries] == ["failed"]


def test_step_retry_on_retries_only_those_classes(app):
    flaky, flaky_calls = failing(1, exc=Flaky)
    broken, broken_calls = failing(1, exc=ValueError)
    retry_flaky = nbjobs.step(retries=3, backoff=0, retry_on=(ConnectionError,))
    flaky_step, broken_step = retry_flaky(flaky), retry_flaky(broken)

    @app.workflow(name="selective")
    def selective(cs, which):
        return cs.checkpoint("go", flaky_step if which == "flaky" else broken_step, 1)

    assert selective.run("flaky") == {"x": 1, "calls": 2}
    with pytest.raises(nbjobs.JobFailed, match="ValueError"):
        selective.run("broken")
    assert (len(flaky_calls), len(broken_calls)) == (2, 1)


# -- timeouts ----------------------------------------------------------------------------
def test_sync_step_over_its_timeout_is_abandoned_and_retried(app):
    release = threading.Event()
    abandoned_done = threading.Event()
    calls: list[int] = []

    @nbjobs.step(retries=1, backoff=0, timeout=0.3)
    def slow_then_fast() -> str:
        calls.append(1)
        if len(calls) == 1:
            release.wait(30)  # the first call hangs until the test lets it go
            abandoned_done.set()
            return "late"
        return "fast"

    @app.workflow(name="hangs")
    def hangs(cs):
        return cs.checkpoint("call", slow_then_fast)

    assert hangs.run() == "fast"
    job = app.jobs(workflow="hangs")[0]
    assert [(t["try"], t["outcome"]) for t in job.step_tries] == [(1, "timeout"), (2, "succeeded")]
    assert "StepTimeout" in job.step_tries[0]["error"]
    # The abandoned call was still running when the job finished; it ends by itself,
    # and its "late" result changes nothing.
    assert not abandoned_done.is_set()
    release.set()
    assert abandoned_done.wait(30)
    assert job.result(timeout=5) == "fast"
    assert job.checkpoints == {"call": "fast"}


def test_sync_step_timeout_without_retries_fails_with_step_timeout(app):
    release = threading.Event()

    @nbjobs.step(timeout=0.2)
    def stuck() -> None:
        release.wait(30)

    @app.workflow(name="stuck")
    def stuck_wf(cs):
        try:
            cs.checkpoint("stuck", stuck)
        except nbjobs.StepTimeout as exc:
            return f"gave up: {exc}"
        return "finished"

    try:
        result = stuck_wf.run()
    finally:
        release.set()
    assert result.startswith("gave up: step 'stuck' ran past its timeout of 0.2 s")


def test_a_step_timeout_is_an_ordinary_failure_of_the_job(app):
    release = threading.Event()

    @nbjobs.step(timeout=0.2)
    def stuck() -> None:
        release.wait(30)

    @app.workflow(name="times-out")
    def times_out(cs):
        return cs.checkpoint("stuck", stuck)

    try:
        with pytest.raises(nbjobs.JobFailed, match="StepTimeout: step 'stuck'"):
            times_out.run()
    finally:
        release.set()


def test_a_timed_step_returns_its_value_and_raises_its_own_errors(app):
    @nbjobs.step(timeout=30)
    def quick(x):
        if x < 0:
            raise TimeoutError("the step's own timeout, not nbjobs'")
        return x * 2

    @app.workflow(name="quick")
    def quick_wf(cs, x):
        return cs.checkpoint("quick", quick, x)

    assert quick_wf.run(21) == 42
    with pytest.raises(nbjobs.JobFailed, match="TimeoutError: the step's own") as failed:
        quick_wf.run(-1)
    assert "StepTimeout" not in str(failed.value.error)


def test_async_step_over_its_timeout_is_cancelled_and_retried(app):
    cancelled: list[bool] = []
    calls: list[int] = []

    @nbjobs.step(retries=2, backoff=0, timeout=0.2)
    async def sometimes_slow() -> str:
        calls.append(1)
        if len(calls) == 1:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
        return "done"

    @app.workflow(name="async-slow")
    async def async_slow(cs):
        return await cs.checkpoint("call", sometimes_slow)

    assert async_slow.run() == "done"
    assert cancelled == [True]
    job = app.jobs(workflow="async-slow")[0]
    assert [(t["try"], t["outcome"]) for t in job.step_tries] == [(1, "timeout"), (2, "succeeded")]


def test_async_workflow_retries_a_sync_step(app):
    fetch, calls = failing(2)
    step = nbjobs.step(retries=2, backoff=0.01)(fetch)

    @app.workflow(name="async-retry")
    async def async_retry(cs):
        return await cs.checkpoint("fetch", step, 3)

    assert async_retry.run() == {"x": 3, "calls": 3}
    assert calls == [3, 3, 3]
    assert [t["outcome"] for t in app.jobs(workflow="async-retry")[0].step_tries] == [
        "failed",
        "failed",
        "succeeded",
    ]


def test_async_step_timeout_keeps_the_step_s_own_timeout_error(app):
    @nbjobs.step(timeout=30)
    async def own() -> None:
        raise TimeoutError("mine")

    @app.workflow(name="async-own")
    async def async_own(cs):
        return await cs.checkpoint("own", own)

    with pytest.raises(nbjobs.JobFailed, match="TimeoutError: mine"):
        async_own.run()


# -- backoff -----------------------------------------------------------------------------
def test_step_backoff_is_jittered_between_half_and_all_of_the_doubled_delay():
    options = StepOptions(backoff=2.0)
    for failures, full in ((1, 2.0), (2, 4.0), (3, 8.0), (10, 60.0)):
        delays = [options.backoff_seconds(failures, cap=60.0) for _ in range(500)]
        assert all(full / 2 <= d <= full for d in delays), (failures, min(delays), max(delays))
        assert max(delays) - min(delays) > full / 10  # jittered, not one fixed value
    assert jittered(0.0, 3, 60.0) == 0.0
    assert jittered(1.0, 10_000, 5.0) <= 5.0  # no overflow, capped


def test_step_backoff_waits_between_tries_up_to_the_app_cap(db_url):
    # Lower bounds only (a wait never ends early): at least half of 0.05 s, then at least
    # half of 0.1 s; with the App's cap at 0.04 s, at least half of 0.04 s each.
    for cap, least in ((10.0, (0.025, 0.05)), (0.04, (0.02, 0.02))):
        app = make_app(db_url, retry_backoff_max_seconds=cap)
        try:
            fetch, _calls = failing(2)
            step = nbjobs.step(retries=2, backoff=0.05)(fetch)

            @app.workflow(name=f"paced-{cap}")
            def paced(cs, step=step):
                return cs.checkpoint("fetch", step, 1)

            paced.run()
            tries = app.jobs(workflow=f"paced-{cap}")[0].step_tries
            starts = [t["started_at"].timestamp() for t in tries]
            ends = [t["finished_at"].timestamp() for t in tries]
            gaps = [starts[1] - ends[0], starts[2] - ends[1]]
            assert gaps[0] >= least[0] and gaps[1] >= least[1], (cap, gaps)
        finally:
            app.close()


@pytest.mark.parametrize("where", ["backoff", "timed call"])
def test_a_cancel_ends_a_step_s_backoff_or_timed_wait_at_once(db_url, where):
    # Without the stop event, the backoff would last at least 150 s and the timed call
    # 600 s: the job would still be running when result() gives up after 60 s.
    app = make_app(db_url, retry_backoff_max_seconds=600)
    release = threading.Event()
    started = threading.Event()
    try:
        fetch, _calls = failing(10)

        @nbjobs.step(retries=3, backoff=300)
        def slow_retry():
            started.set()
            return fetch(1)

        @nbjobs.step(timeout=600)
        def hanging():
            started.set()
            release.wait(60)

        @app.workflow(name="stoppable")
        def stoppable(cs, where):
            return cs.checkpoint("step", slow_retry if where == "backoff" else hanging)

        app.start(concurrency=1)
        h = stoppable.submit(where)
        assert started.wait(30)
        h.cancel()
        with pytest.raises(nbjobs.JobCancelled):
            h.result(timeout=60)
        assert h.status == "cancelled"
    finally:
        release.set()
        app.close()


# -- workflows: retry_on / give_up_on, App(retries=) ---------------------------------------
def test_workflow_give_up_on_fails_the_job_without_its_retries(app):
    runs: list[int] = []

    @app.workflow(name="wf-give-up", retries=5, give_up_on=(KeyError,))
    def wf_give_up(cs):
        runs.append(cs.attempt)
        raise KeyError("no such customer")

    with pytest.raises(nbjobs.JobFailed, match="KeyError"):
        wf_give_up.run()
    assert runs == [1]


def test_workflow_retry_on_retries_only_those_classes(app):
    runs: list[str] = []

    @app.workflow(name="wf-retry-on", retries=3, retry_on=Flaky)
    def wf_retry_on(cs, kind):
        runs.append(kind)
        if len(runs) == 1 or kind == "value":
            raise (Flaky if kind == "flaky" else ValueError)("boom")
        return "ok"

    assert wf_retry_on.run("flaky") == "ok"
    assert runs == ["flaky", "flaky"]
    runs.clear()
    with pytest.raises(nbjobs.JobFailed, match="ValueError"):
        wf_retry_on.run("value")
    assert runs == ["value"]


def test_app_retries_is_the_default_of_workflows_that_give_none(db_url):
    app = make_app(db_url, retries=2)
    try:
        assert app.retries == 2
        runs: list[int] = []

        @app.workflow(name="defaulted")
        def defaulted(cs):
            runs.append(cs.attempt)
            raise Flaky("down")

        @app.workflow(name="own", retries=0)
        def own(cs):
            runs.append(cs.attempt)
            raise Flaky("down")

        with pytest.raises(nbjobs.JobFailed):
            defaulted.run()
        assert runs == [1, 2, 3]
        runs.clear()
        with pytest.raises(nbjobs.JobFailed):
            own.run()
        assert runs == [1]
        runs.clear()
        with pytest.raises(nbjobs.JobFailed):
            defaulted.options(retries=1).run()
        assert runs == [1, 2]
        assert app.jobs(workflow="defaulted")[-1].info()["max_retries"] == 2
    finally:
        app.close()


def test_app_retries_reaches_jobs_a_schedule_fires(db_url):
    from datetime import datetime, timezone

    from nbjobs.clock import FakeClock
    from nbjobs.runtime.scheduler import Scheduler

    clock = FakeClock(datetime(2024, 1, 1, 9, 59, 30, tzinfo=timezone.utc))
    app = make_app(db_url, retries=4, clock=clock)
    try:

        @app.workflow(name="nightly")
        def nightly(cs):
            return 1

        @app.workflow(name="nightly-own", retries=1)
        def nightly_own(cs):
            return 1

        app.schedule("a", "nightly", cron="* * * * *")
        app.schedule("b", "nightly-own", cron="* * * * *")
        clock.advance(60)
        assert Scheduler(app.runtime).tick() == 2
        fired = {h.workflow: h.info()["max_retries"] for h in app.jobs()}
        assert fired == {"nightly": 4, "nightly-own": 1}
    finally:
        app.close()


def test_app_retries_default_is_zero(app):
    assert app.retries == 0

    @app.workflow(name="once")
    def once(cs):
        raise Flaky("down")

    with pytest.raises(nbjobs.JobFailed):
        once.run()
    assert len(app.jobs(workflow="once")[0].attempts) == 1


# -- never retried -------------------------------------------------------------------------
def test_duplicate_checkpoint_is_never_retried(app):
    runs: list[int] = []

    @app.workflow(name="dup", retries=5, retry_on=Exception)
    def dup(cs):
        runs.append(cs.attempt)
        cs.checkpoint("same", lambda: 1)
        cs.checkpoint("same", lambda: 2)

    with pytest.raises(nbjobs.JobFailed, match="DuplicateCheckpoint"):
        dup.run()
    assert runs == [1]


def test_duplicate_checkpoint_inside_a_retried_step_is_not_retried(app):
    tries: list[int] = []

    @app.workflow(name="dup-step", retries=3)
    def dup_step(cs):
        @nbjobs.step(retries=4, backoff=0)
        def nested():
            tries.append(1)
            cs.checkpoint("inner", lambda: 1)  # named again on each try: a bug
            return 1

        cs.checkpoint("inner", lambda: 0)
        return cs.checkpoint("outer", nested)

    with pytest.raises(nbjobs.JobFailed, match="DuplicateCheckpoint"):
        dup_step.run()
    assert tries == [1]


def test_configuration_error_in_a_step_is_never_retried(app):
    tries: list[int] = []

    @nbjobs.step(retries=4, backoff=0)
    def misconfigured():
        tries.append(1)
        raise nbjobs.ConfigurationError("bad option")

    @app.workflow(name="misconfigured", retries=3)
    def misconfigured_wf(cs):
        return cs.checkpoint("bad", misconfigured)

    with pytest.raises(nbjobs.JobFailed, match="ConfigurationError: bad option"):
        misconfigured_wf.run()
    assert tries == [1]
    assert len(app.jobs(workflow="misconfigured")[0].attempts) == 1


# -- bad options -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, message",
    [
        (dict(retries=-1), "step retries must be >= 0"),
        (dict(retries=1.5), "step retries must be an integer"),
        (dict(retries=True), "step retries must be an integer"),
        (dict(backoff=-1), "step backoff must be >= 0"),
        (dict(backoff=float("inf")), "step backoff must be a finite number"),
        (dict(timeout=0), "step timeout must be a positive number"),
        (dict(timeout=-5), "step timeout must be a positive number"),
        (dict(timeout="10"), "step timeout must be a positive number"),
        (dict(timeout=float("nan")), "step timeout must be a finite number"),
        (dict(retry_on="ValueError"), "retry_on= takes exception classes"),
        (dict(retry_on=(ValueError, 3)), "retry_on= takes exception classes"),
        (dict(give_up_on=int), "give_up_on= takes exception classes"),
        (dict(give_up_on=KeyboardInterrupt), "give_up_on= takes exception classes"),
        (dict(cache="yes"), "cache= takes True, False or nbjobs.Cache"),
    ],
)
def test_bad_step_options_raise_configuration_error(options, message):
    with pytest.raises(nbjobs.ConfigurationError, match=message):
        nbjobs.step(**options)


def test_step_decorator_needs_a_function():
    with pytest.raises(nbjobs.ConfigurationError, match="needs a function"):
        nbjobs.step(3)
    with pytest.raises(nbjobs.ConfigurationError, match="needs a function"):
        nbjobs.step(retries=1)("not a function")


def test_step_options_are_read_from_the_function():
    @nbjobs.step(retries=2, backoff=0.5, timeout=3, retry_on=[OSError], give_up_on=KeyError)
    def fetch():
        return 1

    assert fetch() == 1  # still a plain function outside a job
    assert step_options(fetch) == StepOptions(
        retries=2, backoff=0.5, timeout=3.0, retry_on=(OSError,), give_up_on=(KeyError,)
    )
    assert step_options(lambda: 1) is None

    @nbjobs.step
    def bare():
        return 2

    assert step_options(bare) == StepOptions()


def test_bad_workflow_policies_raise_configuration_error(sqlite_app):
    app = sqlite_app
    with pytest.raises(nbjobs.ConfigurationError, match="retry_on= takes exception classes"):
        app.workflow(name="x", retry_on="OSError")
    with pytest.raises(nbjobs.ConfigurationError, match="give_up_on= takes exception classes"):
        app.workflow(name="x", give_up_on=[KeyError, None])
    with pytest.raises(nbjobs.ConfigurationError, match="retries must be >= 0"):
        app.workflow(name="x", retries=-1)

    @app.workflow(name="fine")
    def fine(cs):
        return 1

    with pytest.raises(nbjobs.ConfigurationError, match="retry_on cannot be set per submission"):
        fine.options(retry_on=OSError)
    with pytest.raises(nbjobs.ConfigurationError, match="give_up_on cannot be set per"):
        fine.options(give_up_on=OSError)


@pytest.mark.parametrize("retries", [-1, 1.5, None, "2", True])
def test_bad_app_retries_raise_configuration_error(sqlite_url, retries):
    with pytest.raises(nbjobs.ConfigurationError, match=r"retries must be (an integer|>= 0)"):
        nbjobs.App(sqlite_url, retries=retries)
