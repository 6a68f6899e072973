"""A new user's first day (issue 16, section 3): names, silent stalls, worker logs,
Ctrl-C, the CLI and the contract fixes, with real databases, threads and processes."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import nbjobs
from nbjobs import App, ConfigurationError
from tests import backends
from tests.conftest import make_app
from tests.support import ROOT, cli, wait_until, worker_process

# Backends several processes can share (DuckDB is single-process by design).
MULTIPROCESS = backends.selected("sqlite", "postgres", "mysql")


def _module(tmp_path: Path, name: str, source: str):
    """Import ``source`` as the real module ``name`` (a file on a path entry)."""
    import importlib

    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    if str(tmp_path) not in sys.path:
        sys.path.insert(0, str(tmp_path))
    sys.modules.pop(name, None)
    return importlib.import_module(name)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NBJOBS_URL"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


# -- F1: a name per definition -------------------------------------------------------------
def test_two_process_functions_in_two_modules_keep_their_own_code(app, tmp_path):
    sales = _module(tmp_path, "fd_sales", "def process(cs, x):\n    return f'sales {x}'\n")
    marketing = _module(
        tmp_path, "fd_marketing", "def process(cs, x):\n    return f'marketing {x}'\n"
    )
    sales_process = app.workflow(sales.process)
    marketing_process = app.workflow(marketing.process)
    assert (sales_process.name, marketing_process.name) == (
        "fd_sales.process",
        "fd_marketing.process",
    )
    app.start(concurrency=2)
    assert sales_process.submit(1).result(timeout=30) == "sales 1"
    assert marketing_process.submit(2).result(timeout=30) == "marketing 2"


def test_lambdas_need_a_name_and_then_each_keeps_its_own(app):
    with pytest.raises(ConfigurationError, match="lambda workflow needs an explicit name"):
        app.workflow(lambda cs, x: x * x)
    square = app.workflow(lambda cs, x: x * x, name="square")
    cube = app.workflow(lambda cs, x: x**3, name="cube")
    app.start(concurrency=2)
    assert square.submit(3).result(timeout=30) == 9
    assert cube.submit(3).result(timeout=30) == 27


def test_a_different_function_under_a_taken_name_is_refused(app):
    @app.workflow(name="report")
    def daily(cs: nbjobs.CallState) -> str:
        return "daily"

    with pytest.raises(ConfigurationError, match="workflow name 'report' is taken by"):

        @app.workflow(name="report")
        def weekly(cs: nbjobs.CallState) -> str:
            return "weekly"

    app.start(concurrency=1)
    assert app.get_workflow("report").submit().result(timeout=30) == "daily"


def test_a_rerun_notebook_cell_still_redefines_its_workflow(app):
    cell = textwrap.dedent(
        """
        @app.workflow
        def summarise(cs, x):
            return VERSION + str(x)
        """
    )
    namespace = {"__name__": "__main__", "app": app, "VERSION": "v1:"}
    exec(compile(cell, "<cell 1>", "exec"), namespace)
    first = namespace["summarise"]
    assert first.name == "summarise"  # a notebook keeps the short name
    namespace["VERSION"] = "v2:"
    exec(compile(cell.replace("str(x)", "str(x * 10)"), "<cell 1>", "exec"), namespace)
    assert app.workflow_names() == ["summarise"]
    app.start(concurrency=1)
    assert namespace["summarise"].submit(4).result(timeout=30) == "v2:40"


def test_jobs_under_the_bare_name_run_when_it_is_unambiguous(app, tmp_path):
    """Compatibility: databases of older nbjobs (and a script's ``__main__``) hold jobs
    under the bare qualname; a worker runs them when one workflow has that qualname."""
    one = _module(tmp_path, "fd_one", "def process(cs, x):\n    return f'one {x}'\n")
    two = _module(tmp_path, "fd_two", "def process(cs, x):\n    return f'two {x}'\n")
    old_job, _ = app.store.enqueue_job(workflow="process", input='{"args": [5], "kwargs": {}}')
    app.workflow(one.process)
    app.start(concurrency=1)
    assert app.job(old_job).result(timeout=30) == "one 5"
    app.stop()
    app.workflow(two.process)  # now "process" names two workflows: no guessing
    ambiguous, _ = app.store.enqueue_job(workflow="process", input='{"args": [6], "kwargs": {}}')
    app.start(concurrency=1)
    assert app.get_workflow("fd_two.process").submit(7).result(timeout=30) == "two 7"
    assert app.job(ambiguous).status == "queued"


@pytest.mark.parametrize("backend", MULTIPROCESS)
def test_a_script_with_a_main_guard_and_a_worker_that_imports_it(db_url, tmp_path):
    """The review's m3 case: the script submits under its ``__main__`` names, and
    ``nbjobs worker script:app`` (module-qualified names) runs the jobs."""
    (tmp_path / "fd_script.py").write_text(
        textwrap.dedent(
            """
            import os
            import nbjobs

            app = nbjobs.App(os.environ["NBJOBS_URL"], poll_seconds=0.1)

            @app.workflow
            def double(cs, x):
                return 2 * x

            if __name__ == "__main__":
                print("result", double.submit(21).result(timeout=60))
            """
        )
    )
    log = tmp_path / "worker.log"
    env = _env(NBJOBS_URL=db_url, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    with open(log, "ab") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "nbjobs.cli", "worker", "fd_script:app"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: "nbjobs worker on" in log.read_text(), timeout=60, what="the worker")
        done = subprocess.run(
            [sys.executable, "fd_script.py"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr + log.read_text()
        assert "result 42" in done.stdout
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)


# -- F2: nothing runs the job -------------------------------------------------------------
def test_a_submit_no_live_worker_can_run_warns_once(app, caplog):
    @app.workflow(name="lonely")
    def lonely(cs: nbjobs.CallState) -> int:
        return 1

    with pytest.warns(UserWarning, match="no live worker is running") as seen:
        h = lonely.submit()
    assert "app.start()" in str(seen[0].message) and "nbjobs worker" in str(seen[0].message)
    assert any("waits in queue 'default'" in r.getMessage() for r in caplog.records)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lonely.submit()  # once per workflow and queue
    with pytest.raises(nbjobs.ResultTimeout, match="no live worker is running") as info:
        h.result(timeout=0.2)
    assert "it is queued" in str(info.value) and "app.start()" in str(info.value)
    app.start(concurrency=1)
    assert h.result(timeout=30) == 1


@pytest.mark.parametrize("backend", MULTIPROCESS)
def test_the_warning_says_which_of_queue_and_workflow_no_worker_serves(db_url, tmp_path):
    submitter = make_app(db_url)
    log = tmp_path / "worker.log"
    try:
        with worker_process("tests.apps.crash_app:app", db_url, log, "-q", "default"):
            wait_until(lambda: submitter.workers(), what="the worker to register")

            @submitter.workflow(name="adhoc")
            def adhoc(cs: nbjobs.CallState) -> None:
                pass

            with pytest.warns(UserWarning, match="none has registered workflow 'adhoc'"):
                h = adhoc.submit()
            with pytest.raises(nbjobs.ResultTimeout, match="registered workflow 'adhoc'"):
                h.result(timeout=0.1)
            with pytest.warns(UserWarning, match="no live worker serves queue 'io'"):
                adhoc.options(queue="io").submit()
            echo = submitter.workflow(lambda cs, x: x, name="echo")
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a live worker runs echo: no warning
                assert echo.submit(1).result(timeout=60)["echo"] == 1
    finally:
        submitter.close()


def test_result_without_timeout_says_why_it_waits(app, caplog, monkeypatch):
    import nbjobs.runtime.engine

    monkeypatch.setattr(nbjobs.runtime.engine, "RESULT_HINT_SECONDS", 0.3)

    @app.workflow(name="unwatched")
    def unwatched(cs: nbjobs.CallState) -> str:
        return "done"

    with pytest.warns(UserWarning):
        h = unwatched.submit()
    outcome: list = []
    waiter = threading.Thread(target=lambda: outcome.append(h.result()), daemon=True)
    with caplog.at_level(logging.WARNING, logger="nbjobs"):
        waiter.start()
        wait_until(
            lambda: any("still waiting for job" in r.getMessage() for r in caplog.records),
            what="the hint",
        )
    app.start(concurrency=1)
    waiter.join(30)
    assert outcome == ["done"]


def test_start_serves_the_queues_of_registered_workflows(app, caplog):
    @app.workflow(queue="io")
    def fetch(cs: nbjobs.CallState) -> str:
        return "fetched"

    with caplog.at_level(logging.INFO, logger="nbjobs"):
        app.start(concurrency=2)
    assert any("queues default, io" in r.getMessage() for r in caplog.records)
    assert fetch.submit().result(timeout=30) == "fetched"

    @app.workflow(queue="late")  # a later cell: its queue is served too
    def later(cs: nbjobs.CallState) -> str:
        return "late"

    assert later.submit().result(timeout=30) == "late"
    [worker] = app.workers()
    assert worker["queues"] == ["default", "io", "late"]


def test_a_worker_names_the_queued_jobs_it_cannot_run_at_start(app, caplog):
    for _ in range(2):
        app.store.enqueue_job(workflow="someone_elses", input='{"args": [], "kwargs": {}}')
    with caplog.at_level(logging.WARNING, logger="nbjobs"):
        app.start(concurrency=1)
    assert any(
        "2 queued jobs of workflows this worker does not know: someone_elses (2)" in r.getMessage()
        for r in caplog.records
    )


def test_the_jobs_table_marks_jobs_no_worker_will_run(sqlite_app):
    from nbjobs.views.jobs import JobsTable

    @sqlite_app.workflow(name="nobody")
    def nobody(cs: nbjobs.CallState) -> None:
        pass

    with pytest.warns(UserWarning):
        nobody.submit()
    table = JobsTable(app=sqlite_app)
    table.load()
    [status] = list(table.table.value["status"])
    assert "no worker" in status and "no live worker is running" in status
    sqlite_app.start(concurrency=1, queues=["elsewhere"])
    table._runners_at = float("-inf")  # read the registry now, not in 5 s
    table.load()
    [status] = list(table.table.value["status"])
    assert "no live worker serves queue &#x27;default&#x27;" in status


# -- F3: the worker's log -----------------------------------------------------------------
@pytest.mark.parametrize("backend", MULTIPROCESS)
def test_a_worker_process_logs_failures_retries_and_replays(db_url, tmp_path):
    log = tmp_path / "worker.log"
    reader = make_app(db_url)
    try:
        # --log-level after the subcommand, as the deployment guide shows it.
        with worker_process(
            "tests.apps.first_day_app:app", db_url, log, "--log-level", "INFO"
        ) as proc:
            wait_until(lambda: reader.workers(), timeout=60, what="the worker to register")
            flaky, drift = (
                reader.store.enqueue_job(
                    workflow=f"tests.apps.first_day_app.{name}",
                    input='{"args": [], "kwargs": {}}',
                    max_retries=1,
                )[0]
                for name in ("flaky", "drift")
            )
            with pytest.raises(nbjobs.JobFailed, match="disk full"):
                reader.job(flaky).result(timeout=60)
            assert reader.job(drift).result(timeout=60) == 10
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
    finally:
        reader.close()
    lines = log.read_text().splitlines()

    def line(*parts: str) -> str:
        found = [x for x in lines if all(p in x for p in parts)]
        assert len(found) == 1, (parts, lines)
        return found[0]

    retry = line(flaky, "retrying in")
    assert "WARNING" in retry and "tests.apps.first_day_app.flaky" in retry
    assert "RuntimeError: disk full" in retry and "retry 1 of 1" in retry
    final = line(flaky, "failed for good")
    assert "ERROR" in final and "after 2 attempts: RuntimeError: disk full" in final
    assert "ConnectionError: fail once" in line(drift, "retrying in")
    assert "'scaled' with different arguments" in line(drift, "replays checkpoint")


# -- F6: Ctrl-C in a script ----------------------------------------------------------------
def test_ctrl_c_in_a_script_waits_visibly_and_a_second_gives_the_job_back(tmp_path):
    url = f"sqlite:///{tmp_path / 'script.db'}"
    marker = tmp_path / "started"
    (tmp_path / "fd_long.py").write_text(
        textwrap.dedent(
            f"""
            import pathlib, time
            import nbjobs

            app = nbjobs.App({url!r}, stale_after_seconds=300)

            def long_step():
                pathlib.Path({str(marker)!r}).touch()
                time.sleep(300)

            @app.workflow
            def long(cs):
                cs.checkpoint("long", long_step)

            if __name__ == "__main__":
                app.start()
                long.submit().result()
            """
        )
    )
    err = tmp_path / "stderr.txt"
    with open(err, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "fd_long.py"], cwd=tmp_path, env=_env(), stderr=stderr
        )
    try:
        wait_until(marker.exists, timeout=60, what="the step to start")
        proc.send_signal(signal.SIGINT)
        wait_until(
            lambda: "waiting up to 30 s for 1 running job" in err.read_text(),
            timeout=30,
            what="the exit hook's message",
        )
        assert "Ctrl-C again to give it back to the queue" in err.read_text()
        time.sleep(0.5)
        assert proc.poll() is None  # the grace is honoured: it waits for the job
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)  # exits at once, although the step still sleeps
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    reader = App(url)
    try:
        [job] = reader.jobs()
        assert job.status == "queued"  # released, not left running
    finally:
        reader.close()


def test_a_script_that_ends_waits_for_its_running_job_within_the_grace(tmp_path):
    url = f"sqlite:///{tmp_path / 'script.db'}"
    (tmp_path / "fd_short.py").write_text(
        textwrap.dedent(
            f"""
            import time
            import nbjobs

            app = nbjobs.App({url!r})

            @app.workflow
            def short(cs):
                return cs.checkpoint("nap", lambda: time.sleep(1.5) or "rested")

            if __name__ == "__main__":
                app.start()
                h = short.submit()
                while h.status == "queued":
                    time.sleep(0.01)
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "fd_short.py"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "waiting up to 30 s for 1 running job" in done.stderr
    reader = App(url)
    try:
        [job] = reader.jobs()
        assert job.result(timeout=1) == "rested"
    finally:
        reader.close()


# -- contract fixes -----------------------------------------------------------------------
def test_duplicate_checkpoint_fails_at_once_without_retries(app):
    @app.workflow(name="twice", retries=3)
    def twice(cs: nbjobs.CallState) -> None:
        cs.checkpoint("same", lambda: 1)
        cs.checkpoint("same", lambda: 2)

    app.start(concurrency=1)
    h = twice.submit()
    with pytest.raises(nbjobs.JobFailed, match="DuplicateCheckpoint"):
        h.result(timeout=30)
    assert [a["outcome"] for a in h.attempts] == ["failed"]


def test_a_step_may_take_keyword_arguments_named_name_and_fn(app):
    def greet(name: str, fn: str) -> str:
        return f"{name}/{fn}"

    @app.workflow(name="kwargs")
    def kwargs(cs: nbjobs.CallState) -> str:
        return cs.checkpoint("greet", greet, name="ada", fn="lovelace")

    @app.workflow(name="async-kwargs")
    async def async_kwargs(cs: nbjobs.CallState) -> str:
        return await cs.checkpoint("greet", greet, name="alan", fn="turing")

    app.start(concurrency=2)
    assert kwargs.submit().result(timeout=30) == "ada/lovelace"
    assert async_kwargs.submit().result(timeout=30) == "alan/turing"


def test_result_raises_job_timeout_for_a_timed_out_job(app):
    release = threading.Event()

    @app.workflow(name="slow", timeout=0.3)
    def slow(cs: nbjobs.CallState) -> None:
        release.wait(30)
        cs.checkpoint("after", lambda: 1)

    app.start(concurrency=1)
    h = slow.submit()
    try:
        with pytest.raises(nbjobs.JobTimeout, match=r"timed out after 0\.3 s") as info:
            h.result(timeout=30)
    finally:
        release.set()
    assert isinstance(info.value, nbjobs.JobFailed) and info.value.job_id == h.id


def test_result_raises_worker_lost_for_a_job_given_up_after_reclaims(db_url):
    app = make_app(db_url, max_reclaims=0)
    try:

        @app.workflow(name="doomed")
        def doomed(cs: nbjobs.CallState) -> None:
            pass

        job_id, _ = app.store.enqueue_job(workflow="doomed", input='{"args": [], "kwargs": {}}')
        # Claimed by a worker that then vanished: its lease has run out.
        assert app.store.claim_job(job_id, worker_id="gone:1:x", lease_seconds=-1) is not None
        assert app.store.reap_expired(max_reclaims=0) == 1
        with pytest.raises(nbjobs.WorkerLost, match="giving up after 0 reclaims"):
            app.job(job_id).result(timeout=5)
    finally:
        app.close()


def test_start_with_other_settings_on_a_running_app_warns(app):
    app.start(concurrency=2)
    with pytest.warns(UserWarning, match=r"running already \(concurrency 2"):
        app.start(concurrency=8)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        app.start(concurrency=2)  # the same: nothing to say


def test_a_workflow_without_the_call_state_is_refused_at_decoration(app):
    with pytest.raises(ConfigurationError, match=r"first parameter, e.g. def nocs\(cs, ...\)"):

        @app.workflow
        def nocs() -> int:
            return 1

    with pytest.raises(ConfigurationError, match="first parameter"):
        app.workflow(lambda *, x: x, name="kwonly")
    assert app.workflow_names() == []


def test_a_step_given_its_result_instead_of_the_function_says_so(app):
    @app.workflow(name="eager")
    def eager(cs: nbjobs.CallState) -> int:
        return cs.checkpoint("fetch", len("abc"))

    app.start(concurrency=1)
    with pytest.raises(nbjobs.JobFailed, match="pass the function and its arguments, not its"):
        eager.submit().result(timeout=30)


# -- the CLI -------------------------------------------------------------------------------
def test_cli_version_and_help_show_defaults_without_rst():
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"nbjobs {nbjobs.__version__}"
    top = cli("--help")
    assert "``" not in top.stdout and "The nbjobs command" in top.stdout
    worker = cli("worker", "--help")
    shown = " ".join(worker.stdout.split())  # click wraps help text to the terminal
    assert "[default: 4]" in shown and "[default: 30.0]" in shown
    assert "--log-level" in worker.stdout and "--url" in worker.stdout


def test_cli_read_only_commands_refuse_a_missing_sqlite_file(tmp_path):
    typo = tmp_path / "typo.db"
    for command in ("jobs", "dashboard"):
        done = cli(command, "--url", f"sqlite:///{typo}", timeout=60)
        assert done.returncode == 2, done.stderr
        assert f"no nbjobs database at {typo}" in done.stderr
        assert not typo.exists()
    relative = cli("jobs", "--url", "sqlite:///no-such-file-here.db")
    assert relative.returncode == 2 and str(ROOT / "no-such-file-here.db") in relative.stderr
    assert not (ROOT / "no-such-file-here.db").exists()


def test_cli_jobs_shows_control_characters_escaped(sqlite_url):
    hostile = "report\x1b]0;pwned\x07\x1b[2J"
    app = make_app(sqlite_url)
    try:

        @app.workflow(name=hostile)
        def report(cs: nbjobs.CallState) -> None:
            raise RuntimeError("boom \x1b]52;c;ZWNobyBoaQ==\x07")

        app.start(concurrency=1)
        with pytest.raises(nbjobs.JobFailed):
            report.submit().result(timeout=30)
    finally:
        app.close()
    listing = cli("jobs", "--url", sqlite_url)
    assert listing.returncode == 0, listing.stderr
    assert "\x1b" not in listing.stdout and "\x07" not in listing.stdout
    assert "report\\x1b]0;pwned\\x07" in listing.stdout
    assert "boom \\x1b]52;c;" in listing.stdout


def test_cli_worker_refuses_a_file_path_and_suggests_the_module():
    done = cli("worker", "pipelines/daily_jobs.py")
    assert done.returncode == 2
    assert "give the module instead, as pipelines.daily_jobs:app" in done.stderr


def test_cli_worker_url_option(sqlite_url, tmp_path):
    log = tmp_path / "worker.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nbjobs.cli", "worker", "tests.apps.first_day_app:app",
             "--url", sqlite_url],
            cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    reader = make_app(sqlite_url)
    try:
        wait_until(lambda: reader.workers(), timeout=60, what="the worker on --url")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        reader.close()
    # A module that hard-codes its URL cannot be pointed elsewhere: say so, not ignore it.
    (tmp_path / "fd_hard.py").write_text("import nbjobs\napp = nbjobs.App('sqlite:///hard.db')\n")
    done = subprocess.run(
        [sys.executable, "-m", "nbjobs.cli", "worker", "fd_hard:app", "--url", sqlite_url],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "fd_hard:app makes its App with the URL sqlite:///hard.db, not --url" in done.stderr


def test_cli_migrate_says_from_which_version(sqlite_url):
    from sqlalchemy import create_engine, text

    from nbjobs.schema import SCHEMA_VERSION

    assert cli("migrate", "--url", sqlite_url).returncode == 0
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE nbjobs_meta SET value = '2' WHERE key = 'schema_version'"))
    engine.dispose()
    done = cli("migrate", "--url", sqlite_url)
    assert done.returncode == 0, done.stderr
    assert f"migrated from version 2 to {SCHEMA_VERSION}" in done.stdout


def test_a_mysql_url_without_driver_suggests_the_mysql_extra():
    done = cli("jobs", "--url", "mysql://root@127.0.0.1:1/nbjobs")
    assert done.returncode == 2
    assert "mysql+pymysql://" in done.stderr and "nbjobs[mysql]" in done.stderr
    assert "nbjobs[postgres]" not in done.stderr


@pytest.mark.slow
def test_cli_worker_says_when_the_import_blocks(tmp_path):
    """A module that submits and waits at import (no ``__main__`` guard) blocks the
    worker's import: after IMPORT_WARN_SECONDS the worker says what is probably wrong."""
    from nbjobs.cli import IMPORT_WARN_SECONDS

    (tmp_path / "fd_noguard.py").write_text(
        f"import time\ntime.sleep({IMPORT_WARN_SECONDS + 3})\n"
        "import nbjobs\napp = nbjobs.App('sqlite:///noguard.db')\n"
    )
    log = tmp_path / "worker.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nbjobs.cli", "worker", "fd_noguard:app"],
            cwd=tmp_path, env=_env(), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until(
            lambda: "has run for" in log.read_text(),
            timeout=IMPORT_WARN_SECONDS + 30,
            what="the slow-import warning",
        )
        assert 'if __name__ == "__main__":' in log.read_text()
    finally:
        proc.kill()
        proc.wait(30)
