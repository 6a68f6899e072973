"""Two worker processes on one SQLite file drain 2,000 jobs, each executed exactly once."""

from __future__ import annotations

import signal
import sqlite3

import pytest

from tests.conftest import make_app
from tests.support import wait_until, worker_process

JOBS = 2000


@pytest.mark.no_worker
def test_two_processes_drain_each_job_exactly_once(sqlite_url, tmp_path):
    ledger_db = tmp_path / "ledger.db"
    with sqlite3.connect(ledger_db) as conn:
        conn.execute("CREATE TABLE ledger (job_id TEXT PRIMARY KEY, pid INTEGER NOT NULL)")

    submitter = make_app(sqlite_url)
    try:

        @submitter.workflow(name="drain")
        def drain(cs, n: int) -> int:
            raise AssertionError("only the worker processes run this")

        ids = [drain.submit(n).id for n in range(JOBS)]
    finally:
        submitter.close()
    assert len(set(ids)) == JOBS

    env = {"NBJOBS_LEDGER_DB": str(ledger_db)}
    target = "tests.apps.drain_app:app"
    reader = make_app(sqlite_url)
    try:
        with (
            worker_process(target, sqlite_url, tmp_path / "w1.log", "-c", "4", env=env) as w1,
            worker_process(target, sqlite_url, tmp_path / "w2.log", "-c", "4", env=env) as w2,
        ):
            wait_until(
                lambda: (
                    reader.store.count_jobs(status="succeeded") == JOBS
                    or reader.store.count_jobs(status="failed")
                ),
                timeout=240,
                interval=0.25,
                what="the drain",
            )
            for proc in (w1, w2):
                proc.send_signal(signal.SIGTERM)
            assert w1.wait(60) == 0 and w2.wait(60) == 0
        assert reader.store.status_counts() == {"succeeded": JOBS}
    finally:
        reader.close()

    with sqlite3.connect(ledger_db) as conn:
        rows = conn.execute("SELECT job_id, pid FROM ledger").fetchall()
    assert len(rows) == JOBS
    assert {job_id for job_id, _ in rows} == set(ids)
    pids = {pid for _, pid in rows}
    assert pids == {w1.pid, w2.pid}, "both processes should have taken part"

    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:
        one = conn.execute
        assert one("SELECT count(*) FROM nbjobs_attempts").fetchone() == (JOBS,)
        assert one(
            "SELECT count(*) FROM nbjobs_attempts WHERE outcome = 'succeeded'"
        ).fetchone() == (JOBS,)
        assert one("SELECT count(*) FROM nbjobs_jobs WHERE attempts = 1").fetchone() == (JOBS,)
        assert one("SELECT count(*) FROM nbjobs_checkpoints").fetchone() == (JOBS,)
        results = one("SELECT result FROM nbjobs_jobs").fetchall()
    assert sorted(int(r) for (r,) in results) == list(range(JOBS))
