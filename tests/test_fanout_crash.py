"""SIGKILL a real ``nbjobs worker`` process in the middle of a fan-out, then restart it.

After the restart no child is created twice, no finished child runs again, only the
children that were running at the kill are started a second time, and the parent
completes with every outcome.  (SQLite only: the process-level behaviour is the same on
every backend, and the backend matrix covers the fan-in logic in test_fanout.py.)
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

import pytest

import nbjobs
from tests.conftest import make_app
from tests.support import wait_until, worker_process

N = 12
TARGET = "tests.apps.fanout_app:app"


def ledger_rows(path: Path, table: str) -> Counter:
    with sqlite3.connect(path) as conn:
        return Counter(who for (who,) in conn.execute(f"SELECT who FROM {table}"))


@pytest.mark.no_worker
def test_sigkill_while_half_the_children_are_done(sqlite_url: str, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"
    env = {"FANOUT_LEDGER": str(ledger), "FANOUT_CHILD_SECONDS": "0.3"}
    app = make_app(sqlite_url)  # submits and observes; runs nothing itself

    @app.workflow(name="parent")
    def parent(cs: nbjobs.CallState, n: int) -> list:
        raise AssertionError("runs in the worker process only")

    try:
        h = parent.submit(N)

        def children_by_status() -> dict[str, set[int]]:
            out: dict[str, set[int]] = {}
            for row in app.store.list_jobs(parent_id=h.id, limit=1000):
                out.setdefault(row.status, set()).add(row.fanout_index)
            return out

        with worker_process(TARGET, sqlite_url, tmp_path / "w1.log", "-c", "2", env=env) as w1:
            wait_until(
                lambda: len(children_by_status().get("succeeded", ())) >= N // 2,
                60,
                what="half the children to finish",
            )
            w1.kill()  # SIGKILL: no clean-up of any kind
            w1.wait(timeout=30)
        at_kill = children_by_status()
        done_before = at_kill.get("succeeded", set())
        running_before = at_kill.get("running", set())
        assert h.status == "waiting"
        assert len(done_before) >= N // 2

        with worker_process(TARGET, sqlite_url, tmp_path / "w2.log", "-c", "2", env=env):
            result = h.result(timeout=90)

        assert result == [["succeeded", 10 * i] for i in range(N)]
        kids = app.store.list_jobs(parent_id=h.id, limit=1000)
        assert sorted(k.fanout_index for k in kids) == list(range(N))  # none created twice
        starts = ledger_rows(ledger, "starts")
        effects = ledger_rows(ledger, "effects")
        assert effects == Counter({f"child-{i}": 1 for i in range(N)} | {"parent-prepare": 1})
        for i in done_before:  # finished before the kill: never run again
            assert starts[f"child-{i}"] == 1
            assert next(k for k in kids if k.fanout_index == i).attempts == 1
        started_twice = {int(who.split("-")[1]) for who, n in starts.items() if n > 1}
        assert started_twice <= running_before
        # An effect repeats only if the kill fell between a step's effect and its record.
        assert set(ledger_rows(ledger, "repeats")) <= {f"child-{i}" for i in running_before}
    finally:
        app.close()
