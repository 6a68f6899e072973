"""The ``nbjobs`` command, run as real processes: worker, migrate, and the operator's
commands on jobs, queues, schedules, signals and workers."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import signal
import subprocess
import sys
import time
import warnings
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import nbjobs
from tests import backends
from tests.conftest import NO_WORKER, make_app
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


# -- the operator's command line (issue #21) ------------------------------------------------
# End to end on SQLite and PostgreSQL: the test process runs a worker (``app.start``), and
# every command is a real ``python -m nbjobs.cli`` process on the same database.
OPERATED = backends.selected("sqlite", "postgres")


def _json(done: subprocess.CompletedProcess) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _when(text: str | None) -> datetime | None:
    """An ISO-8601 time from the JSON output, checked to be one (with its zone)."""
    if text is None:
        return None
    moment = datetime.fromisoformat(text)
    assert moment.utcoffset() == timedelta(0), text
    return moment


@pytest.mark.parametrize("backend", OPERATED)
def test_jobs_list_show_logs_and_retry_from_a_step(app, db_url):
    calls = []

    @app.workflow(name="etl", retries=0)
    def etl(cs: nbjobs.CallState, day: str) -> str:
        cs.checkpoint("extract", lambda: {"rows": 3})
        cs.checkpoint("transform", lambda: calls.append(day) or "shaped")
        print(f"loading {day}")
        if len(calls) == 1:
            raise RuntimeError(f"load of {day} failed")
        return "loaded"

    app.start(concurrency=1)
    bad = etl.submit("2026-12-01")
    with pytest.raises(nbjobs.JobFailed):
        bad.result(timeout=60)

    listed = _json(cli("jobs", "list", "--json", url=db_url))
    assert [j["id"] for j in listed] == [bad.id]
    [row] = listed
    assert row["status"] == "failed" and row["workflow"] == "etl"
    assert row["error"] == "RuntimeError: load of 2026-12-01 failed"
    assert "lease_token" not in row
    assert _when(row["created_at"]) <= _when(row["finished_at"])
    assert _json(cli("jobs", "--json", "--status", "failed", url=db_url)) == listed  # plain `jobs`

    shown = _json(cli("jobs", "show", bad.id, "--json", url=db_url))
    assert shown["job"]["id"] == bad.id and shown["job"]["status"] == "failed"
    [attempt] = shown["attempts"]
    assert attempt["outcome"] == "failed"
    assert 'raise RuntimeError(f"load of {day} failed")' in attempt["traceback"]
    _when(attempt["started_at"]), _when(attempt["finished_at"])
    assert [(c["name"], c["done"], c["value"]) for c in shown["checkpoints"]] == [
        ("extract", True, '{"rows":3}'),
        ("transform", True, '"shaped"'),
    ]
    assert _json(cli("jobs", "--url", db_url, "show", bad.id, "--json")) == shown  # --url first
    table = cli("jobs", "show", bad.id, url=db_url)
    assert table.returncode == 0, table.stderr
    assert "Traceback (most recent call last)" in table.stdout
    assert "extract" in table.stdout and "transform" in table.stdout

    logs = cli("jobs", "logs", bad.id, url=db_url)
    assert logs.returncode == 0 and "loading 2026-12-01" in logs.stdout
    assert _json(cli("jobs", "logs", bad.id, "--json", url=db_url))["logs"].startswith("loading")

    # Retry from a step: the steps before it are replayed, it and the later ones re-run.
    again = _json(cli("jobs", "retry", bad.id, "--from", "transform", "--json", url=db_url))
    assert again == [{"id": bad.id, "ok": True, "status": "queued again from 'transform'"}]
    assert bad.result(timeout=60) == "loaded"
    assert calls == ["2026-12-01", "2026-12-01"]
    # Retrying a succeeded job without --from is refused, naming why: exit code 1.
    refused = cli("jobs", "retry", bad.id, url=db_url)
    assert refused.returncode == 1
    assert refused.stderr.startswith("nbjobs: error: ") and "is succeeded" in refused.stderr


@pytest.mark.parametrize("backend", OPERATED)
def test_unknown_ids_are_exit_code_1(app, db_url):
    assert cli("migrate", "--url", db_url).returncode == 0
    for argv in (
        ["jobs", "show", "no-such-job"],
        ["jobs", "logs", "no-such-job"],
        ["jobs", "cancel", "no-such-job"],
        ["jobs", "retry", "no-such-job"],
        ["signal", "no-such-job", "go"],
        ["schedules", "run", "no-such-schedule"],
        ["schedules", "pause", "no-such-schedule"],
    ):
        done = cli(*argv, url=db_url)
        assert done.returncode == 1, (argv, done.stderr)
        assert done.stderr.startswith("nbjobs: error: "), argv
        assert "no-such" in done.stderr and "Traceback" not in done.stderr
    # Several ids: each is tried and reported; one unknown id makes the exit code 1.
    real = submit_elsewhere(db_url, "idle")
    mixed = cli("jobs", "cancel", real, "no-such-job", url=db_url)
    assert mixed.returncode == 1
    assert mixed.stdout.splitlines() == [
        f"{real}: cancelled",
        "no-such-job: error: no job with id 'no-such-job'",
        "1 of 2 done",
    ]
    assert mixed.stderr == "nbjobs: error: 1 of 2 job(s) failed\n"
    assert app.job(real).status == "cancelled"


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["jobs", "list", "--status", "broken"], "'broken' is not one of 'queued'"),
        (["jobs", "list", "--since", "yesterday"], "neither an age"),
        (["jobs", "purge", "--older-than", "7x"], "is not an age"),
        (["jobs", "purge"], "--older-than"),
        (["jobs", "cancel"], "give the ids of the jobs to cancel, or filters"),
        (["jobs", "cancel", "some-id", "--status", "queued"], "not both"),
        (["jobs", "--status", "failed", "retry"], "after the subcommand"),
        (["jobs", "frobnicate"], "No such command"),
        (["queues", "pause", "a,b"], "queue"),
        (["signal", "some-id", "go", "{by: ana}"], "is not valid JSON"),
    ],
)
def test_usage_errors_are_exit_code_2(sqlite_app, argv, said, capsys):
    """In-process (``main(argv)``, as the entry point calls it): one line on stderr."""
    from nbjobs.cli import main

    assert main([*argv, "--url", sqlite_app.url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nbjobs: error: ") and said in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("backend", OPERATED)
def test_signal_validates_its_json_and_wakes_the_job(app, db_url):
    @app.workflow(name="approve")
    def approve(cs: nbjobs.CallState) -> Any:
        return cs.wait_signal("approved", timeout=120)

    app.start(concurrency=1)
    job = approve.submit()
    wait_until(lambda: job.status == "waiting", what="the job to wait for its signal")
    for bad in ("{by: ana}", "{'by': 'ana'}", "[1, 2", ""):
        done = cli("signal", job.id, "approved", bad, url=db_url)
        assert done.returncode == 2, (bad, done.stderr)
        assert "is not valid JSON" in done.stderr and "Traceback" not in done.stderr
    assert job.status == "waiting" and app.store.job_signals(job.id) == []
    sent = _json(
        cli("signal", job.id, "approved", '{"by": "ana", "n": [1, 2]}', "--json", url=db_url)
    )
    assert sent == {"id": job.id, "signal": "approved", "payload": {"by": "ana", "n": [1, 2]}}
    assert job.result(timeout=60) == {"by": "ana", "n": [1, 2]}


@pytest.mark.parametrize("backend", OPERATED)
def test_queues_schedules_and_workers(app, db_url):
    @app.workflow(name="nightly-report", queue="reports")
    def report(cs: nbjobs.CallState, region: str) -> str:
        return f"report {region}"

    app.schedule("nightly", report, cron="0 3 * * *", args=("eu",))
    app.start(concurrency=1, queues=["default", "reports"])
    wait_until(lambda: app.workers(), what="the worker to register")

    [worker] = _json(cli("workers", "--json", url=db_url))
    assert worker["pid"] == os.getpid() and worker["queues"] == ["default", "reports"]
    assert _when(worker["heartbeat_at"]) >= _when(worker["started_at"])
    assert str(os.getpid()) in cli("workers", url=db_url).stdout

    # Pause a queue: the job waits; resume it: the job runs.
    assert _json(cli("queues", "pause", "reports", "--json", url=db_url))["paused"] is True
    held = report.submit("us")
    queues = {q["queue"]: q for q in _json(cli("queues", "list", "--json", url=db_url))}
    assert queues["reports"]["paused"] is True and queues["default"]["paused"] is False
    time.sleep(0.5)
    assert held.status == "queued"
    assert cli("queues", "resume", "reports", url=db_url).stdout.strip() == "queue reports resumed"
    assert held.result(timeout=60) == "report us"
    listing = cli("queues", "list", url=db_url)
    assert listing.stdout.splitlines()[0].split() == [
        "queue", "queued", "ready", "running", "waiting", "paused", "limits", "held",
    ]  # fmt: skip

    # Schedules: list, pause, resume, and run one now (a job of its own, its cron unchanged).
    [nightly] = _json(cli("schedules", "list", "--json", url=db_url))
    assert nightly["name"] == "nightly" and nightly["cron"] == "0 3 * * *"
    assert nightly["paused"] is False and _when(nightly["next_run"]).hour == 3
    assert nightly["last_run"] is None
    assert cli("schedules", "pause", "nightly", url=db_url).returncode == 0
    [paused] = _json(cli("schedules", "list", "--json", url=db_url))
    assert paused["paused"] is True and paused["next_run"] is None
    fired = _json(cli("schedules", "run", "nightly", "--json", url=db_url))
    assert app.job(fired["job"]).result(timeout=60) == "report eu"  # paused or not
    assert app.job(fired["job"]).info()["schedule"] == "nightly"
    assert cli("schedules", "resume", "nightly", url=db_url).returncode == 0
    [after] = _json(cli("schedules", "list", "--json", url=db_url))
    assert after["paused"] is False and after["next_run"] == nightly["next_run"]
    assert after["last_job_id"] == fired["job"] and after["last_status"] == "succeeded"
    table = cli("schedules", "list", url=db_url)
    assert table.stdout.splitlines()[1].split()[:3] == ["nightly", "nightly-report", "0"]


@pytest.mark.slow
@pytest.mark.timeout(900)  # 2,000 attempts: 20-50 s alone, minutes on a loaded CI machine
@pytest.mark.parametrize("backend", OPERATED)
def test_bulk_retry_of_a_thousand_failed_jobs(app, db_url):
    @app.workflow(name="flaky", retries=0)
    def flaky(cs: nbjobs.CallState, n: int) -> int:
        if cs.attempt == 1:
            raise ValueError(f"first try of {n}")
        return n

    @app.workflow(name="other", retries=0)
    def other(cs: nbjobs.CallState) -> None:
        raise ValueError("not part of the bulk retry")

    app.start(concurrency=4)
    handles = app.submit_many(flaky.spec(n) for n in range(1000)).jobs  # one transaction
    bystander = other.submit()
    wait_until(
        lambda: app.store.count_jobs(status="failed") == 1001, timeout=600, what="1001 failures"
    )
    filters = ["--status", "failed", "--workflow", "flaky", "--since", "1h"]
    # No terminal to ask on and no --yes: refused with exit code 2, nothing retried.
    refused = cli("jobs", "retry", *filters, url=db_url)
    assert refused.returncode == 2, refused.stderr
    assert "retry 1000 job(s)?" in refused.stderr and "--yes" in refused.stderr
    assert app.store.count_jobs(status="failed") == 1001

    done = _json(cli("jobs", "retry", *filters, "--yes", "--json", url=db_url, timeout=300))
    assert len(done) == 1000 and all(r["ok"] for r in done)
    assert {r["id"] for r in done} == {h.id for h in handles}
    wait_until(
        lambda: app.store.count_jobs(status="succeeded") == 1000, timeout=600, what="the reruns"
    )
    assert bystander.status == "failed"
    assert sorted(h.result(timeout=1) for h in handles) == list(range(1000))


@pytest.mark.parametrize("backend", OPERATED)
def test_bulk_cancel_and_purge(app, db_url):
    @app.workflow(name="later")
    def later(cs: nbjobs.CallState) -> None:
        return None

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", NO_WORKER, UserWarning)
        waiting = [later.options(queue="batch").submit() for _ in range(5)]
        kept = later.options(queue="other").submit()
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    none = _json(cli("jobs", "cancel", "--queue", "batch", "--since", future, "--json", url=db_url))
    assert none == []  # nothing created after the future: nothing to confirm
    done = cli("jobs", "cancel", "--queue", "batch", "--yes", url=db_url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "5 of 5 done"
    assert {h.status for h in waiting} == {"cancelled"} and kept.status == "queued"
    # Cancelled jobs finished just now: a day's age keeps them, no age purges them.
    assert _json(cli("jobs", "purge", "--older-than", "1d", "--json", url=db_url)) == {"deleted": 0}
    # A purge is a bulk action: without a terminal to ask on, it needs --yes.
    refused = cli("jobs", "purge", "--older-than", "0s", "--status", "cancelled", url=db_url)
    assert refused.returncode == 2 and "purge 5 job(s)? No terminal" in refused.stderr
    assert {h.status for h in waiting} == {"cancelled"}
    purged = cli(
        "jobs", "purge", "--older-than", "0s", "--status", "cancelled", "--yes", url=db_url
    )
    assert purged.stdout.strip() == "purged 5 job(s)"
    assert [j["id"] for j in _json(cli("jobs", "list", "--json", url=db_url))] == [kept.id]


def test_a_bulk_action_asks_at_a_terminal(sqlite_app, sqlite_url):
    @sqlite_app.workflow(name="later")
    def later(cs: nbjobs.CallState) -> None:
        return None

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", NO_WORKER, UserWarning)
        jobs = [later.submit() for _ in range(3)]
    for answer, code, status in (("n", 1, "queued"), ("y", 0, "cancelled")):
        done = _at_a_terminal(["jobs", "cancel", "--workflow", "later"], sqlite_url, answer)
        assert done[0] == code, done
        assert "cancel 3 job(s)? [y/N]" in done[1]
        assert {j.status for j in jobs} == {status}


def _at_a_terminal(argv: list[str], url: str, answer: str) -> tuple[int, str]:
    """Run the command with a pseudo-terminal as its stdin; answer its question."""
    main, other = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nbjobs.cli", *argv, "--url", url],
            cwd=ROOT, stdin=other, stdout=other, stderr=other,
        )  # fmt: skip
        os.close(other)
        seen = b""
        while b"[y/N]" not in seen:
            seen += os.read(main, 1024)
        os.write(main, answer.encode() + b"\n")
        code = proc.wait(60)
        with contextlib.suppress(OSError):  # EIO once the terminal's other side is gone
            while chunk := os.read(main, 1024):
                seen += chunk
    finally:
        os.close(main)
    return code, seen.decode(errors="replace")


def test_shell_completion_comes_from_click():
    done = subprocess.run(
        [sys.executable, "-m", "nbjobs.cli"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env={**os.environ, "COMP_WORDS": "nbjobs jobs list --status f", "COMP_CWORD": "4",
             "_NBJOBS_COMPLETE": "bash_complete"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["plain,failed"]


def test_version_and_python_dash_m_nbjobs():
    done = subprocess.run(
        [sys.executable, "-m", "nbjobs", "--version"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == f"nbjobs {nbjobs.__version__}"


# -- the App's reads under the commands, on every backend --------------------------------
def test_the_reads_under_the_commands(app):
    @app.workflow(name="wide", queue="wide-q")
    def wide(cs: nbjobs.CallState) -> None:
        cs.checkpoint("small", lambda: 7)
        cs.checkpoint("big", lambda: "x" * 5000)

    app.start(concurrency=1, queues=["wide-q"])
    done = wide.submit()
    done.result(timeout=60)
    app.pause_queue("idle-q")
    steps = done.checkpoint_info()
    assert [(c["name"], c["kind"], c["done"], c["attempt"]) for c in steps] == [
        ("small", "step", True, 1),
        ("big", "step", True, 1),
    ]
    assert steps[0]["value"] == "7" and steps[0]["value_length"] == 1
    assert len(steps[1]["value"]) < 1000 and steps[1]["value_length"] == 5002  # a preview
    assert steps[1]["started_at"] <= steps[1]["finished_at"]
    with pytest.raises(nbjobs.UnknownJob):
        app.job(done.id).engine.checkpoint_info("no-such-job")

    queues = {q["queue"]: q for q in app.queues()}
    assert queues["idle-q"]["paused"] is True and queues["wide-q"]["paused"] is False

    now = datetime.now(timezone.utc)
    rows = app.list_job_rows(
        ["succeeded", "failed"], "wide", "wide-q", None, since=now - timedelta(hours=1)
    )
    assert [r.id for r in rows] == [done.id]
    assert app.list_job_rows("queued", None, None, None) == []
    assert app.list_job_rows(None, None, None, 5, since=now + timedelta(hours=1)) == []
    with pytest.raises(nbjobs.ConfigurationError, match="unknown status 'done'"):
        app.list_job_rows(["succeeded", "done"], None, None, None)
    with pytest.raises(nbjobs.ConfigurationError, match="timezone-aware"):
        app.list_job_rows(None, None, None, None, since=datetime(2026, 1, 1))
