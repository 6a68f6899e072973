"""Crash recovery: a real worker process killed by SIGKILL in the middle of a step."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import backends
from tests.conftest import make_app
from tests.support import submit_elsewhere, wait_until, worker_process

# Backends several processes can share (DuckDB is single-process by design).
MULTIPROCESS = backends.selected("sqlite", "postgres", "mysql")


def ledger(path: Path) -> list[tuple[str, int]]:
    """(event, pid) for every side effect the steps made, in order."""
    if not path.exists():
        return []
    rows = [line.rsplit(" ", 1) for line in path.read_text().splitlines()]
    return [(event, int(pid)) for event, pid in rows]


@pytest.mark.parametrize("backend", MULTIPROCESS)
def test_sigkill_mid_step_loses_only_the_unfinished_step(db_url, tmp_path):
    book = tmp_path / "ledger.txt"
    job_id = submit_elsewhere(db_url, "crash-pipeline", steps=4)

    first_env = {"NBJOBS_LEDGER": str(book), "NBJOBS_HANG_AT": "s3"}
    with worker_process(
        "tests.apps.crash_app:app", db_url, tmp_path / "w1.log", env=first_env
    ) as w1:
        wait_until(lambda: ("start s3", w1.pid) in ledger(book), timeout=60, what="step s3")
        w1.kill()  # SIGKILL: no cleanup, no release, no final heartbeat
        assert w1.wait(30) == -9
    events = [event for event, _ in ledger(book)]
    assert events == ["start s1", "done s1", "start s2", "done s2", "start s3"]

    reader = make_app(db_url)
    try:
        h = reader.job(job_id)
        assert h.status == "running"  # nobody knows yet
        assert h.checkpoints == {"s1": "s1-ok", "s2": "s2-ok"}

        second_env = {"NBJOBS_LEDGER": str(book)}
        with worker_process(
            "tests.apps.crash_app:app", db_url, tmp_path / "w2.log", env=second_env
        ) as w2:
            # crash_app's stale threshold is 300 s: this comes back because the pid died.
            assert h.result(timeout=60) == ["s1-ok", "s2-ok", "s3-ok", "s4-ok"]

        effects = ledger(book)
        events = [event for event, _ in effects]
        for step in ("s1", "s2"):
            assert events.count(f"start {step}") == 1 and events.count(f"done {step}") == 1
        assert events.count("start s3") == 2  # the interrupted step runs again...
        assert events.count("done s3") == 1  # ...and finishes once
        assert events.count("start s4") == events.count("done s4") == 1
        assert [pid for event, pid in effects if event.startswith("done s3")] == [w2.pid]
        # The reclaiming worker's log names the job and its workflow (one line).
        reclaimed = f"WARNING nbjobs.store.workers: job {job_id} (crash-pipeline): worker lost"
        assert reclaimed in (tmp_path / "w2.log").read_text()

        lost, done = h.attempts
        assert lost["outcome"] == "lost"
        assert f":{w1.pid}:" in lost["worker_id"]
        assert "worker lost" in lost["error"] and "process died" in lost["error"]
        assert lost["finished_at"] is not None
        assert done["outcome"] == "succeeded"
        assert f":{w2.pid}:" in done["worker_id"]
        assert h.checkpoints == {f"s{i}": f"s{i}-ok" for i in range(1, 5)}
        made_by = {r.name: r.attempt for r in reader.store.job_checkpoints(job_id)}
        assert made_by == {"s1": 1, "s2": 1, "s3": 2, "s4": 2}
        # s2 may have come too soon after s1 to write the job row (``TOUCH_SECONDS``):
        # the run that recovered the job made its count good.
        assert h.info()["steps_done"] == 4
    finally:
        reader.close()
