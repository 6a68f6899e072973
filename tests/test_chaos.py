"""The chaos harness as part of the suite: 60 s of SIGKILLs on SQLite (and PostgreSQL).

Both runs go at once, each in its own ``python -m benchmarks.chaos`` process with its own
worker fleet, so the suite pays about one minute for them.  Afterwards the invariant
checker is shown to catch what it claims to: a forged re-execution of a committed step
and a forged orphan are reported as violations.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import insert

import nbjobs
from benchmarks.chaos.invariants import check_fanouts, check_limit, check_rate, check_steps, load
from benchmarks.chaos.ledger import CAPPED_LIMIT, RATED_COUNT, RATED_QUEUE, bodies, duplicates
from nbjobs.schema import attempts, jobs
from tests import backends
from tests.support import ROOT

DURATION = 60
INVARIANTS = (
    "committed steps never re-executed",
    "no job stuck",
    "expected outcomes",
    "fan-out counts match their children",
    "each schedule tick fired once",
    "each signal consumed once",
    "each timer fired once",
    "idempotency keys deduplicated",
    "no worker slot leaked",
    "no limit ever exceeded",
    "no rate window ever exceeded",
)


def start(url: str, seed: int, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "benchmarks.chaos", "--url", url, "--seed", str(seed),
             "--duration", str(DURATION), "--workers", "3", "--logdir", str(log.parent / log.stem)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


@pytest.mark.slow
def test_chaos_runs_keep_every_invariant(tmp_path) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'chaos.db'}"
    with contextlib.ExitStack() as stack:
        runs = {"sqlite": (sqlite_url, start(sqlite_url, 11, tmp_path / "sqlite.log"))}
        if "postgres" in backends.selected("postgres"):
            pg_url = stack.enter_context(backends.server_database("postgres"))
            runs["postgres"] = (pg_url, start(pg_url, 12, tmp_path / "postgres.log"))
        for name, (_url, proc) in runs.items():
            code = proc.wait(DURATION + 240)
            output = (tmp_path / f"{name}.log").read_text()
            print(f"--- chaos on {name} ---\n{output}")
            assert code == 0 and "CHAOS PASSED" in output, output
            for invariant in INVARIANTS:
                line = next(x for x in output.splitlines() if x.startswith(invariant))
                assert line.rstrip().endswith("OK"), line
            assert "SIGKILLs 0" not in output

    # The checker is not blind: forge a re-run of a committed step, an orphan child, one
    # body too many under the concurrency limit and one start too many in a rate window.
    app = nbjobs.App(sqlite_url)
    try:
        snap = load(app)
        exact, _ = check_steps(snap)
        fanouts = check_fanouts(snap)
        assert exact.ok and exact.checked > 50 and fanouts.ok and fanouts.checked > 5
        cp = next(c for c in snap.checkpoints if c.kind == "step" and c.name.startswith("fx-"))
        parent = next(j for j in snap.jobs.values() if j.parent_id is None)
        with app.store._write() as conn:
            conn.execute(
                insert(duplicates).values(
                    job_id=cp.job_id, step=cp.name, attempt=cp.attempt + 1, pid=1, at=0.0
                )
            )
            conn.execute(
                insert(jobs).values(
                    id="forged-orphan", workflow="chaos.leaf", queue="default",
                    status="succeeded", priority=0, attempts=1, failures=0, max_retries=0,
                    reclaims=0, cancel_requested=False, steps_done=0, created_at=0.0,
                    updated_at=0.0, parent_id="no-such-parent", root_id=parent.id,
                    fanout="kids", fanout_index=0,
                )
            )  # fmt: skip
        forged = load(app)
        exact, _ = check_steps(forged)
        assert exact.violations == 1 and "ran again in attempt" in exact.examples[0]
        assert not check_fanouts(forged).ok

        assert check_limit(app).ok and check_rate(app).ok
        assert check_limit(app).checked > 10 and check_rate(app).checked > 10
        with app.store._write() as conn:
            conn.execute(
                insert(bodies),
                [
                    dict(job_id=f"forged-body-{i}", attempt=1, queue="chaos-capped", pid=1,
                         started=10.0 + i * 0.01, ended=11.0)
                    for i in range(CAPPED_LIMIT + 1)
                ],
            )  # fmt: skip
            conn.execute(
                insert(jobs).values(
                    id="forged-rated", workflow="chaos.rated", queue=RATED_QUEUE,
                    status="succeeded", priority=0, attempts=RATED_COUNT + 1, failures=0,
                    max_retries=0, reclaims=0, cancel_requested=False, steps_done=0,
                    created_at=0.0, updated_at=0.0,
                )
            )  # fmt: skip
            conn.execute(
                insert(attempts),
                [
                    dict(job_id="forged-rated", attempt=n, outcome="lost",
                         started_at=20.0 + n * 0.01, finished_at=21.0)
                    for n in range(RATED_COUNT + 1)
                ],
            )  # fmt: skip
        too_many = check_limit(app)
        assert too_many.violations == 1 and "3 bodies of 'chaos-capped'" in too_many.examples[0]
        too_fast = check_rate(app)
        assert too_fast.violations == 1 and "6 starts of 'chaos-rated'" in too_fast.examples[0]
    finally:
        app.close()
