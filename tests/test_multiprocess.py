"""Real ``nbjobs worker`` processes against PostgreSQL and MariaDB.

Four worker processes drain thousands of checkpointed jobs; each step's side effect is a
row in a ledger table with a unique constraint.  One worker is SIGKILLed mid-run and
the others recover its jobs.  A PostgreSQL restart in the middle of a run does not stop
it from completing.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

import nbjobs
from nbjobs.schema import checkpoints, jobs, workers
from tests import backends, services
from tests.apps.ledger_schema import STEPS, ledger, replays, side
from tests.conftest import make_app
from tests.support import killed_worker_jobs, wait_until, worker_process

pytestmark = pytest.mark.slow

JOBS = 5000
WORKER = "tests.apps.ledger_app:app"


def _setup(url: str, count: int) -> tuple[nbjobs.App, sa.Engine]:
    """An App that submits ``count`` ledger jobs, and an engine on the side tables."""
    engine = sa.create_engine(url, pool_pre_ping=True)
    side.create_all(engine)
    app = make_app(url)

    @app.workflow(name="ledger", retries=5)
    def ledger_job(cs: nbjobs.CallState, n: int) -> int:  # runs in the worker processes
        raise AssertionError("the test process runs no jobs")

    for n in range(count):
        ledger_job.submit(n)
    return app, engine


def _count(engine: sa.Engine, stmt) -> int:
    with engine.connect() as conn:
        return conn.execute(stmt).scalar() or 0


def _succeeded(engine: sa.Engine) -> int:
    try:
        return _count(
            engine, sa.select(sa.func.count()).select_from(jobs).where(jobs.c.status == "succeeded")
        )
    except sa.exc.OperationalError:  # the server is restarting
        return 0


def _check_exactly_once(engine: sa.Engine, count: int, may_replay: set[str]) -> None:
    """Every job succeeded, every step left one ledger row, replays only where allowed."""
    with engine.connect() as conn:
        statuses = dict(
            conn.execute(sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)).all()
        )
        assert statuses == {"succeeded": count}, statuses
        assert (
            conn.execute(sa.select(sa.func.count()).select_from(ledger)).scalar() == count * STEPS
        )
        distinct = sa.select(ledger.c.job_id, ledger.c.step).distinct().subquery()
        assert (
            conn.execute(sa.select(sa.func.count()).select_from(distinct)).scalar() == count * STEPS
        )
        assert (
            conn.execute(sa.select(sa.func.count()).select_from(checkpoints)).scalar()
            == count * STEPS
        )
        replayed = set(conn.execute(sa.select(replays.c.job_id)).scalars())
    assert replayed <= may_replay, replayed - may_replay


@pytest.mark.no_worker
@pytest.mark.parametrize("backend", backends.selected("postgres", "mysql"))
def test_four_workers_drain_exactly_once_and_recover_a_killed_worker(backend, tmp_path: Path):
    with backends.server_database(backend) as url:
        app, engine = _setup(url, JOBS)
        procs = []
        try:
            logs = [tmp_path / f"worker{i}.log" for i in range(4)]
            with (
                worker_process(WORKER, url, logs[0], "-c", "4") as victim,
                worker_process(WORKER, url, logs[1], "-c", "4"),
                worker_process(WORKER, url, logs[2], "-c", "4"),
                worker_process(WORKER, url, logs[3], "-c", "4"),
            ):
                procs = [victim]
                wait_until(
                    lambda: _succeeded(engine) >= JOBS // 4, timeout=300, what="a quarter done"
                )
                victim_id = _count(
                    engine, sa.select(workers.c.id).where(workers.c.pid == victim.pid)
                )
                held_by_victim = sa.select(jobs.c.id).where(
                    jobs.c.worker_id == victim_id, jobs.c.status == "running"
                )
                # Kill it while it holds jobs (it almost always does: the queue is long).
                wait_until(
                    lambda: _count(
                        engine, sa.select(sa.func.count()).select_from(held_by_victim.subquery())
                    ),
                    timeout=60,
                    interval=0.001,
                    what="victim holds jobs",
                )
                victim.send_signal(signal.SIGKILL)
                victim.wait(timeout=30)
                with engine.connect() as conn:
                    orphans = set(conn.execute(held_by_victim).scalars())
                wait_until(
                    lambda: _succeeded(engine) >= JOBS,
                    timeout=600,
                    interval=0.2,
                    what="all jobs done",
                )
            held = killed_worker_jobs(engine, victim_id, orphans)
            _check_exactly_once(engine, JOBS, may_replay=held)
        finally:
            app.close()
            engine.dispose()
            del procs


@pytest.mark.exclusive
@pytest.mark.no_worker
@pytest.mark.parametrize("backend", backends.selected("postgres"))
def test_a_postgres_restart_mid_run_does_not_stop_the_run(backend: str, tmp_path: Path):
    count = 800
    with backends.server_database(backend) as url:
        app, engine = _setup(url, count)
        try:
            logs = [tmp_path / f"worker{i}.log" for i in range(2)]
            with (
                worker_process(WORKER, url, logs[0], "-c", "4"),
                worker_process(WORKER, url, logs[1], "-c", "4"),
            ):
                wait_until(
                    lambda: _succeeded(engine) >= count // 5, timeout=300, what="a fifth done"
                )
                subprocess.run(
                    [
                        "pg_ctlcluster",
                        "--skip-systemctl-redirect",
                        services.postgres_version(),
                        "main",
                        "restart",
                    ],
                    check=True,
                    capture_output=True,
                    timeout=120,
                )
                restarted_at = _succeeded(engine)
                assert restarted_at < count, "the run finished before the restart; nothing tested"
                wait_until(
                    lambda: _succeeded(engine) >= count,
                    timeout=300,
                    interval=0.2,
                    what="all jobs done",
                )
                log_text = "".join(p.read_text() for p in logs)
            # The workers noticed, backed off and reconnected.
            assert "retrying in" in log_text or "monitor pass failed" in log_text, log_text[-3000:]
            _check_exactly_once(engine, count, may_replay=set(_all_job_ids(engine)))
        finally:
            app.close()
            engine.dispose()


def _all_job_ids(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(jobs.c.id)).scalars())
