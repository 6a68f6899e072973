"""Poison jobs: a workflow that kills its worker process every time is failed with a
clear "worker lost" error after ``max_reclaims`` reclaims, and never loops.

Real ``nbjobs worker`` processes, restarted by the test each time one dies (as a process
supervisor would); a worker that starts reclaims the jobs of dead workers on its host.
"""

from __future__ import annotations

import pytest

import nbjobs
from tests import backends
from tests.conftest import make_app
from tests.support import submit_elsewhere, wait_until, worker_process

TIMEOUT = 90
MAX_RECLAIMS = 2  # tests/apps/poison_app.py
TARGET = "tests.apps.poison_app:app"


@pytest.mark.parametrize("backend", backends.selected("sqlite", "postgres"))
@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_a_job_that_kills_every_worker_fails_after_max_reclaims(db_url, tmp_path, how) -> None:
    before = [submit_elsewhere(db_url, "fine", i) for i in range(3)]
    poison_id = submit_elsewhere(db_url, "poison", how)
    reader = make_app(db_url)
    try:
        h = reader.job(poison_id)
        crashes = 0
        # The first attempt commits "before" and so is not held against the job (it made
        # progress); the next MAX_RECLAIMS + 1 die before any new step and count.  One
        # start per claim, plus the start that finds the job over its limit.
        lost_attempts = MAX_RECLAIMS + 2
        for start in range(lost_attempts + 1):
            log_path = tmp_path / f"worker-{start}.log"
            with worker_process(TARGET, db_url, log_path, "--concurrency", "1") as proc:
                wait_until(
                    lambda proc=proc: proc.poll() is not None or h.status == "failed",
                    TIMEOUT,
                    what="the poison job to kill the worker, or to be failed",
                )
            if h.status == "failed":
                break
            crashes += 1
            assert proc.returncode in (3, -9), log_path.read_text()
        assert h.status == "failed"
        assert crashes == lost_attempts

        with pytest.raises(nbjobs.JobFailed) as info:
            h.result(timeout=5)
        error = info.value.error
        assert error.startswith(f"worker lost {MAX_RECLAIMS + 1} times (its process died)")
        assert f"giving up after {MAX_RECLAIMS} reclaims" in error
        outcomes = [a["outcome"] for a in h.attempts]
        assert outcomes == ["lost"] * lost_attempts
        assert h.checkpoints == {"before": "fine so far"}  # the crashing step never committed
        assert [reader.job(j).result(timeout=5) for j in before] == [0, 2, 4]

        # The poison job stays failed: a live worker drains new work and never touches it.
        after = submit_elsewhere(db_url, "fine", 21)
        with worker_process(TARGET, db_url, tmp_path / "last.log", "--concurrency", "2") as proc:
            assert reader.job(after).result(timeout=TIMEOUT) == 42
            assert proc.poll() is None
        assert len(h.attempts) == lost_attempts and h.status == "failed"
    finally:
        reader.close()


@pytest.mark.no_worker
def test_a_poison_job_in_a_fan_out_fails_its_child_not_the_tree(sqlite_url, tmp_path) -> None:
    """A crashing child is failed after its reclaims; the parent's fan-in decides."""
    submitter = make_app(sqlite_url)
    try:

        @submitter.workflow(name="poison")
        def poison(cs: nbjobs.CallState, how: str) -> None: ...

        @submitter.workflow(name="fine")
        def fine(cs: nbjobs.CallState, x: int) -> None: ...

        @submitter.workflow(name="poison-parent", queue="parents")
        def parent(cs: nbjobs.CallState) -> list:
            outcomes = cs.fan_out(
                "kids",
                [fine.spec(1), poison.spec("exit"), fine.spec(2)],
                strategy=nbjobs.CollectAll(),
            )
            return [[o.status, o.value] for o in outcomes]

        h = parent.submit()
        # The parent runs in this process (it fans out and waits); the children run in
        # worker processes that the poison child keeps killing.
        submitter.start(concurrency=1, queues=["parents"])
        wait_until(lambda: len(h.children) == 3, TIMEOUT, what="the fan-out")
        submitter.stop()
        for start in range(MAX_RECLAIMS + 3):
            # One slot: a job that shares a dying worker with the poison one is lost too,
            # and its reclaims count against it as well (see docs/reliability.md).
            log_path = tmp_path / f"w{start}.log"
            with worker_process(TARGET, sqlite_url, log_path, "--concurrency", "1") as proc:
                wait_until(
                    lambda proc=proc: (
                        proc.poll() is not None
                        or all(k.status in ("succeeded", "failed") for k in h.children)
                    ),
                    TIMEOUT,
                    what="a crash or the children to finish",
                )
            if all(k.status in ("succeeded", "failed") for k in h.children):
                break
        kids = h.children
        assert [k.status for k in kids] == ["succeeded", "failed", "succeeded"]
        assert "worker lost" in kids[1].info()["error"]
        submitter.start(concurrency=1, queues=["parents"])
        assert h.result(timeout=TIMEOUT) == [
            ["succeeded", 2],
            ["failed", None],
            ["succeeded", 4],
        ]
    finally:
        submitter.close()
