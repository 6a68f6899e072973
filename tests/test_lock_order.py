"""Row locks taken in one order: a heartbeat renewing a worker's leases never deadlocks
with group commits finishing those jobs (PostgreSQL, MariaDB)."""

from __future__ import annotations

import logging
import random
import threading

import pytest
import sqlalchemy as sa

import nbjobs
from nbjobs.jobs import Status
from nbjobs.options import Options
from nbjobs.schema import jobs, jobs_by_key
from nbjobs.store.core import UNKNOWN
from tests import backends
from tests.conftest import make_app

WORKER = "w-lock-order"
JOBS = 300


def _deadlocks(app: nbjobs.App) -> int | None:
    """Deadlocks PostgreSQL detected in this test's own database (None elsewhere: the
    server's counter there is shared with every other database)."""
    if app.store.dialect.name != "postgresql":
        return None
    with app.store.engine.connect() as conn:
        conn.exec_driver_sql("SELECT pg_stat_force_next_flush()")
        return conn.execute(
            sa.text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        ).scalar_one()


@pytest.mark.parametrize("backend", backends.selected("postgres", "mysql"))
def test_heartbeats_and_group_finishes_never_deadlock(db_url, caplog):
    app = make_app(db_url)
    try:

        @app.workflow(name="noop")
        def noop(cs: nbjobs.CallState, i: int) -> int:
            return i

        runtime, store = app.runtime, app.store
        store.enqueue_group(
            [runtime.job_fields(noop, (i,), {}, Options()) for i in range(JOBS)], label=None
        )
        claimed = []
        while batch := store.claim_jobs(
            worker_id=WORKER, queue="default", workflows=["noop"], limit=64, lease_seconds=60
        ):
            claimed += batch
        assert len(claimed) == JOBS
        before = _deadlocks(app)
        held = {c.id: c.lease_token for c in claimed}
        todo = random.Random(7).sample(claimed, len(claimed))
        failing = {job.id for job in claimed[::5]}
        top_level = {job.id for job in claimed[::3]}
        lock, stop = threading.Lock(), threading.Event()
        errors: list[BaseException] = []

        def beat() -> None:
            # What a worker's monitor does, without its pause: renew every lease held,
            # listed in any order.
            shuffle = random.Random()
            while not stop.is_set():
                with lock:
                    items = list(held.items())
                shuffle.shuffle(items)
                try:
                    store.heartbeat(worker_id=WORKER, held=dict(items), lease_seconds=60)
                except Exception as exc:
                    errors.append(exc)

        def finish() -> None:
            # Worker threads finishing: their finishes share group commits.
            while True:
                with lock:
                    if not todo:
                        return
                    job = todo.pop()
                failed = job.id in failing
                accepted, _ = store.finish_and_claim(
                    job_id=job.id,
                    token=job.lease_token,
                    attempt=job.attempt,
                    status=Status.FAILED if failed else Status.SUCCEEDED,
                    error="boom" if failed else None,
                    # Top-level successes go in one statement together; those of a
                    # parent not known here run as pieces of the group, one by one.
                    parent_id=None if job.id in top_level else UNKNOWN,
                )
                assert accepted
                with lock:
                    held.pop(job.id)

        threads = [threading.Thread(target=beat) for _ in range(2)]
        threads += [threading.Thread(target=finish) for _ in range(6)]
        with caplog.at_level(logging.INFO, logger="nbjobs"):
            for thread in threads[2:] + threads[:2]:
                thread.start()
            for thread in threads[2:]:
                thread.join()
            stop.set()
            for thread in threads[:2]:
                thread.join()
        assert errors == []
        assert "deadlock" not in caplog.text.lower()
        # Nor did any group commit roll back (for whatever reason) and run piece by piece.
        assert "group commit rolled back" not in caplog.text
        if before is not None:
            assert _deadlocks(app) == before
        statuses = [store.get_job(job.id).status for job in claimed]
        assert statuses.count("failed") == len(failing)
        assert statuses.count("succeeded") == JOBS - len(failing)
    finally:
        app.close()


@pytest.mark.parametrize("backend", backends.selected("mysql"))
def test_writes_to_a_list_of_jobs_look_each_one_up_by_key(db_url):
    """MySQL and MariaDB plan ``id IN (...)`` naming a third of a small table as a scan
    of the whole primary key, which locks (waits for) every row on its way."""
    app = make_app(db_url)
    try:

        @app.workflow(name="noop")
        def noop(cs: nbjobs.CallState, i: int) -> int:
            return i

        app.store.enqueue_group(
            [app.runtime.job_fields(noop, (i,), {}, Options()) for i in range(JOBS)], label=None
        )
        with app.store.engine.connect() as conn:
            ids = list(conn.execute(sa.select(jobs.c.id).limit(JOBS // 3)).scalars())

            def access(stmt: sa.Executable) -> str:
                sql = stmt.compile(conn.engine, compile_kwargs={"literal_binds": True})
                return conn.exec_driver_sql(f"EXPLAIN {sql}").mappings().one()["type"]

            listed = jobs.c.id.in_(ids)
            renew = sa.update(jobs).where(listed).values(lease_expires_at=1.0)
            lock = sa.select(jobs.c.id).where(listed).with_for_update(skip_locked=True)
            assert access(jobs_by_key(renew)) == "range"
            assert access(jobs_by_key(lock)) == "range"
    finally:
        app.close()
