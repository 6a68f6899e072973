"""Store faults met by a run: text no database can hold, a full disk, a deleted SQLite
file, an ambiguous group commit, and the reclaim of dead local workers.

Everything here is real: SQLite files (a full disk is SQLite's own ``max_page_count``),
the PostgreSQL and MariaDB servers, worker threads and child processes.
"""

from __future__ import annotations

import logging
import os
import sys

import pytest
from sqlalchemy import event

from nbjobs import JobFailed
from tests import backends
from tests.conftest import make_app
from tests.support import wait_until

WAIT = 60


def _outcomes(handle) -> list[str]:
    return [a["outcome"] for a in handle.attempts]


# -- D5: an error text the database cannot store ----------------------------------------


def test_text_no_database_can_hold_is_stored_escaped(app):
    """A lone surrogate (a file name from ``os.fsdecode``) and a NUL in the error, the
    traceback, the progress message and the output: the job fails as it should, retries
    included, with its real error and its output, not as "worker lost"."""
    name = os.fsdecode(b"/data/report-\xff.csv")

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
    """MariaDB's ``TEXT`` holds 64 KiB: a longer error is refused by the server.  The
    job still fails with the start of its error and a note, and the output written
    with it is kept but for the one row the server refuses."""
    app = make_app(db_url)
    try:

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


def test_a_full_disk_at_a_checkpoint_is_not_the_workflows_failure(sqlite_url):
    """A checkpoint that cannot be written (disk full) is not seen by the workflow's own
    ``except Exception`` and costs no retry: the job is given back and, once there is
    room again, runs to success with the checkpoint stored."""
    app = make_app(sqlite_url, retry_backoff_seconds=0.05, retry_backoff_max_seconds=0.2)
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
