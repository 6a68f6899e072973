"""Store faults met by a run: text no database can hold, a full disk, a deleted SQLite
file, an ambiguous group commit, and the reclaim of dead local workers.

Everything here is real: SQLite files (a full disk is SQLite's own ``max_page_count``),
the PostgreSQL and MariaDB servers, worker threads and child processes.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import event, update

import nbjobs.store.workers as workers_store
from nbjobs import DatabaseLost, JobFailed
from nbjobs.jobs import Status
from nbjobs.schema import workers
from tests import backends
from tests.conftest import make_app
from tests.support import wait_until, worker_process

WAIT = 60


def _outcomes(handle) -> list[str]:
    return [a["outcome"] for a in handle.attempts]


# -- D5: an error text the database cannot store ----------------------------------------


def test_text_no_database_can_hold_is_stored_escaped(app, monkeypatch):
    """A lone surrogate (a file name from ``os.fsdecode``) and a NUL in the error, the
    traceback, the progress message and the output: the job fails as it should, retries
    included, with its real error and its output, not as "worker lost"."""
    name = os.fsdecode(b"/data/report-\xff.csv")
    # Kept from pytest's own log capture, whose reports a lone surrogate would break.
    monkeypatch.setattr(logging.getLogger("tests.safety"), "propagate", False)

    @app.workflow(name="surrogate", retries=1)
    def surrogate(cs):
        print("opening", name, "\x00")
        logging.getLogger("tests.safety").warning("logged %s", name)
        cs.progress(f"reading {name}\x00")
        assert app.store.get_job(cs.job_id).message == "reading /data/report-\\udcff.csv\\x00"
        raise ValueError(f"cannot read {name}\x00")

    app.start(concurrency=1)
    h = surrogate.submit()
    with pytest.raises(JobFailed) as failed:
        h.result(timeout=WAIT)
    assert failed.value.error == "ValueError: cannot read /data/report-\\udcff.csv\\x00"
    assert "cannot read /data/report-\\udcff.csv\\x00" in failed.value.traceback
    assert "AssertionError" not in failed.value.traceback
    assert _outcomes(h) == ["failed", "failed"]
    logs = h.logs()
    assert logs.count("opening /data/report-\\udcff.csv \\x00\n") == 2
    assert logs.count("WARNING tests.safety: logged /data/report-\\udcff.csv\n") == 2


@pytest.mark.parametrize("backend", backends.selected("mysql"))
def test_an_error_too_long_to_store_leaves_its_start_and_a_note(db_url):
    """A server that refuses a long text (MariaDB's ``TEXT`` did, at 64 KiB, before
    schema version 6; here triggers refuse one, as a server limit or a full disk
    would): the job still fails with the start of its error and a note, and the output
    written with it is kept but for the one row the server refuses."""
    app = make_app(db_url)
    try:
        with app.store.engine.begin() as conn:
            for table, column, event in (
                ("nbjobs_jobs", "error", "UPDATE"),
                ("nbjobs_logs", "text", "INSERT"),
            ):
                conn.exec_driver_sql(
                    f"CREATE TRIGGER refuse_long_{column} BEFORE {event} ON {table} "
                    f"FOR EACH ROW IF LENGTH(NEW.{column}) > 65535 THEN "
                    "SIGNAL SQLSTATE '22001' SET MESSAGE_TEXT = 'Data too long'; END IF"
                )

        @app.workflow(name="long-error")
        def long_error(cs):
            print("before")
            sys.stderr.write("e" * 70_000)  # one row, too long for the column
            print("after")
            raise ValueError("x" * 70_000)

        app.start(concurrency=1)
        h = long_error.submit()
        with pytest.raises(JobFailed) as failed:
            h.result(timeout=WAIT)
        error = failed.value.error
        assert error.startswith("ValueError: xxxx") and len(error) < 1200
        assert "the full error (70,012 characters) and its traceback could not be stored" in error
        assert _outcomes(h) == ["failed"]
        logs = h.logs()
        assert logs.startswith("before\nafter\n") and "e" * 100 not in logs
        assert "storing a shortened copy of its error" in logs  # logged in the job's context
    finally:
        app.close()


# -- D10: the database fails under a run --------------------------------------------------


def _fill_disk_for_new_connections(app, room_pages: int) -> dict:
    """Make the SQLite database "full" for the connections ``app`` opens from now on
    (worker threads): ``PRAGMA max_page_count`` caps the file at its size now plus
    ``room_pages`` pages, so small writes fit and a big checkpoint does not.  Setting
    ``state["full"] = False`` lifts the cap at the next checkout."""
    with app.store.engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
    state = {"full": True}

    @event.listens_for(app.store.engine, "checkout")
    def _cap(dbapi_conn, _record, _proxy) -> None:
        limit = pages + room_pages if state["full"] else 1_073_741_823
        dbapi_conn.execute(f"PRAGMA max_page_count = {limit}")

    return state


@pytest.mark.no_worker
def test_a_full_disk_at_a_checkpoint_is_not_the_workflows_failure(sqlite_url):
    """A checkpoint that cannot be written (disk full) is not seen by the workflow's own
    ``except Exception`` and costs no retry: the job is given back and, once there is
    room again, runs to success with the checkpoint stored."""
    # No artifact store: the 300 KB value must land in the database row (the disk full).
    app = make_app(
        sqlite_url, retry_backoff_seconds=0.05, retry_backoff_max_seconds=0.2, artifacts=False
    )
    swallowed: list[BaseException] = []
    try:

        @app.workflow(name="big-step", retries=0)
        def big_step(cs):
            try:
                cs.checkpoint("big", lambda: "x" * 300_000)
            except Exception as exc:  # a workflow's broad handler must not see it
                swallowed.append(exc)
            return "done"

        h = big_step.submit()
        state = _fill_disk_for_new_connections(app, room_pages=60)
        app.start(concurrency=1)
        wait_until(lambda: _outcomes(h).count("released") >= 2, timeout=WAIT, what="2 give-backs")
        assert h.status in ("queued", "running")
        state["full"] = False
        app.stop()  # the worker's threads end, and their capped connections with them
        app.start(concurrency=1)
        assert h.result(timeout=WAIT) == "done"
        assert swallowed == []
        assert h.checkpoints == {"big": "x" * 300_000}
        outcomes = _outcomes(h)
        assert set(outcomes[:-1]) == {"released"} and outcomes[-1] == "succeeded"
        assert h.info()["failures"] == 0
        released = h.attempts[0]
        assert released["error"].startswith("the database failed during the run:")
        assert "full" in released["error"]
    finally:
        app.close()


# -- D6 and newcomer F20: the start-up reclaim of dead local workers ---------------------


def _set_worker_row(app, worker_id: str, **values) -> None:
    with app.store.engine.begin() as conn:
        conn.execute(update(workers).where(workers.c.id == worker_id).values(**values))


def _free_pid() -> int:
    """A pid no process of this namespace has (one just exited and reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_worker_of_another_pid_namespace_is_not_taken_for_dead(sqlite_url, tmp_path):
    """Two containers sharing a hostname but not a PID namespace: the worker of one has a
    pid that means nothing (or another process) in the other.  A worker process starting
    beside it must leave its live job alone; the job runs once."""
    book = tmp_path / "ledger.txt"
    app = make_app(sqlite_url)
    go_on = threading.Event()

    @app.workflow(name="crash-pipeline")  # the worker process runs tests.apps.crash_app's
    def pipeline(cs, steps: int = 4):
        with open(book, "a") as f:
            f.write(f"start s1 {os.getpid()}\n")
        assert go_on.wait(WAIT)
        return ["here"]

    try:
        app.start(concurrency=1)
        h = pipeline.submit()
        wait_until(book.exists, timeout=WAIT, what="the job to start")
        # As the other container registered it: its own pid and namespace.
        _set_worker_row(
            app, app._engine.worker.id, pid=_free_pid(), pid_start="4242@0123456789abcdef"
        )
        env = {"NBJOBS_LEDGER": str(book)}
        with worker_process("tests.apps.crash_app:app", sqlite_url, tmp_path / "w.log", env=env):
            mine = app._engine.worker.id
            wait_until(
                lambda: [w for w in app.workers() if w["id"] != mine],
                timeout=WAIT,
                what="the worker process's start-up reclaim",
            )
            time.sleep(1.0)  # its reclaim runs right after it registers
            go_on.set()
            assert h.result(timeout=WAIT) == ["here"]
            assert _outcomes(h) == ["succeeded"]
        assert book.read_text() == f"start s1 {os.getpid()}\n"
    finally:
        go_on.set()
        app.close()


@pytest.mark.no_worker
def test_a_killed_worker_not_yet_reaped_by_its_parent_is_dead(sqlite_url):
    """A worker killed a moment ago is a zombie until its parent waits for it: its pid
    answers and its start time matches, but it runs nothing.  Its jobs are reclaimed at
    once, not after their lease."""
    app = make_app(sqlite_url)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        wf = app.workflow(name="orphan")(lambda cs: "resumed")
        h = wf.submit()
        app.store.register_worker(worker_id="dead-worker", queues_=["default"], concurrency=1)
        _set_worker_row(
            app, "dead-worker", pid=child.pid, pid_start=workers_store.process_identity(child.pid)
        )
        claimed = app.store.claim_jobs(
            worker_id="dead-worker", queue="default", workflows=["orphan"], limit=1,
            lease_seconds=3600,
        )  # fmt: skip
        assert [j.id for j in claimed] == [h.id]
        child.kill()  # and not waited for: a zombie
        wait_until(lambda: workers_store._proc_stat(child.pid)[0] == "Z", what="a zombie")
        app.start(concurrency=1)
        assert h.result(timeout=10) == "resumed"
        assert _outcomes(h) == ["lost", "succeeded"]
    finally:
        app.close()
        child.kill()
        child.wait()


# -- D7: the SQLite file deleted under a running App --------------------------------------


def test_deleting_the_sqlite_file_under_a_running_app_stops_it_loudly(tmp_path, caplog):
    """``rm nbjobs.db*`` while an App runs: the App notices within a second, logs it as
    an error, stops its worker (a job running then does not go on to its next step) and
    refuses every further use with ``DatabaseLost``, instead of writing on into the
    unlinked file while a new App at the path sees an empty database."""
    path = tmp_path / "nbjobs.db"
    url = f"sqlite:///{path}"
    app = make_app(url)
    steps: list[str] = []
    started = threading.Event()
    go_on = threading.Event()

    @app.workflow(name="two-steps")
    def two_steps(cs, hold: bool):
        cs.checkpoint("one", lambda: steps.append("one"))
        if hold:
            started.set()
            assert go_on.wait(WAIT)
        cs.checkpoint("two", lambda: steps.append("two"))
        return "done"

    try:
        app.start(concurrency=1)
        assert two_steps.run(False) == "done"
        steps.clear()
        h = two_steps.submit(True)
        assert started.wait(WAIT)
        for name in ("nbjobs.db", "nbjobs.db-wal", "nbjobs.db-shm"):
            (tmp_path / name).unlink(missing_ok=True)
        with caplog.at_level(logging.ERROR):
            wait_until(
                lambda: app._engine.worker is None or not app._engine.worker.alive, what="a stop"
            )
            go_on.set()
            with pytest.raises(DatabaseLost, match="was deleted while this App was using it"):
                two_steps.submit(False)
            with pytest.raises(DatabaseLost):
                h.result(timeout=1)
        assert any("nbjobs.db was deleted" in r.getMessage() for r in caplog.records)
        time.sleep(0.5)
        assert steps == ["one"]  # the run stopped at its next step
        fresh = make_app(url)  # a new App makes a new database at the path
        try:
            assert fresh.store.list_jobs(limit=10) == []
        finally:
            fresh.close()
    finally:
        go_on.set()
        app.close()


# -- D16: a group commit whose COMMIT is ambiguous ----------------------------------------


@pytest.mark.parametrize("backend", backends.selected("postgres"))
def test_a_group_commit_lost_after_its_commit_is_not_run_again(db_url):
    """The connection is lost after the server committed a group (the client never hears
    back): the pieces are not run again, they keep what the committed transaction did.
    Run again, a success would be refused (its lease was cleared) and the job the same
    transaction claimed for the worker would be held by nobody until its lease expired.

    The loss is real: the group's COMMIT is sent on the driver's connection, which is
    then closed, so SQLAlchemy's own COMMIT meets a dead connection."""
    app = make_app(db_url)
    try:
        first, _ = app.store.enqueue_job(workflow="w", input="{}")
        second, _ = app.store.enqueue_job(workflow="w", input="{}")
        (job,) = app.store.claim_jobs(
            worker_id="wk", queue="default", workflows=["w"], limit=1, lease_seconds=60
        )
        assert job.id == first
        armed = {"left": 1}

        @event.listens_for(app.store.engine, "commit")
        def _lose_after_commit(conn) -> None:
            if armed["left"]:
                armed["left"] -= 1
                driver = conn.connection.driver_connection
                driver.commit()  # the server commits the group...
                driver.close()  # ...and the client never hears back

        claim = dict(worker_id="wk", queue="default", workflows=["w"], lease_seconds=60)
        accepted, claimed = app.store.finish_and_claim(
            job_id=first, token=job.lease_token, attempt=job.attempt,
            status=Status.SUCCEEDED, result="1", claim=claim,
        )  # fmt: skip
        assert armed["left"] == 0
        assert accepted
        assert [c.id for c in claimed] == [second]
        row = app.store.get_job(second, full=True)
        assert (row.status, row.worker_id) == ("running", "wk")
        assert app.store.get_job(first).status == "succeeded"
        assert [a.outcome for a in app.store.job_attempts(first)] == ["succeeded"]
    finally:
        app.close()
