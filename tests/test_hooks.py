"""Outcome hooks: ``app.on(event, fn)`` runs ``fn(handle)`` in a worker once per outcome."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

import nbjobs
from tests import backends
from tests.conftest import make_app
from tests.support import submit_elsewhere, wait_until, worker_process

# Backends several processes can share (DuckDB is single-process by design).
MULTIPROCESS = backends.selected("sqlite", "postgres")


class Calls:
    """What hooks saw: (event, job id, status the handle read), thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str, str]] = []

    def hook(self, event: str):
        def record(handle: nbjobs.JobHandle) -> None:
            with self.lock:
                self.seen.append((event, handle.id, handle.status))

        record.__qualname__ = f"record_{event}"
        return record

    def of(self, job_id: str) -> list[tuple[str, str]]:
        with self.lock:
            return [(event, status) for event, jid, status in self.seen if jid == job_id]


def start_beside(app: nbjobs.App) -> None:
    """Start ``app``'s worker beside another App's in this process: ``App.start`` stops
    the worker of another App on the same database (one per process), but two workers
    sharing a database, as two processes would, is what these tests need."""
    app._engine.start(2, None)


def _done_runs(app: nbjobs.App, job_id: str) -> list:
    return [r for r in app.store.job_hook_runs(job_id) if r.done_at is not None]


def test_on_checks_its_event_and_function(app: nbjobs.App):
    with pytest.raises(nbjobs.ConfigurationError, match="'succeeded', 'failed', 'cancelled'"):
        app.on("finished", print)
    with pytest.raises(nbjobs.ConfigurationError, match="needs a callable"):
        app.on("failed", 42)  # type: ignore[arg-type]

    def notify(handle: nbjobs.JobHandle) -> None:
        pass

    with pytest.raises(nbjobs.ConfigurationError, match="needs a name"):
        app.on("failed", lambda handle: None)

    assert app.on("failed", notify) is notify
    assert app.on("succeeded")(notify) is notify  # a decorator too
    app.on("failed", notify)  # a re-run cell replaces it
    app.on("failed", lambda handle: None, name="quiet")
    assert app.runtime.hooks.served() == (
        ("succeeded", f"{__name__}.test_on_checks_its_event_and_function.<locals>.notify"),
        ("failed", f"{__name__}.test_on_checks_its_event_and_function.<locals>.notify"),
        ("failed", "quiet"),
    )


def test_success_failure_and_cancel_each_run_their_hook(app: nbjobs.App):
    calls = Calls()
    for event in ("succeeded", "failed", "cancelled"):
        app.on(event, calls.hook(event))

    @app.workflow(name="hook-ok")
    def ok(cs: nbjobs.CallState, x: int) -> int:
        return x + 1

    @app.workflow(name="hook-bad", retries=2)
    def bad(cs: nbjobs.CallState) -> None:
        raise ValueError("no")

    with app.running(concurrency=2):
        good = ok.submit(1)
        failing = bad.submit()
        assert good.result(timeout=30) == 2
        with pytest.raises(nbjobs.JobFailed):
            failing.result(timeout=30)
        wait_until(lambda: calls.of(good.id) and calls.of(failing.id), what="hooks")
    assert calls.of(good.id) == [("succeeded", "succeeded")]
    # Failed for good after its retries: one outcome, one call.
    assert calls.of(failing.id) == [("failed", "failed")]
    assert len(failing.attempts) == 3
    assert len(_done_runs(app, failing.id)) == 1


def test_a_queued_job_cancelled_elsewhere_runs_the_workers_hook(db_url: str):
    calls = Calls()
    runner = make_app(db_url)
    runner.on("cancelled", calls.hook("cancelled"))
    notebook = make_app(db_url)  # another process in spirit: no worker, no hooks
    try:
        runner.start(concurrency=1, queues=["elsewhere"])
        job_id = notebook.store.enqueue_job(workflow="nobody-runs-this", input="{}")[0]
        assert notebook.cancel(job_id) == "cancelled"
        wait_until(lambda: calls.of(job_id), what="the cancelled hook")
        assert calls.of(job_id) == [("cancelled", "cancelled")]
    finally:
        runner.close()
        notebook.close()


def test_a_failing_hook_is_logged_and_leaves_the_job_alone(
    app: nbjobs.App, caplog: pytest.LogCaptureFixture
):
    calls = Calls()

    def broken_alert(handle: nbjobs.JobHandle) -> None:
        raise RuntimeError("slack is down")

    app.on("succeeded", broken_alert)
    app.on("succeeded", calls.hook("succeeded"))  # the next hook still runs

    @app.workflow(name="hook-fine")
    def fine(cs: nbjobs.CallState) -> str:
        return "fine"

    with caplog.at_level(logging.ERROR, logger="nbjobs.runtime.hooks"), app.running():
        h = fine.submit()
        assert h.result(timeout=30) == "fine"
        wait_until(lambda: _done_runs(app, h.id), what="the hook run recorded")
    assert calls.of(h.id) == [("succeeded", "succeeded")]
    assert h.status == "succeeded" and h.result(timeout=1) == "fine"
    [record] = [r for r in caplog.records if "slack is down" in (r.exc_text or "")]
    message = record.getMessage()
    assert h.id in message and "succeeded" in message and "broken_alert" in message
    assert record.job_id == h.id and record.event == "succeeded"  # type: ignore[attr-defined]


def test_two_workers_on_one_database_run_each_outcome_once(db_url: str):
    calls = Calls()
    apps = [make_app(db_url) for _ in range(2)]
    try:
        for a in apps:
            a.on("succeeded", calls.hook("succeeded"))

            @a.workflow(name="hook-many")
            def many(cs: nbjobs.CallState, i: int) -> int:
                return i

        apps[0].start(concurrency=2)
        start_beside(apps[1])
        handles = [apps[i % 2].get_workflow("hook-many").submit(i) for i in range(40)]
        for h in handles:
            h.result(timeout=60)
        wait_until(lambda: all(calls.of(h.id) for h in handles), timeout=60, what="hooks")
        assert all(a._engine.working for a in apps)  # both served hooks all along
        time.sleep(0.5)  # a second call, were there one, would come within a scan
        for a in apps:
            a.stop()
        for h in handles:
            assert calls.of(h.id) == [("succeeded", "succeeded")]
            assert len(_done_runs(apps[0], h.id)) == 1
    finally:
        for a in apps:
            a.close()


def test_workers_with_different_hooks_each_call_their_own(db_url: str):
    """A notebook's worker with a debugging hook does not take the production hook's
    outcomes: each named hook runs once per outcome, wherever it is registered."""
    calls = Calls()
    production, notebook = make_app(db_url), make_app(db_url)
    try:
        production.on("failed", calls.hook("failed"), name="alert")
        notebook.on("failed", calls.hook("failed"), name="debug")
        for a in (production, notebook):

            @a.workflow(name="hook-fails")
            def fails(cs: nbjobs.CallState, i: int) -> None:
                raise ValueError(i)

        production.start(concurrency=2)
        start_beside(notebook)
        handles = [production.get_workflow("hook-fails").submit(i) for i in range(6)]
        wait_until(
            lambda: all(len(_done_runs(production, h.id)) == 2 for h in handles),
            timeout=60,
            what="both hooks for every outcome",
        )
        for h in handles:
            assert calls.of(h.id) == [("failed", "failed")] * 2
            assert sorted(r.hook for r in _done_runs(production, h.id)) == ["alert", "debug"]
    finally:
        production.close()
        notebook.close()


def test_a_retried_job_that_fails_again_is_a_second_outcome(app: nbjobs.App):
    calls = Calls()
    app.on("failed", calls.hook("failed"))

    @app.workflow(name="hook-twice")
    def twice(cs: nbjobs.CallState) -> None:
        raise ValueError("again")

    with app.running():
        h = twice.submit()
        with pytest.raises(nbjobs.JobFailed):
            h.result(timeout=30)
        wait_until(lambda: calls.of(h.id), what="the first hook")
        h.retry()
        wait_until(lambda: len(calls.of(h.id)) == 2, what="the second hook")
    assert calls.of(h.id) == [("failed", "failed")] * 2
    runs = _done_runs(app, h.id)
    assert len(runs) == 2 and runs[0].outcome_at < runs[1].outcome_at


def test_hooks_do_not_fire_for_outcomes_before_they_were_served(app: nbjobs.App):
    calls = Calls()

    @app.workflow(name="hook-old")
    def old(cs: nbjobs.CallState) -> str:
        return "old"

    with app.running():
        before = old.submit()
        before.result(timeout=30)
    app.on("succeeded", calls.hook("succeeded"))
    with app.running():
        after = old.submit()
        after.result(timeout=30)
        wait_until(lambda: calls.of(after.id), what="the hook of the new outcome")
    assert calls.of(before.id) == []
    assert app.store.job_hook_runs(before.id) == []


def test_purge_deletes_the_hook_runs(app: nbjobs.App):
    calls = Calls()
    app.on("succeeded", calls.hook("succeeded"))

    @app.workflow(name="hook-purged")
    def purged(cs: nbjobs.CallState) -> int:
        return 1

    with app.running():
        h = purged.submit()
        h.result(timeout=30)
        wait_until(lambda: _done_runs(app, h.id), what="the hook run")
    assert app.purge(older_than=0) == 1
    assert app.store.job_hook_runs(h.id) == []


def ledger(path: Path) -> list[tuple[str, int]]:
    if not path.exists():
        return []
    rows = [line.rsplit(" ", 1) for line in path.read_text().splitlines()]
    return [(event, int(pid)) for event, pid in rows]


@pytest.mark.parametrize("moment", ["before the hook", "during the hook"])
@pytest.mark.parametrize("backend", MULTIPROCESS)
def test_a_worker_killed_after_the_outcome_leaves_the_hook_to_another(
    db_url: str, tmp_path: Path, moment: str
):
    """SIGKILL after the failure committed and the hook's call was claimed: before the
    hook did anything, or in the middle of it.  Another worker calls it once its lease
    expires, and records it done; the job is unchanged."""
    book, hold = tmp_path / "ledger.txt", tmp_path / "hold"
    hold.touch()
    job_id = submit_elsewhere(db_url, "hooked-boom")
    variable = "NBJOBS_HOOK_HOLD_BEFORE" if moment == "before the hook" else "NBJOBS_HOOK_HOLD"
    env = {"NBJOBS_LEDGER": str(book), variable: str(hold)}
    target = "tests.apps.hooks_app:app"
    reader = make_app(db_url)
    try:
        with worker_process(target, db_url, tmp_path / "w1.log", env=env) as w1:
            if moment == "before the hook":
                wait_until(lambda: reader.store.job_hook_runs(job_id), timeout=60, what="the claim")
                time.sleep(0.3)  # well inside the hook's first wait
            else:
                wait_until(
                    lambda: (f"hook-start {job_id} failed", w1.pid) in ledger(book),
                    timeout=60,
                    what="the hook to start",
                )
            w1.kill()  # SIGKILL: the call is never marked done
            assert w1.wait(30) == -9
        assert reader.job(job_id).status == "failed"
        [run] = reader.store.job_hook_runs(job_id)
        assert run.done_at is None and run.claimed_until is not None
        before = [event for event, _ in ledger(book)]
        assert before == ([] if moment == "before the hook" else [f"hook-start {job_id} failed"])
        hold.unlink()
        with worker_process(target, db_url, tmp_path / "w2.log", env=env) as w2:
            wait_until(
                lambda: (f"hook-done {job_id}", w2.pid) in ledger(book),
                timeout=60,
                what="the second worker to call the hook",
            )
            wait_until(lambda: _done_runs(reader, job_id), what="the call recorded as done")
            time.sleep(0.5)  # a third call, were there one, would come within a scan
        assert reader.job(job_id).status == "failed"  # the hook changed nothing
        effects = ledger(book)
        events = [event for event, _ in effects]
        starts = [pid for event, pid in effects if event == f"hook-start {job_id} failed"]
        assert starts == ([w2.pid] if moment == "before the hook" else [w1.pid, w2.pid])
        assert events.count(f"hook-done {job_id}") == 1
        taken = f"job {job_id}: calling its failed hook tests.apps.hooks_app.alert again"
        assert taken in (tmp_path / "w2.log").read_text()
        [run] = reader.store.job_hook_runs(job_id)
        assert run.done_at is not None and run.claimed_until is None
    finally:
        reader.close()


def test_a_worker_without_hooks_runs_no_hook_thread_until_one_is_registered(app: nbjobs.App):
    calls = Calls()

    @app.workflow(name="hook-late")
    def late(cs: nbjobs.CallState) -> str:
        return "late"

    def hook_threads() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name == "nbjobs-hooks"]

    with app.running():
        late.submit().result(timeout=30)
        assert hook_threads() == []  # nothing scans for hooks nobody registered
        app.on("succeeded", calls.hook("succeeded"))  # a cell run while the worker runs
        assert len(hook_threads()) == 1
        h = late.submit()
        h.result(timeout=30)
        wait_until(lambda: calls.of(h.id), what="the hook registered while running")
    assert calls.of(h.id) == [("succeeded", "succeeded")]
    wait_until(lambda: hook_threads() == [], what="the hook thread to end at stop")


def test_a_hook_nobody_served_for_a_day_starts_again_at_now(app: nbjobs.App):
    store, pair = app.store, ("failed", "alert")
    first = store.serve_hooks([pair], forget_seconds=86400.0)[pair]
    time.sleep(0.01)
    assert store.serve_hooks([pair], forget_seconds=86400.0)[pair] == first  # served since
    time.sleep(0.01)
    since, scanned_to = store.serve_hooks([pair], forget_seconds=0.001)[pair]
    assert since > first[0] and scanned_to == since  # forgotten: history is not replayed
    assert store.hook_marks([pair]) == {pair: (since, scanned_to)}


def test_an_abandoned_call_for_an_outcome_since_retried_is_dropped(app: nbjobs.App):
    """A worker died in a hook, and the job was retried meanwhile: the old outcome's
    call is marked done rather than made with a handle showing another state."""
    store = app.store
    job_id = store.enqueue_job(workflow="w", input="{}")[0]
    app.cancel(job_id)
    finished_at = store.get_job(job_id).finished_at
    key = (job_id, finished_at, "alert")
    assert store.claim_hook_run(key, event="cancelled", token="dead", lease_seconds=0.0)
    assert not store.claim_hook_run(key, event="cancelled", token="other", lease_seconds=60)
    time.sleep(0.01)
    served = [("cancelled", "alert")]
    [(taken, event)] = store.reclaim_hook_runs(served, token="t2", lease_seconds=0.0, limit=5)
    assert (taken, event) == (key, "cancelled")  # the lease expired: taken over
    assert store.finish_hook_run(key, token="dead") is False  # fenced: not its lease
    app.job(job_id).retry()
    time.sleep(0.01)
    assert store.reclaim_hook_runs(served, token="t3", lease_seconds=60, limit=5) == []
    [run] = store.job_hook_runs(job_id)
    assert run.done_at is not None and run.claimed_until is None


def test_a_database_made_before_hooks_gets_their_tables_without_a_new_version(sqlite_url):
    first = make_app(sqlite_url)
    version = first.store.schema_version
    with first.store.engine.begin() as conn:  # as an nbjobs without hooks left it
        conn.exec_driver_sql("DROP TABLE nbjobs_hook_runs")
        conn.exec_driver_sql("DROP TABLE nbjobs_hooks")
    first.close()
    again = make_app(sqlite_url)
    try:
        assert again.store.schema_version == version
        pair = ("failed", "alert")
        assert pair in again.store.serve_hooks([pair], forget_seconds=60.0)
    finally:
        again.close()
