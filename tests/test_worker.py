"""The worker: life cycle, unknown workflows, cancellation, timeouts, leases and the reaper."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

import nbjobs
from nbjobs.clock import FakeClock
from tests import backends
from tests.conftest import make_app
from tests.support import submit_elsewhere, wait_until, worker_process

# Backends several processes can share (DuckDB is single-process by design).
MULTIPROCESS = backends.selected("sqlite", "postgres", "mysql")


def _ledger(path: Path) -> list[str]:
    """The events in a crash_app ledger file, without their pids."""
    if not path.exists():
        return []
    return [line.rsplit(" ", 1)[0] for line in path.read_text().splitlines()]


# -- life cycle ------------------------------------------------------------------------
@pytest.mark.no_worker
def test_start_and_stop_are_idempotent(app):
    @app.workflow(name="noop")
    def noop(cs: nbjobs.CallState) -> int:
        return 1

    assert app.start(concurrency=2) is app
    assert app.start(concurrency=2) is app
    [worker] = app.workers()
    assert worker["concurrency"] == 2
    assert worker["queues"] == ["default"]
    assert noop.submit().result(timeout=30) == 1
    app.stop()
    app.stop()
    assert app.workers() == []
    h = noop.submit()
    with pytest.raises(nbjobs.ResultTimeout):
        h.result(timeout=0.3)
    assert h.status == "queued"
    app.start(concurrency=1)
    assert h.result(timeout=30) == 1


def test_a_submit_claims_for_a_free_slot_in_the_submitting_thread(db_url):
    """The shortest way from submit to start in one process: the submitting thread
    claims the job itself and hands it to a slot, instead of waking the dispatcher
    thread to do it; with no slot free it leaves the job to the dispatcher."""
    app = make_app(db_url, poll_seconds=60.0)  # the dispatcher claims only when woken
    release = threading.Event()

    @app.workflow(name="held")
    def held(cs: nbjobs.CallState, n: int) -> int:
        release.wait(30)
        return n

    claims: list[tuple[str, int]] = []  # (thread, jobs claimed), once each claim returned
    claim_jobs = app.store.claim_jobs

    def recording(**kwargs):
        claimed = claim_jobs(**kwargs)
        claims.append((threading.current_thread().name, len(claimed)))
        return claimed

    app.store.claim_jobs = recording
    try:
        app.start(concurrency=1)
        # The dispatcher's first claim (and on PostgreSQL the one the listener asks for
        # once it listens) found nothing; then nobody claims until woken.
        wait_until(lambda: claims, timeout=30, what="the dispatcher's first claim")
        seen = 0
        while len(claims) != seen:
            seen = len(claims)
            time.sleep(1.0)
        assert all(n == 0 for _, n in claims)
        first = held.submit(1)
        wait_until(lambda: first.status == "running", timeout=30, what="the first job")
        # The job runs once its claim commits, a moment before the claiming thread has
        # returned and recorded it: wait for the record.
        wait_until(lambda: any(n for _, n in claims[seen:]), timeout=30, what="the claim")
        # On PostgreSQL the listener, woken by the submit's NOTIFY, may claim first.
        awake = {threading.current_thread().name, "nbjobs-listen"}
        [taker] = [thread for thread, n in claims[seen:] if n]
        assert taker in awake if app.store.dialect.name == "postgresql" else taker == "MainThread"
        seen = len(claims)
        second = held.submit(2)  # the only slot is busy: no claim, for the dispatcher
        time.sleep(0.2)
        assert second.status == "queued"
        assert all(n == 0 for _, n in claims[seen:])
        release.set()
        assert [first.result(timeout=30), second.result(timeout=30)] == [1, 2]
    finally:
        release.set()
        app.close()


def test_stop_lets_a_running_job_finish(app):
    at_step = threading.Event()
    release = threading.Event()

    @app.workflow(name="finishing")
    def finishing(cs: nbjobs.CallState) -> str:
        at_step.set()
        assert release.wait(30)
        return cs.checkpoint("end", lambda: "finished")

    app.start(concurrency=1)
    h = finishing.submit()
    assert at_step.wait(30)
    stopper = threading.Thread(target=app.stop, kwargs={"timeout": 30})
    stopper.start()
    release.set()
    stopper.join(60)
    assert not stopper.is_alive()
    assert h.status == "succeeded"
    assert h.result(timeout=1) == "finished"


def test_stop_releases_a_job_that_does_not_finish_in_time(app, caplog):
    at_step = threading.Event()
    release = threading.Event()
    calls: list[int] = []

    @app.workflow(name="stubborn")
    def stubborn(cs: nbjobs.CallState) -> int:
        cs.checkpoint("first", lambda: "kept")
        if cs.attempt == 1:
            at_step.set()
            cs.checkpoint("slow", lambda: release.wait(30))
        calls.append(cs.attempt)
        return cs.attempt

    app.start(concurrency=1)
    h = stubborn.submit()
    try:
        assert at_step.wait(30)
        app.stop(timeout=0.2)
        assert h.status == "queued"
        assert [a["outcome"] for a in h.attempts] == ["released"]
    finally:
        release.set()  # the old run goes on; its late writes must be refused
    wait_until(lambda: any("lease" in r.getMessage() for r in caplog.records), what="refusal")
    assert h.checkpoints == {"first": "kept"}
    app.start(concurrency=1)
    assert h.result(timeout=30) == 2
    assert calls == [2]
    assert h.checkpoints == {"first": "kept"}
    assert [a["outcome"] for a in h.attempts] == ["released", "succeeded"]


def test_running_context_manager(app):
    @app.workflow(name="ctx")
    def ctx(cs: nbjobs.CallState) -> str:
        return "ran"

    with app.running(concurrency=2) as running:
        assert running is app
        assert len(app.workers()) == 1
        assert ctx.submit().result(timeout=30) == "ran"
    assert app.workers() == []


def test_worker_in_a_running_event_loop_keeps_the_kernels_loop_and_signals(app):
    outside = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    loops: dict[str, int] = {}

    @app.workflow(name="sync-in-kernel")
    def sync_in_kernel(cs: nbjobs.CallState) -> str:
        return cs.checkpoint("s", lambda: "sync")

    @app.workflow(name="async-in-kernel")
    async def async_in_kernel(cs: nbjobs.CallState) -> str:
        loops.setdefault("workflow", id(asyncio.get_running_loop()))
        await asyncio.sleep(0)
        return await cs.checkpoint("a", lambda: "async")

    async def notebook_cell() -> list:
        loops["kernel"] = id(asyncio.get_running_loop())
        # The kernel's own handlers (asyncio.run installs one for SIGINT) must survive.
        handlers = {s: signal.getsignal(s) for s in outside}
        app.start(concurrency=2)  # as a cell does, while the kernel's loop runs
        assert {s: signal.getsignal(s) for s in handlers} == handlers
        h1 = sync_in_kernel.submit()
        h2 = await async_in_kernel.submit_async()
        results = [await h1, await h2]
        results.append(async_in_kernel.run())  # must not asyncio.run on this loop
        results.append(sync_in_kernel.run())
        app.stop()
        assert {s: signal.getsignal(s) for s in handlers} == handlers
        return results

    assert asyncio.run(notebook_cell()) == ["sync", "async", "async", "sync"]
    assert loops["workflow"] != loops["kernel"]
    assert {s: signal.getsignal(s) for s in outside} == outside


# -- unknown workflows ---------------------------------------------------------------
@pytest.mark.no_worker
def test_jobs_of_unknown_workflows_stay_queued_until_a_worker_knows_them(app, db_url):
    other = make_app(db_url)
    try:

        @other.workflow(name="mystery")
        def mystery(cs: nbjobs.CallState) -> str:
            return cs.checkpoint("m", lambda: "solved")

        @app.workflow(name="known")
        def known(cs: nbjobs.CallState) -> str:
            return "known"

        h = mystery.submit()
        app.start(concurrency=2)
        # The worker serves several jobs and reaper passes; "mystery" is never touched.
        for _ in range(3):
            assert known.submit().result(timeout=30) == "known"
        beats = app.workers()[0]["heartbeat_at"]
        wait_until(lambda: app.workers()[0]["heartbeat_at"] > beats, what="a monitor pass")
        assert h.status == "queued"
        assert h.attempts == []
        app.stop()
        other.start(concurrency=1)
        assert other.job(h.id).result(timeout=30) == "solved"
    finally:
        other.close()


@pytest.mark.no_worker
def test_a_due_job_no_worker_here_can_run_does_not_make_the_dispatcher_spin(app, db_url):
    other = make_app(db_url)
    try:

        @other.workflow(name="mystery")
        def mystery(cs: nbjobs.CallState) -> str:
            return "solved"

        @app.workflow(name="known")
        def known(cs: nbjobs.CallState) -> str:
            return "known"

        mystery.submit()  # due now, but this App's worker cannot run it
        assert app.store.next_due_at(["default"]) is None
        later = known.options(delay=3600).submit()
        assert app.store.next_due_at(["default"]) == app.store.get_job(later.id).run_at
        claims: list[float] = []
        claim_jobs = app.store.claim_jobs

        def counted(**kwargs):
            claims.append(time.monotonic())
            return claim_jobs(**kwargs)

        app.store.claim_jobs = counted
        app.runtime.settings = dataclasses.replace(app.runtime.settings, poll_seconds=0.2)
        app.start(concurrency=1)
        time.sleep(1.0)
        app.stop()
        # About one claim per poll interval, not one per millisecond.
        assert 1 <= len(claims) <= 10
    finally:
        other.close()


# -- cancellation --------------------------------------------------------------------
@pytest.mark.no_worker
def test_cancel_a_queued_job(app):
    calls: list[str] = []

    @app.workflow(name="never")
    def never(cs: nbjobs.CallState, label: str) -> str:
        calls.append(label)
        return label

    h = never.submit("cancelled")
    assert h.cancel() == "cancelled"
    assert h.status == "cancelled"
    with pytest.raises(nbjobs.JobCancelled):
        h.result(timeout=5)
    app.start(concurrency=1)
    assert never.submit("after").result(timeout=30) == "after"
    assert calls == ["after"]
    assert h.attempts == []
    assert h.cancel() == "cancelled"  # cancelling again is harmless


def test_cancel_a_running_sync_job_stops_at_the_step_boundary(app):
    at_step = threading.Event()
    release = threading.Event()
    calls: list[str] = []

    def slow(name: str) -> str:
        calls.append(name)
        if name == "one":
            at_step.set()
            assert release.wait(30)
        return name

    @app.workflow(name="stoppable")
    def stoppable(cs: nbjobs.CallState) -> list:
        return [cs.checkpoint(n, slow, n) for n in ("one", "two", "three")]

    app.start(concurrency=1)
    h = stoppable.submit()
    assert at_step.wait(30)
    assert h.cancel() == "running"
    release.set()
    with pytest.raises(nbjobs.JobCancelled):
        h.result(timeout=30)
    assert calls == ["one"]
    assert h.checkpoints == {"one": "one"}  # the step in flight finished and was kept
    assert [a["outcome"] for a in h.attempts] == ["cancelled"]


def test_cancel_from_another_process_view_reaches_the_worker(app, db_url):
    at_step = threading.Event()
    release = threading.Event()
    calls: list[str] = []

    @app.workflow(name="remote-cancel")
    def remote_cancel(cs: nbjobs.CallState) -> None:
        for i in range(3):
            calls.append(cs.checkpoint(f"s{i}", lambda i=i: (at_step.set(), release.wait(30))[1]))

    app.start(concurrency=1)
    h = remote_cancel.submit()
    assert at_step.wait(30)
    viewer = make_app(db_url)  # e.g. the dashboard: it has no local execution to flag
    try:
        assert viewer.job(h.id).cancel() == "running"
    finally:
        viewer.close()
    # The worker learns of it from the database on its next heartbeat.
    wait_until(lambda: app._engine.worker.running[h.id].cancel_requested, what="cancel flag")
    release.set()
    with pytest.raises(nbjobs.JobCancelled):
        h.result(timeout=30)
    assert len(calls) == 1


def test_cancel_a_running_async_job_cancels_its_task(app):
    at_step = threading.Event()
    cancelled = threading.Event()

    async def nap() -> None:
        at_step.set()
        try:
            await asyncio.sleep(600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    @app.workflow(name="async-stoppable")
    async def async_stoppable(cs: nbjobs.CallState) -> str:
        await cs.checkpoint("nap", nap)
        return "woke"

    app.start(concurrency=1)
    h = async_stoppable.submit()
    assert at_step.wait(30)
    h.cancel()
    with pytest.raises(nbjobs.JobCancelled):
        h.result(timeout=30)
    assert cancelled.is_set()
    assert h.checkpoints == {}
    assert [a["outcome"] for a in h.attempts] == ["cancelled"]


# -- timeouts ------------------------------------------------------------------------
def test_sync_timeout_fails_the_job(app):
    release = threading.Event()
    after: list[str] = []

    @app.workflow(name="too-slow", timeout=0.3)
    def too_slow(cs: nbjobs.CallState) -> None:
        cs.checkpoint("hang", lambda: release.wait(30))
        cs.checkpoint("next", after.append, "next step")

    app.start(concurrency=1)
    h = too_slow.submit()
    try:
        with pytest.raises(nbjobs.JobFailed, match=r"timed out after 0\.3 s"):
            h.result(timeout=30)
    finally:
        release.set()
    [attempt] = h.attempts
    assert attempt["outcome"] == "timeout"
    assert "JobTimeout" in attempt["error"]
    # The abandoned thread's late writes are refused: nothing recorded after the timeout.
    wait_until(lambda: app._engine.worker.running == {}, what="the abandoned run to end")
    assert h.checkpoints == {}
    assert after == []
    assert h.status == "failed"


def test_async_timeout_cancels_the_task(app):
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    @app.workflow(name="async-too-slow")
    async def async_too_slow(cs: nbjobs.CallState) -> None:
        await cs.checkpoint("forever", forever)

    app.start(concurrency=1)
    h = async_too_slow.options(timeout=0.3).submit()
    with pytest.raises(nbjobs.JobFailed, match="timed out"):
        h.result(timeout=30)
    wait_until(cancelled.is_set, what="the task's cancellation")
    assert [a["outcome"] for a in h.attempts] == ["timeout"]


def test_a_timed_out_run_returning_late_does_not_disturb_its_retry(app):
    first_release = threading.Event()
    second_started = threading.Event()
    second_release = threading.Event()

    @app.workflow(name="late-return")
    def late_return(cs: nbjobs.CallState) -> int:
        if cs.attempt == 1:
            first_release.wait(30)
        else:
            second_started.set()
            assert second_release.wait(30)
        return cs.attempt

    app.start(concurrency=2)
    h = late_return.options(timeout=1.5, retries=1).submit()
    try:
        assert second_started.wait(30)
        first_release.set()  # the timed-out first run returns while the retry runs
        for _ in range(3):  # a few heartbeats later, the retry's lease is still held
            beat = app.workers()[0]["heartbeat_at"]
            wait_until(lambda b=beat: app.workers()[0]["heartbeat_at"] > b, what="a heartbeat")
        assert app.workers()[0]["jobs_held"] == 1
        assert h.status == "running"
    finally:
        first_release.set()
        second_release.set()
    assert h.result(timeout=30) == 2
    assert [a["outcome"] for a in h.attempts] == ["timeout", "succeeded"]


# -- leases, the reaper and lost workers -----------------------------------------------
@pytest.mark.no_worker
def test_reaper_requeues_a_stale_job_and_counts_the_attempt(app):
    @app.workflow(name="orphan")
    def orphan(cs: nbjobs.CallState) -> int:
        return cs.attempt

    h = orphan.submit()
    # A worker on another host claims it and then goes silent.
    claim = app.store.claim_job(h.id, worker_id="elsewhere:1:ghost", lease_seconds=0.2)
    assert claim is not None and h.status == "running"
    app.start(concurrency=1)
    assert h.result(timeout=30) == 2
    lost, done = h.attempts
    assert (lost["outcome"], lost["worker_id"]) == ("lost", "elsewhere:1:ghost")
    assert "worker lost" in lost["error"]
    assert done["outcome"] == "succeeded"


@pytest.mark.no_worker
def test_a_job_lost_more_than_max_reclaims_times_is_failed(db_url):
    application = make_app(db_url, max_reclaims=2)
    try:

        @application.workflow(name="poison")
        def poison(cs: nbjobs.CallState) -> None:
            return None

        # Its queue has no worker here, so only the ghosts below ever claim it.
        h = poison.options(queue="crashy").submit()
        application.start(concurrency=1)
        for n in range(1, 4):
            claim = application.store.claim_job(
                h.id, worker_id=f"elsewhere:{n}:ghost", lease_seconds=0.1
            )
            assert claim is not None, n
            wait_until(lambda: h.status != "running", what=f"reclaim {n}")
        assert h.status == "failed"
        with pytest.raises(nbjobs.JobFailed, match="worker lost 3 times"):
            h.result(timeout=5)
        assert [a["outcome"] for a in h.attempts] == ["lost", "lost", "lost"]
        assert application.store.claim_job(h.id, worker_id="x:1:y", lease_seconds=1) is None
    finally:
        application.close()


@pytest.mark.no_worker
def test_a_lost_attempt_that_made_progress_is_not_held_against_the_job(db_url):
    """Only losses without a new checkpoint count towards max_reclaims: a job whose
    worker keeps dying while it advances (a crashing neighbour, say) is not failed."""
    application = make_app(db_url, max_reclaims=1)
    try:

        @application.workflow(name="advancing")
        def advancing(cs: nbjobs.CallState) -> None:
            return None

        h = advancing.options(queue="crashy").submit()
        application.start(concurrency=1)
        for n in range(1, 4):
            claim = application.store.claim_job(
                h.id, worker_id=f"elsewhere:{n}:ghost", lease_seconds=0.1
            )
            assert claim is not None, n
            assert application.store.record_checkpoint(
                job_id=h.id,
                token=claim.lease_token,
                name=f"step-{n}",
                seq=n,
                value="null",
                args_hash=None,
                code_fingerprint=None,
                attempt=claim.attempt,
                started_at=application.clock.now(),
            )
            wait_until(lambda: h.status != "running", what=f"reclaim {n}")
            assert h.status == "queued", n
        assert [a["outcome"] for a in h.attempts] == ["lost", "lost", "lost"]
        assert list(h.checkpoints) == ["step-1", "step-2", "step-3"]
    finally:
        application.close()


@pytest.mark.parametrize("backend", MULTIPROCESS)
def test_jobs_of_a_dead_local_process_are_reclaimed_at_worker_start(db_url, tmp_path):
    ledger = tmp_path / "ledger.txt"
    env = {"NBJOBS_LEDGER": str(ledger), "NBJOBS_HANG_AT": "s2"}
    # Its stale threshold is ten minutes: only the dead pid can bring the job back soon.
    application = make_app(db_url, heartbeat_seconds=1, stale_after_seconds=600)
    try:
        with worker_process("tests.apps.crash_app:app", db_url, tmp_path / "w.log", env=env) as p:
            h = application.job(submit_elsewhere(db_url, "crash-pipeline", steps=3))
            wait_until(lambda: "start s2" in _ledger(ledger), what="step s2 to start")
            p.kill()
            p.wait(30)
        assert h.status == "running"

        with pytest.warns(UserWarning, match="'crash-pipeline' changed while 1 of its runs"):

            @application.workflow(name="crash-pipeline")
            def crash_pipeline(cs: nbjobs.CallState, steps: int) -> list:
                return [cs.checkpoint(f"s{i}", lambda i=i: f"s{i}-local") for i in range(1, 4)]

        application.start(concurrency=1)
        assert h.result(timeout=60) == ["s1-ok", "s2-local", "s3-local"]
        lost, done = h.attempts
        assert lost["outcome"] == "lost" and "process died" in lost["error"]
        assert done["outcome"] == "succeeded"
    finally:
        application.close()


@pytest.mark.parametrize("backend", MULTIPROCESS)
def test_a_zombie_whose_lease_was_taken_over_cannot_write(db_url, tmp_path, caplog):
    """A paused worker (its clock, and so its heartbeats, frozen) comes back too late.

    The zombie runs on a FakeClock that never moves: it heartbeats once and never again,
    as if the process were suspended.  A real worker process then finds the lease
    expired, reaps the jobs and runs them.  When the zombie wakes, its checkpoint and
    its result are refused.
    """
    gate = threading.Event()
    in_step = threading.Event()
    in_body = threading.Event()
    zombie = make_app(db_url, clock=FakeClock(), stale_after_seconds=5)
    try:

        @zombie.workflow(name="fence-step")
        def fence_step(cs: nbjobs.CallState) -> str:
            def work() -> str:
                in_step.set()
                gate.wait(60)
                return "zombie"

            return cs.checkpoint("work", work)

        @zombie.workflow(name="fence-result")
        def fence_result(cs: nbjobs.CallState) -> str:
            value = cs.checkpoint("work", lambda: "zombie")
            in_body.set()
            gate.wait(60)
            return "zombie-result:" + value

        zombie.start(concurrency=2)
        step_job, result_job = fence_step.submit(), fence_result.submit()
        assert in_step.wait(30) and in_body.wait(30)
        with worker_process("tests.apps.crash_app:app", db_url, tmp_path / "owner.log"):
            assert step_job.result(timeout=60) == "owner"
            assert result_job.result(timeout=60) == "owner:zombie"
        with caplog.at_level(logging.WARNING, logger="nbjobs"):
            gate.set()
            wait_until(lambda: zombie._engine.worker.running == {}, what="the zombie's runs to end")
        refused = [r.getMessage() for r in caplog.records if "lease" in r.getMessage()]
        refused += [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert any(step_job.id in m for m in refused), refused
        assert any(result_job.id in m for m in refused), refused
        assert step_job.result(timeout=1) == "owner"
        assert step_job.checkpoints == {"work": "owner"}
        assert result_job.result(timeout=1) == "owner:zombie"
        for h in (step_job, result_job):
            assert [a["outcome"] for a in h.attempts] == ["lost", "succeeded"]
            assert h.attempts[0]["finished_at"] is not None
    finally:
        gate.set()
        zombie.close()


@pytest.mark.no_worker
def test_a_cancelled_job_whose_worker_was_lost_is_not_run_again(app):
    calls: list[int] = []

    @app.workflow(name="doomed")
    def doomed(cs: nbjobs.CallState) -> None:
        calls.append(cs.attempt)

    h = doomed.submit()
    assert app.store.claim_job(h.id, worker_id="elsewhere:1:ghost", lease_seconds=0.2)
    assert h.cancel() == "running"  # the request waits for a worker that never answers
    app.start(concurrency=1)
    with pytest.raises(nbjobs.JobCancelled):
        h.result(timeout=30)
    assert calls == []
    assert [a["outcome"] for a in h.attempts] == ["lost"]


def test_a_new_app_on_the_same_database_replaces_the_old_worker(app, db_url):
    """Re-running ``app = nbjobs.App(...); app.start()`` in a notebook keeps one worker."""

    @app.workflow(name="cell")
    def cell_v1(cs: nbjobs.CallState) -> str:
        return "v1"

    app.start(concurrency=1)
    rerun = make_app(db_url)
    try:

        @rerun.workflow(name="cell")
        def cell_v2(cs: nbjobs.CallState) -> str:
            return "v2"

        rerun.start(concurrency=1)
        [worker] = rerun.workers()
        assert repr(app).endswith("worker=stopped workflows=1>")
        assert cell_v2.submit().result(timeout=30) == "v2"
        assert worker["pid"] > 0
    finally:
        rerun.close()


# -- short jobs: claims ahead and write-behind successes -------------------------------
def _job_times(app: nbjobs.App, column: str) -> list[float]:
    from nbjobs.schema import jobs

    with app.store.engine.connect() as conn:
        return list(conn.execute(select(getattr(jobs.c, column))).scalars())


@pytest.mark.no_worker
def test_short_jobs_share_claims_and_commits_and_run_once(app):
    """A slot running short jobs claims many at once and records their successes with
    shared commits: the jobs carry fewer distinct claim and finish times than there are
    jobs, and every job still ran once, with one attempt row."""
    runs: list[int] = []

    @app.workflow(name="short")
    def short(cs: nbjobs.CallState, i: int) -> int:
        runs.append(i)
        return i * 2

    handles = [short.submit(i) for i in range(60)]
    app.start(concurrency=1)
    assert [h.result(timeout=60) for h in handles] == [i * 2 for i in range(60)]
    assert sorted(runs) == list(range(60))
    assert all([a["outcome"] for a in h.attempts] == ["succeeded"] for h in handles)
    assert len(set(_job_times(app, "claimed_at"))) < 30
    if app.store.dialect.group_commit:  # MySQL and DuckDB commit each success at once
        assert len(set(_job_times(app, "finished_at"))) < 60


@pytest.fixture
def still_app(db_url: str):
    """An App on a FakeClock that never moves: every job runs "in no time", so slots
    claim ahead and defer successes deterministically."""
    application = make_app(db_url, clock=FakeClock())
    yield application
    application.close()


@pytest.mark.no_worker
def test_a_short_success_is_committed_while_a_long_job_runs(still_app):
    """The success left for a later commit is written within milliseconds by the
    write-behind thread, not when the long job after it ends."""
    app = still_app
    release = threading.Event()

    @app.workflow(name="quick")
    def quick(cs: nbjobs.CallState, i: int) -> int:
        return i

    @app.workflow(name="slow")
    def slow(cs: nbjobs.CallState) -> str:
        assert release.wait(60)
        return "slow"

    first, second = quick.submit(1), quick.submit(2)
    long = slow.submit()
    app.start(concurrency=1)
    try:
        assert second.result(timeout=30) == 2  # committed while the slow job holds the slot
        assert first.status == "succeeded"
        assert long.status == "running" and not release.is_set()
    finally:
        release.set()
    assert long.result(timeout=30) == "slow"


@pytest.mark.no_worker
def test_stop_gives_back_the_jobs_claimed_ahead(still_app):
    """Jobs a slot claimed ahead but never started go back to the queue on stop() and run
    exactly once on the next start."""
    app = still_app
    started = threading.Event()
    runs: list[int] = []

    @app.workflow(name="ahead")
    def ahead(cs: nbjobs.CallState, i: int) -> int:
        runs.append(i)
        if i == 1:
            started.set()
            time.sleep(0.5)
        return i

    handles = [ahead.submit(i) for i in range(12)]
    app.start(concurrency=1)
    assert started.wait(30)
    app.stop(timeout=30)
    statuses = [h.status for h in handles]
    assert statuses[:2] == ["succeeded", "succeeded"]
    assert set(statuses[2:]) == {"queued"}, statuses
    assert all(h.attempts == [] for h in handles[2:])  # given back as if never claimed
    app.start(concurrency=1)
    assert [h.result(timeout=30) for h in handles] == list(range(12))
    assert sorted(runs) == list(range(12))
    assert all([a["outcome"] for a in h.attempts] == ["succeeded"] for h in handles)


@pytest.mark.no_worker
def test_finish_later_refuses_a_job_whose_lease_was_lost(app):
    """Successes recorded together are fenced one by one: a job whose lease another
    worker took over is refused and left as that worker has it."""

    @app.workflow(name="pair")
    def pair(cs: nbjobs.CallState) -> None:
        return None

    a, b = pair.submit(), pair.submit()
    store = app.store
    claimed = store.claim_jobs(
        worker_id="w1", queue="default", workflows=["pair"], limit=2, lease_seconds=30
    )
    assert {j.id for j in claimed} == {a.id, b.id}
    outcomes: dict[str, object] = {}
    for job in claimed:
        token = job.lease_token if job.id == a.id else "taken-over"
        store.finish_later(
            job_id=job.id,
            token=token,
            attempt=job.attempt,
            result="1",
            done=lambda outcome, job_id=job.id: outcomes.__setitem__(job_id, outcome),
        )
    store.flush()
    assert outcomes == {a.id: True, b.id: False}
    assert a.status == "succeeded" and a.result(timeout=1) == 1
    assert b.status == "running"
    assert [x["outcome"] for x in a.attempts] == ["succeeded"]
    assert [x["outcome"] for x in b.attempts] == ["running"]


@pytest.mark.no_worker
def test_a_job_claimed_ahead_and_cancelled_never_runs(still_app):
    """Cancelling a job that a slot claimed ahead (so it shows as running) stops it before
    it starts: it is recorded as cancelled and its function is never called."""
    app = still_app
    release = threading.Event()
    ran: list[str] = []

    @app.workflow(name="step")
    def step(cs: nbjobs.CallState, name: str) -> str:
        ran.append(name)
        if name == "long":
            assert release.wait(60)
        return name

    handles = {name: step.submit(name) for name in ("short", "long", "after")}
    app.start(concurrency=1)
    wait_until(lambda: "long" in ran, what="the long job to start")
    after = handles["after"]
    assert after.status == "running"  # claimed ahead with the long job
    assert after.cancel() == "running"
    release.set()
    with pytest.raises(nbjobs.JobCancelled):
        after.result(timeout=30)
    assert handles["long"].result(timeout=30) == "long"
    assert ran == ["short", "long"]
    assert after.attempts == []  # it never started


@pytest.mark.no_worker
@pytest.mark.parametrize("backend", backends.selected("postgres"))
def test_a_success_waiting_for_its_shared_commit_keeps_its_lease(db_url, monkeypatch):
    """A short job's success left to the write-behind commit stays heartbeated until
    that commit is made: a database stall longer than the lease (here the group commit
    held up for 2.5 leases) must not let the reaper run the job again and refuse the
    success.  PostgreSQL: there heartbeats and the reaper do not wait for group commits."""
    import nbjobs.runtime.worker as worker_module

    monkeypatch.setattr(worker_module, "SHORT_JOB_SECONDS", 60.0)  # every job is short
    app = make_app(db_url)
    runs: list[int] = []
    try:
        quick = app.workflow(name="quick", queue="manual")(lambda cs, x: runs.append(x) or x)
        first, second = quick.submit(1), quick.submit(2)
        app.start(concurrency=1, queues=["default"])  # these two are claimed here
        worker = app._engine.worker
        claimed = app.store.claim_jobs(
            worker_id=worker.id, queue="manual", workflows=["quick"], limit=2,
            lease_seconds=app.stale_after_seconds,
        )  # fmt: skip
        assert [j.id for j in claimed] == [first.id, second.id]
        with app.store.dialect.group_lock:  # no group commits for a while
            worker._ready.append(claimed[1])
            worker._dispatch(claimed[0])  # its success waits for the shared commit
            wait_until(lambda: runs == [1, 2], timeout=30, what="both jobs to run")
            assert first.status == "running"  # done, its success not committed yet
            time.sleep(2.5 * app.stale_after_seconds)
        assert first.result(timeout=30) == 1 and second.result(timeout=30) == 2
        assert runs == [1, 2]
        assert [a["outcome"] for a in first.attempts] == ["succeeded"]
    finally:
        app.close()


@pytest.mark.no_worker
def test_a_finish_claims_the_next_job_of_any_queue_the_worker_serves(app):
    """A finishing job claims the next one in its own transaction from the queues the
    worker serves in turn, passing over one found empty a moment ago: a worker serving
    an empty queue and a busy one (the default queue and a named one, as in a notebook)
    chains the busy queue's jobs instead of handing every slot back to the dispatcher
    (which asked only the first queue, and so claimed each job separately)."""

    @app.workflow(name="named", queue="named")
    def named(cs: nbjobs.CallState, n: int) -> int:
        time.sleep(0.01)  # not a short job: one claim per finish
        return n

    @app.workflow(name="plain")
    def plain(cs: nbjobs.CallState, n: int) -> int:
        return n

    app.pause_queue("named")
    group = named.map(range(150))
    claims: list[str] = []
    store_claim = app.store.claim_jobs

    def counted(**kwargs):
        got = store_claim(**kwargs)
        claims.extend(job.queue for job in got)
        return got

    app.store.claim_jobs = counted  # the dispatcher's claims; a finish's go with it
    app.start(concurrency=1, queues=["default", "named"])
    app.resume_queue("named")
    group.wait(timeout=120)
    assert group.status_counts()["succeeded"] == 150
    assert claims.count("named") < 150 / 3, f"{claims.count('named')} of 150 claimed alone"


@pytest.mark.no_worker
def test_two_busy_queues_take_turns_on_one_slot(app):
    """One slot, two queues full of jobs: finishing jobs claim from the queues in turn,
    so neither waits for the other to empty."""
    done: list[str] = []

    @app.workflow(name="first", queue="first")
    def first(cs: nbjobs.CallState, n: int) -> int:
        time.sleep(0.006)
        done.append("first")
        return n

    @app.workflow(name="second", queue="second")
    def second(cs: nbjobs.CallState, n: int) -> int:
        time.sleep(0.006)
        done.append("second")
        return n

    firsts = first.map(range(60))
    seconds = second.map(range(60))
    app.start(concurrency=1, queues=["first", "second"])
    wait_until(lambda: len(done) >= 40, timeout=60, what="40 jobs done")
    early = done[:40]
    assert early.count("second") >= 10 and early.count("first") >= 10, early
    firsts.wait(timeout=60)
    seconds.wait(timeout=60)
