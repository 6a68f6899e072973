"""Security: a local-only dashboard, actions refused without a login when auth is on,
database passwords never shown, and pickle only for apps that opt in.

Passwords are checked against the real PostgreSQL server (trust auth: any password
connects), so every message below comes from a real connection, worker and dashboard.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import panel as pn
import psutil
import pytest
from bokeh.document import Document
from sqlalchemy import make_url

import nbjobs
from nbjobs.dialects import safe_url
from nbjobs.views import Dashboard, JobDetail
from tests import backends
from tests.conftest import make_app
from tests.support import accepts, cli, free_port, server_process, wait_until, worker_process

TIMEOUT = 60
PASSWORD = "s3cr3t-Pa55w0rd-nbjobs"


@pytest.fixture(params=["user:password@", "?password="])
def pg_url_with_password(request) -> Iterator[str]:
    """A fresh PostgreSQL database, reached by a URL that carries a password: in its
    ``user:password@`` part, or as a query parameter (libpq and PyMySQL read both)."""
    with backends.server_database("postgres") as url:
        parsed = make_url(url)
        if request.param == "?password=":
            yield parsed.update_query_dict({"password": PASSWORD}).render_as_string(
                hide_password=False
            )
        else:
            yield parsed.set(password=PASSWORD).render_as_string(hide_password=False)


@contextlib.contextmanager
def dashboard_process(url: str, log_path: Path, *args: str) -> Iterator[tuple[int, int]]:
    """``nbjobs dashboard`` in a subprocess on a free port; yields (pid, port) once up."""
    port = free_port()
    argv = [sys.executable, "-m", "nbjobs.cli", "dashboard", "--url", url, "--port", str(port),
            *args]  # fmt: skip
    with server_process(argv, log_path, accepts(port), env={"BOKEH_LOG_LEVEL": "info"}) as proc:
        yield proc.pid, port


def fetch(url: str) -> tuple[str, str]:
    """(final URL after redirects, body) of a GET."""
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.geturl(), response.read().decode("utf-8", "replace")


# -- the dashboard binds locally and refuses anonymous actions under auth -------------
def test_served_dashboard_is_local_only_and_never_shows_the_password(
    pg_url_with_password, tmp_path
) -> None:
    app = make_app(pg_url_with_password)
    try:

        @app.workflow(name="shown")
        def shown(cs: nbjobs.CallState) -> str:
            return "ok"

        assert shown.run() == "ok"
    finally:
        app.close()
    log_path = tmp_path / "dashboard.log"
    with dashboard_process(pg_url_with_password, log_path) as (pid, port):
        listening = [
            c.laddr for c in psutil.Process(pid).net_connections("inet") if c.status == "LISTEN"
        ]
        assert listening and {a.ip for a in listening} <= {"127.0.0.1"}, listening
        assert all(a.port == port for a in listening)
        _final, page = fetch(f"http://127.0.0.1:{port}/")
        assert "<html" in page.lower()
        assert PASSWORD not in page
    output = log_path.read_text()
    assert "nbjobs dashboard for postgresql+psycopg://postgres:***@" in output
    assert PASSWORD not in output


def test_served_dashboard_with_basic_auth_asks_for_a_login(sqlite_url, tmp_path) -> None:
    nbjobs.App(sqlite_url).close()  # `nbjobs dashboard` refuses a database file not there
    with dashboard_process(sqlite_url, tmp_path / "auth.log", "--basic-auth", "letmein") as (
        _pid,
        port,
    ):
        final, page = fetch(f"http://127.0.0.1:{port}/")
        assert "/login" in final
        assert "password" in page.lower()
        assert "nbj-url" not in page  # no dashboard content before a login


@pytest.mark.no_worker
def test_actions_are_refused_without_a_login_when_auth_is_configured(sqlite_app) -> None:
    app = sqlite_app

    @app.workflow(name="flaky")
    def flaky(cs: nbjobs.CallState, fail: bool) -> str:
        if fail:
            raise RuntimeError("boom")
        return "ok"

    failed = flaky.submit(True)
    with app.running(concurrency=1):
        wait_until(lambda: failed.status == "failed", TIMEOUT)
    queued = flaky.submit(False)

    guarded = Dashboard(app=app, require_auth=True, live=False)
    for view in guarded.views:
        assert view.require_auth and not view.action_allowed()
    detail = JobDetail(app=app, job_id=failed.id, require_auth=True)
    assert not detail.retry()
    assert failed.status == "failed"
    detail.job_id = queued.id
    assert not detail.cancel()
    assert queued.status == "queued"

    read_only = JobDetail(app=app, job_id=queued.id, read_only=True)
    assert not read_only.cancel() and queued.status == "queued"
    # Without auth configured (a notebook, a local serve) the same actions work.
    open_detail = JobDetail(app=app, job_id=queued.id)
    assert open_detail.cancel() and queued.status == "cancelled"


def test_the_cli_dashboard_binds_127_0_0_1_by_default() -> None:
    from nbjobs.cli import cli

    ctx = cli.commands["dashboard"].make_context("dashboard", [])
    assert ctx.params["address"] == "127.0.0.1"


# -- passwords never leak -------------------------------------------------------------
def test_password_is_absent_from_reprs_logs_errors_and_the_dashboard(
    pg_url_with_password, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    app = make_app(pg_url_with_password)
    try:

        @app.workflow(name="noisy", retries=1)
        def noisy(cs: nbjobs.CallState, fail: bool) -> str:
            cs.checkpoint("step", lambda: "x")
            if fail:
                raise RuntimeError("failing on purpose")
            return "ok"

        app.start(concurrency=2)
        good, bad = noisy.submit(False), noisy.submit(True)
        assert good.result(timeout=TIMEOUT) == "ok"
        with pytest.raises(nbjobs.JobFailed):
            bad.result(timeout=TIMEOUT)
        shown = [repr(app), str(app.store.safe_url), repr(app.store.engine), repr(good)]
        shown += [json.dumps(app.workers(), default=str), good._repr_html_()]
        dashboard = Dashboard(app=app, live=False)
        doc = Document()
        doc.add_root(pn.panel(dashboard).get_root(doc))
        rendered = json.dumps(doc.to_json(), default=str)
        assert "nbj-url" in rendered and "postgres:***@" in rendered
        shown.append(rendered)
        app.stop()
    finally:
        app.close()
    for text in shown:
        assert PASSWORD not in text
    assert "***" in shown[0] and "postgres" in shown[0]
    assert caplog.records, "the worker logged nothing at DEBUG: the check would be empty"
    for record in caplog.records:
        assert PASSWORD not in record.getMessage()


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:1/nbjobs",  # nothing listens
        f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:5432/no_such_db_nbjobs",
        f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:5432/x?sslmode=bogus",
        f"postgresql+nosuchdriver://postgres:{PASSWORD}@127.0.0.1:5432/x",
        f"postgresql+psycopg://postgres:{PASSWORD}@[::1/x",
        f"postgresql+psycopg://postgres@127.0.0.1:1/nbjobs?password={PASSWORD}",
        f"postgresql+psycopg://postgres@127.0.0.1:5432/no_such_db_nbjobs?password={PASSWORD}",
        f"postgresql+psycopg://postgres@127.0.0.1:5432/x?sslmode=bogus&password={PASSWORD}",
        f"postgresql+psycopg://postgres@127.0.0.1:5432/x?sslpassword={PASSWORD}&sslmode=bogus",
        f"postgresql+nosuchdriver://postgres@127.0.0.1:5432/x?password={PASSWORD}",
        f"postgresql+psycopg://postgres@[::1/x?password={PASSWORD}",
        f"postgresql+psycopg://postgres@127.0.0.1:bad/x?password={PASSWORD}",
        f"mysql+pymysql://nobody@127.0.0.1:3306/nbjobs?password={PASSWORD}",
        f"mysql+pymysql://nobody@127.0.0.1:3306/nbjobs?passwd={PASSWORD}",
    ],
)
def test_connection_errors_never_echo_the_password(url) -> None:
    with pytest.raises(nbjobs.ConfigurationError) as info:
        nbjobs.App(url)
    assert "***" in str(info.value)
    # Everything a traceback would print, chained driver errors included.
    printed = "".join(traceback.format_exception(info.value))
    assert "ConfigurationError" in printed and PASSWORD not in printed


def test_the_demo_never_prints_the_password(pg_url_with_password, tmp_path, monkeypatch, capsys):
    from nbjobs.demo import run_demo

    monkeypatch.chdir(tmp_path)
    assert run_demo(pg_url_with_password, port=0, show=False, jobs=1, dashboard=False) == 0
    out = capsys.readouterr().out
    assert "nbjobs jobs --url postgresql+psycopg://postgres:***@" in out
    assert PASSWORD not in out


def test_every_credential_in_a_url_query_is_masked_and_the_rest_kept() -> None:
    url = (
        "postgresql+psycopg://u:SECRET0@h/db?password=SECRET1&passwd=SECRET2"
        "&sslpassword=SECRET3&api_token=SECRET4&Client_Secret=SECRET5&sslkey=SECRET6"
        "&sslmode=require&application_name=etl"
    )
    shown = safe_url(url)
    assert "SECRET" not in shown
    assert shown.count("***") == 7
    assert "sslmode=require" in shown and "application_name=etl" in shown
    # What connects keeps them all: only the text shown is masked.
    assert make_url(url).query["api_token"] == "SECRET4"


def test_cli_output_never_shows_the_password(pg_url_with_password, tmp_path) -> None:
    listed = cli("jobs", "--url", pg_url_with_password)
    assert listed.returncode == 0, listed.stderr
    assert PASSWORD not in listed.stdout + listed.stderr
    broken = (
        make_url(pg_url_with_password)
        .set(database="no_such_db_nbjobs")
        .render_as_string(hide_password=False)
    )
    refused = cli("jobs", "--url", broken)
    assert refused.returncode == 2
    assert "***" in refused.stderr and PASSWORD not in refused.stdout + refused.stderr
    log_path = tmp_path / "worker.log"
    with worker_process("tests.apps.crash_app:app", pg_url_with_password, log_path) as proc:
        wait_until(lambda: "nbjobs worker on" in log_path.read_text(), TIMEOUT)
        proc.terminate()
        proc.wait(30)
    text = log_path.read_text()
    assert "postgres:***@" in text and PASSWORD not in text


# -- pickle is opt-in -----------------------------------------------------------------
class _Exploit:
    """Unpickling this runs code: it creates the file named by its argument."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@pytest.mark.no_worker
def test_pickle_is_opt_in_and_an_app_without_it_refuses_pickled_rows(sqlite_url, tmp_path) -> None:
    trusted = make_app(sqlite_url, serializer="pickle")
    plain = make_app(sqlite_url)
    marker = tmp_path / "code-ran"
    try:

        @plain.workflow(name="carry")
        def carry_plain(cs: nbjobs.CallState, value: object) -> str:
            return "ran"

        @trusted.workflow(name="carry")
        def carry(cs: nbjobs.CallState, value: object) -> object:
            return value

        # The JSON app refuses to store Python objects, and says how to opt in.
        with pytest.raises(nbjobs.SerializationError, match="serializer='pickle'"):
            carry_plain.submit({1, 2})
        # A row pickled by the trusted app, claimed by the plain app's worker: refused,
        # and the payload's code never runs in the plain app's process.
        h = carry.submit(_Exploit(str(marker)))
        plain.start(concurrency=1)
        with pytest.raises(nbjobs.JobFailed, match="stored with pickle") as info:
            plain.job(h.id).result(timeout=TIMEOUT)
        assert "serializer='pickle'" in info.value.error
        assert not marker.exists()
        assert len(plain.job(h.id).attempts) == 1
        plain.stop()
        # Results too: the plain app will not unpickle a trusted app's result.
        done = carry.run({"a", "set"})
        assert done == {"a", "set"}
        (latest,) = trusted.jobs(workflow="carry", status="succeeded", limit=1)
        with pytest.raises(nbjobs.SerializationError, match="stored with pickle"):
            plain.job(latest.id).result(timeout=TIMEOUT)
    finally:
        plain.close()
        trusted.close()
    assert "only trusted code writes to" in (nbjobs.App.__doc__ or "")
