"""The ``nbjobs`` command: worker, jobs and migrate, run as real processes."""

from __future__ import annotations

import signal

import pytest

from tests import backends
from tests.conftest import make_app
from tests.support import ROOT, cli, submit_elsewhere, wait_until, worker_process

# Backends several processes can share (DuckDB is single-process by design).
MULTIPROCESS = backends.selected("sqlite", "postgres", "mysql")


def test_migrate_creates_the_schema_and_is_repeatable(db_url):
    from nbjobs.schema import SCHEMA_VERSION

    for said in (f"created at version {SCHEMA_VERSION}", f"is current (version {SCHEMA_VERSION})"):
        done = cli("migrate", "--url", db_url)
        assert done.returncode == 0, done.stderr
        assert said in done.stdout
    application = make_app(db_url)  # opens the migrated database as is
    try:
        assert application.jobs() == []
    finally:
        application.close()


def test_jobs_lists_recent_jobs(db_url):
    first = submit_elsewhere(db_url, "report", "eu")
    second = submit_elsewhere(db_url, "cleanup")
    listing = cli("jobs", "--url", db_url)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split()[:3] == ["id", "workflow", "status"]
    assert [line.split()[:3] for line in lines[1:]] == [
        [second, "cleanup", "queued"],
        [first, "report", "queued"],
    ]
    filtered = cli("jobs", "--workflow", "report", url=db_url)  # URL from NBJOBS_URL
    assert filtered.returncode == 0, filtered.stderr
    assert first in filtered.stdout and second not in filtered.stdout
    none = cli("jobs", "--url", db_url, "--status", "failed")
    assert none.stdout.splitlines()[1:] == []


@pytest.mark.parametrize("backend", MULTIPROCESS)
def test_worker_runs_jobs_and_stops_gracefully_on_sigterm(db_url, tmp_path):
    log = tmp_path / "worker.log"
    reader = make_app(db_url)
    try:
        with worker_process("tests.apps.crash_app:app", db_url, log, "-c", "2") as proc:
            wait_until(lambda: len(reader.workers()) == 1, what="the worker to register")
            [worker] = reader.workers()
            assert worker["pid"] == proc.pid and worker["concurrency"] == 2
            job = reader.job(submit_elsewhere(db_url, "echo", {"a": [1, 2]}))
            assert job.result(timeout=60) == {"echo": {"a": [1, 2]}, "pid": proc.pid}
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
        assert reader.workers() == []
    finally:
        reader.close()
    text = log.read_text()
    assert "nbjobs worker on" in text and "echo" in text
    assert "stopped" in text


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module_xyz:app", "cannot import 'no_such_module_xyz'"),
        ("tests.apps.crash_app:nothere", "has no attribute 'nothere'"),
        ("tests.apps.crash_app:record", "is a function, not an nbjobs.App"),
        ("tests.apps", "defines 0 nbjobs apps"),
        (":app", "expected module:app"),
    ],
)
def test_worker_with_a_bad_target_explains_itself(sqlite_url, target, message):
    done = cli("worker", target, url=sqlite_url, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("nbjobs: error: ")
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_bad_url_is_an_error_message_not_a_traceback(tmp_path):
    done = cli("jobs", "--url", "oracle://x@y/z")
    assert done.returncode == 2
    assert "unsupported database 'oracle'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (ROOT / "nbjobs.db").exists() or (ROOT / "nbjobs.db").stat().st_size > 0
