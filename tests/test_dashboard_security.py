"""The served dashboard against hostile names, remote clients and leaked credentials.

Every check runs on real parts: a real ``nbjobs dashboard`` or ``panel serve`` process
on a free port, Debian's Chromium through Playwright, Bokeh's own websocket client, and
real databases.  A "non-loopback client" is this machine's own non-loopback address
(a connection to it carries that address as its source), so the server sees a peer
that is not 127.0.0.1 without any network namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import ipaddress
import json
import logging
import re
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.cookiejar import CookieJar
from pathlib import Path

import panel as pn
import psutil
import pytest
from bokeh.application import Application
from bokeh.client import pull_session
from bokeh.document import Document
from bokeh.server.contexts import ApplicationContext
from bokeh.util.token import generate_jwt_token, generate_session_id, get_token_payload
from panel.io.state import set_curdoc
from tornado.web import decode_signed_value

import nbjobs
from nbjobs.views import Dashboard, JobDetail, Schedules, Throughput
from nbjobs.views.access import (
    ALLOW_REMOTE_ENV,
    TOKEN_OPTIONS,
    USER_KEY,
    LoginName,
    is_loopback,
    session_user,
)
from tests.conftest import make_app
from tests.support import CHROMIUM_ARGS, ROOT, free_port, server_process
from tests.test_dashboard_browser import SHOTS

HOSTILE = "<img src=x onerror=window.nbjxss=document.domain>"
PASSWORD = "letmein-Xy7"
TOKEN = "test-token-Zq81"  # nbjobs dashboard's access token in these tests
TIMEOUT = 60


# -- helpers ----------------------------------------------------------------------------
@contextlib.contextmanager
def server(argv: list[str], port: int, log_path: Path, **env: str) -> Iterator[int]:
    """A dashboard server process (``argv``); yields its pid once ``port`` accepts."""
    env = {"BOKEH_LOG_LEVEL": "info", "NBJOBS_DASHBOARD_TOKEN": TOKEN, **env}
    ready = lambda proc: listening(proc.pid, port)  # noqa: E731
    with server_process(argv, log_path, ready, env=env) as proc:
        yield proc.pid


def listening(pid: int, port: int) -> list[str]:
    """The addresses process ``pid`` listens on at ``port``."""
    try:
        conns = psutil.Process(pid).net_connections("inet")
    except psutil.NoSuchProcess:
        return []
    return [c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN and c.laddr.port == port]


def nbjobs_dashboard(url: str, port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "nbjobs.cli", "dashboard", "--url", url, "--port", str(port),
            *args]  # fmt: skip


def panel_serve(url: str, port: int, *args: str) -> list[str]:
    """``panel serve nbjobs/dashboard.py`` as the docs show it: no ``--address``."""
    return [sys.executable, "-m", "panel", "serve", str(ROOT / "nbjobs" / "dashboard.py"),
            "--port", str(port), *args, "--args", "--url", url]  # fmt: skip


def non_loopback_address() -> str:
    """An IPv4 address of this machine that is not loopback (the test needs one)."""
    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family.name == "AF_INET":
                ip = ipaddress.ip_address(a.address)
                if not (ip.is_loopback or ip.is_link_local):
                    return a.address
    pytest.fail("this machine has no non-loopback IPv4 address to connect from")


def pulled_text(url: str, token: str | None = None) -> str:
    """Everything a Bokeh client without an ``Origin`` header gets of the document."""
    import panel.models.tabulator  # noqa: F401  (the client must know the models it receives)

    session = pull_session(url=url, arguments={"token": token} if token else None)
    try:
        return json.dumps(session.document.to_json(), default=str)
    finally:
        session.close()


def login(base: str, user: str, password: str) -> tuple[urllib.request.OpenerDirector, dict]:
    """An opener holding the cookies of a basic-auth login on ``base``, and the cookies."""
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(f"{base}/login", timeout=30).read()
    form = urllib.parse.urlencode({"username": user, "password": password}).encode()
    opener.open(f"{base}/login", data=form, timeout=30).read()
    return opener, {c.name: c.value for c in jar}


def define_nightly(app: nbjobs.App) -> nbjobs.Workflow:
    @app.workflow(name="nightly")
    def nightly(cs: nbjobs.CallState) -> str:
        return "ok"

    return nightly


@pytest.fixture
def notifications():
    """The process-wide notification area Panel uses outside a served page."""
    pn.extension(notifications=True)
    area = pn.state.notifications
    area.clear()
    yield area
    area.clear()


# -- D1: every notification is escaped -----------------------------------------------
@pytest.mark.no_worker
def test_every_notification_escapes_hostile_names(app, notifications) -> None:
    nightly = define_nightly(app)
    app.schedule(HOSTILE, nightly, cron="0 3 * * *")
    job = nightly.submit()

    schedules = Schedules(app=app)
    schedules.load()
    schedules.table.selection = [0]
    assert schedules.set_paused(True) and schedules.set_paused(False)
    locked = Schedules(app=app, require_auth=True)
    locked.load()
    locked.table.selection = [0]
    assert not locked.set_paused(True)
    app.unschedule(HOSTILE)
    assert not schedules.set_paused(True)  # gone: the failure carries the exception text

    detail = JobDetail(app=app, job_id=job.id)
    assert detail.cancel()
    assert not JobDetail(app=app, job_id=job.id, require_auth=True).retry()

    def hostile_failure() -> None:  # an exception text anyone can choose, as user code's
        raise RuntimeError(HOSTILE)

    assert not detail.act(f"renaming {HOSTILE}", hostile_failure)

    messages = [n.message for n in notifications.notifications]
    escaped = html.escape(HOSTILE)
    expected = [
        f"pausing schedule {escaped}",
        f"resuming schedule {escaped}",
        f"pausing schedule {escaped}: not allowed (log in first)",
        f"pausing schedule {escaped} failed: no schedule named &#x27;{escaped}&#x27;",
        f"cancelling job {job.id}",
        f"retrying job {job.id}: not allowed (log in first)",
        f"renaming {escaped} failed: {escaped}",
    ]
    assert messages == expected


def test_the_header_escapes_the_database_url(sqlite_app) -> None:
    # SQLAlchemy percent-encodes <, > and = in URLs today; the header must not rely on it.
    sqlite_app.store.safe_url = f"sqlite:///{HOSTILE}"
    dashboard = Dashboard(app=sqlite_app, live=False)
    header = dashboard._header()
    rendered = header.objects[0].object
    assert html.escape(HOSTILE) in rendered and "<img" not in rendered


# -- D4: any workflow name works ------------------------------------------------------
RESERVED = ["time", "other", "failed", "index"]


def run_reserved_workflows(app: nbjobs.App) -> None:
    for name in RESERVED:

        @app.workflow(name=name, retries=0)
        def body(cs: nbjobs.CallState, n: int) -> int:
            if n < 0:
                raise ValueError("negative")
            return n

        for n in range(RESERVED.index(name) + 1):
            body.run(n)
        if name == "failed":
            with pytest.raises(nbjobs.JobFailed):
                body.run(-1)


def test_workflows_named_like_the_plot_columns_build_the_dashboard(app) -> None:
    run_reserved_workflows(app)
    dashboard = Dashboard(app=app, live=False)
    doc = Document()
    doc.add_root(pn.panel(dashboard).get_root(doc))
    json.dumps(doc.to_json(), default=str)  # the whole page serializes

    throughput = Throughput(app=app)
    throughput.load()
    frame = throughput.frame()
    columns = dict(zip(frame.attrs["workflows"], frame.columns[1:], strict=False))
    assert set(columns) == set(RESERVED)
    finished = {name: int(frame[column].sum()) for name, column in columns.items()}
    assert finished == {"time": 1, "other": 2, "failed": 4, "index": 4}
    assert int(frame["failed"].sum()) == 1 and int(frame["other"].sum()) == 0
    legend = throughput._pane.object.legend[0]
    assert [item.label.value for item in legend.items] == [
        *frame.attrs["workflows"], "other", "failed",
    ]  # fmt: skip


# -- D2: no login, no remote sessions -------------------------------------------------
def test_panel_serve_refuses_non_loopback_sessions_without_a_login(sqlite_url, tmp_path) -> None:
    app = make_app(sqlite_url)
    try:
        define_nightly(app).run()
    finally:
        app.close()
    remote = non_loopback_address()
    port = free_port()
    with server(panel_serve(sqlite_url, port), port, tmp_path / "serve.log") as pid:
        # As the docs now say: without --address, panel serve listens on every interface.
        assert set(listening(pid, port)) & {"0.0.0.0", "::"}, listening(pid, port)
        local = pulled_text(f"http://127.0.0.1:{port}/dashboard")
        assert "nightly" in local and "nbj-url" in local
        refused = pulled_text(f"http://{remote}:{port}/dashboard")
        assert "only answers on this machine" in refused
        assert "nightly" not in refused and "nbj-url" not in refused
        assert sqlite_url not in refused
    assert f"refused a dashboard session from {remote}" in (tmp_path / "serve.log").read_text()

    port = free_port()
    opted_in = {ALLOW_REMOTE_ENV: "1"}
    with server(panel_serve(sqlite_url, port), port, tmp_path / "open.log", **opted_in):
        assert "nightly" in pulled_text(f"http://{remote}:{port}/dashboard")


def test_nbjobs_dashboard_on_all_interfaces_refuses_remote_sessions_unless_allowed(
    sqlite_url, tmp_path
) -> None:
    app = make_app(sqlite_url)
    try:
        define_nightly(app).run()
    finally:
        app.close()
    remote = non_loopback_address()
    port = free_port()
    argv = nbjobs_dashboard(sqlite_url, port, "--address", "0.0.0.0")
    with server(argv, port, tmp_path / "all.log"):
        assert "nightly" in pulled_text(f"http://127.0.0.1:{port}/", TOKEN)
        refused = pulled_text(f"http://{remote}:{port}/", TOKEN)
        assert "only answers on this machine" in refused and "nightly" not in refused
    assert "sessions from other hosts are refused" in (tmp_path / "all.log").read_text()
    port = free_port()
    argv = nbjobs_dashboard(sqlite_url, port, "--address", "0.0.0.0", "--allow-remote")
    with server(argv, port, tmp_path / "allowed.log"):
        assert "nightly" in pulled_text(f"http://{remote}:{port}/", TOKEN)


async def _session_user_of(application: Application, name: str) -> str | None:
    """``session_user()`` in a real Bokeh session whose (unsigned) token claims ``name``."""
    from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

    context = ApplicationContext(application)
    session_id = generate_session_id()
    token = generate_jwt_token(
        session_id, extra_payload={"headers": {}, "cookies": {}, USER_KEY: name}
    )
    request = HTTPServerRequest(
        start_line=RequestStartLine("GET", "/", "HTTP/1.1"),
        headers=HTTPHeaders({"Host": "127.0.0.1"}),
    )
    await context.create_session_if_needed(session_id, request, token)
    with set_curdoc(context.get_session(session_id).document):
        return session_user()


def test_a_user_name_in_the_token_counts_only_where_the_server_put_it() -> None:
    # nbjobs dashboard (LoginName) vouches for the name it adds; under panel serve with
    # guests allowed, a client could write any name into a token it made itself.
    assert asyncio.run(_session_user_of(Application(LoginName()), "alice")) == "alice"
    assert asyncio.run(_session_user_of(Application(), "mallory")) is None


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.8.9.1") and is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("192.0.2.2") and not is_loopback("::ffff:192.0.2.2")
    assert not is_loopback("") and not is_loopback(None) and not is_loopback("localhost")


# -- D15: origins, secrets from the environment or a file -----------------------------
async def _websocket_status(url: str, origin: str) -> int:
    """101 when the websocket handshake from ``origin`` is accepted, else the HTTP code."""
    from tornado.httpclient import HTTPClientError, HTTPRequest
    from tornado.websocket import websocket_connect

    try:
        conn = await websocket_connect(
            HTTPRequest(url, headers={"Origin": origin}), subprotocols=["bokeh"]
        )
    except HTTPClientError as exc:
        return exc.code
    conn.close()
    # Until the server's close frame (or tornado's abort, 5 s on) closes the socket:
    # asyncio.run would close the loop first, leaving the socket open to the collector.
    while await conn.read_message() is not None:
        pass
    return 101


def test_allow_websocket_origin_and_the_serve_keyword(sqlite_url, tmp_path) -> None:
    make_app(sqlite_url).close()  # nbjobs dashboard opens only an existing database
    port = free_port()
    argv = nbjobs_dashboard(sqlite_url, port, "--allow-websocket-origin", "proxy.example")
    ws = f"ws://127.0.0.1:{port}/ws?token={TOKEN}"
    with server(argv, port, tmp_path / "origin.log"):
        assert asyncio.run(_websocket_status(ws, "http://proxy.example")) == 101
        assert asyncio.run(_websocket_status(ws, "http://evil.example")) == 403
        assert asyncio.run(_websocket_status(ws, f"http://127.0.0.1:{port}")) == 101
    # serve(websocket_origin=...) used to raise TypeError (a duplicate keyword).
    port = free_port()
    code = (
        "import sys; from nbjobs.dashboard import serve; "
        f"serve({sqlite_url!r}, port={port}, websocket_origin='proxy.example')"
    )
    with server([sys.executable, "-c", code], port, tmp_path / "kw.log"):
        ws = f"ws://127.0.0.1:{port}/ws"
        assert asyncio.run(_websocket_status(ws, "http://proxy.example")) == 101
        assert asyncio.run(_websocket_status(ws, "http://evil.example")) == 403


def token_payload(page: str) -> dict:
    token = re.search(r'"token":\s*"([^"]+)"', page)
    assert token, "no session token in the page"
    return get_token_payload(token.group(1))


def test_the_page_never_carries_login_cookies_and_secrets_come_from_env_or_file(
    sqlite_url, tmp_path
) -> None:
    make_app(sqlite_url).close()  # nbjobs dashboard opens only an existing database
    secret_file = tmp_path / "cookie-secret"
    secret_file.write_text("f" * 64 + "\n")
    port = free_port()
    argv = nbjobs_dashboard(sqlite_url, port, "--cookie-secret-file", str(secret_file))
    env = {"NBJOBS_DASHBOARD_BASIC_AUTH": PASSWORD}
    base = f"http://127.0.0.1:{port}"
    with server(argv, port, tmp_path / "auth.log", **env) as pid:
        assert PASSWORD not in " ".join(psutil.Process(pid).cmdline())
        opener, cookies = login(base, "alice", PASSWORD)
        assert {"user", "id_token"} <= set(cookies)
        page = opener.open(f"{base}/", timeout=30).read().decode()
        payload = token_payload(page)
        assert "/login" not in page  # a dashboard session, not the login form
        assert payload["cookies"] == {}
        assert "Cookie" not in payload["headers"] and "cookie" not in payload["headers"]
        assert payload.get("nbjobs_user") == "alice"
        for name in ("user", "id_token"):
            assert cookies[name] not in page
            assert cookies[name].strip('"') not in json.dumps(payload)
        # The login cookie is signed with the secret from the file.
        assert decode_signed_value("f" * 64, "user", cookies["user"].strip('"')) == b"alice"
        # A wrong password gets no cookie at all.
        assert "user" not in login(base, "alice", "wrong")[1]
    assert TOKEN_OPTIONS["include_cookies"] == ["is_guest"]


# -- in Chromium ------------------------------------------------------------------------
@contextlib.contextmanager
def chromium() -> Iterator:
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 900})
        finally:
            browser.close()


def pause_hostile_schedule(page) -> None:
    """The review's scenario: select the hostile schedule, click Pause, see the toast."""
    from playwright.sync_api import expect

    expect(page.locator(".nbj-card").first).to_be_visible(timeout=30_000)
    page.locator(".bk-tab", has_text="Schedules").click()
    cell = page.locator(".nbj-schedules-table .tabulator-cell[tabulator-field=name]")
    expect(cell.first).to_have_text(HOSTILE, timeout=15_000)  # shown as text
    assert page.evaluate("window.nbjxss") is None
    cell.first.click()
    page.get_by_role("button", name="Pause").click()
    toast = page.locator(".notyf__toast", has_text="pausing schedule")
    expect(toast.first).to_be_visible(timeout=15_000)
    page.wait_for_timeout(500)  # an onerror handler would have run by now
    assert page.evaluate("window.nbjxss") is None, "the schedule name ran as script"
    expect(toast.first).to_contain_text(HOSTILE)  # the name as literal text, not markup


@pytest.mark.browser
@pytest.mark.slow
def test_a_hostile_schedule_name_runs_no_script_when_paused_in_chromium(
    sqlite_url, tmp_path
) -> None:
    app = make_app(sqlite_url)
    try:
        app.schedule(HOSTILE, define_nightly(app), cron="0 3 * * *")
        port = free_port()
        argv = nbjobs_dashboard(sqlite_url, port)
        with server(argv, port, tmp_path / "xss.log"), chromium() as page:
            page.goto(f"http://127.0.0.1:{port}/?token={TOKEN}")
            pause_hostile_schedule(page)
            page.screenshot(path=str(SHOTS / "security-toast.png"))
            assert page.evaluate("window.nbjxss") is None
        (schedule,) = app.schedules()
        assert schedule["paused"]
    finally:
        app.close()


@pytest.mark.browser
@pytest.mark.slow
def test_a_logged_in_user_can_act_and_the_page_cannot_read_the_login(sqlite_url, tmp_path) -> None:
    from playwright.sync_api import expect

    app = make_app(sqlite_url)
    try:
        app.schedule(HOSTILE, define_nightly(app), cron="0 3 * * *")
        port = free_port()
        argv = nbjobs_dashboard(sqlite_url, port)
        env = {"NBJOBS_DASHBOARD_BASIC_AUTH": PASSWORD}
        with server(argv, port, tmp_path / "login.log", **env), chromium() as page:
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("input[name=username]").fill("alice")
            page.locator("input[name=password]").fill(PASSWORD)
            page.locator("button[type=submit], input[type=submit]").first.click()
            pause_hostile_schedule(page)
            expect(page.locator(".notyf__toast", has_text="not allowed")).to_have_count(0)
            assert page.evaluate("window.nbjxss") is None
            # Nothing a script on the page can read holds the login cookies.
            cookies = {c["name"]: c["value"] for c in page.context.cookies()}
            assert {"user", "id_token"} <= set(cookies)
            readable = page.evaluate(
                "() => document.documentElement.outerHTML + document.cookie + "
                "JSON.stringify([...document.scripts].map(s => s.textContent))"
            )
            tokens = re.findall(r'"token":\s*"([^"]+)"', readable)
            assert tokens, "no session token in the page"
            readable += json.dumps([get_token_payload(t) for t in tokens])
            for name in ("user", "id_token"):
                assert cookies[name].strip('"') not in readable, f"the page can read {name}"
        (schedule,) = app.schedules()
        assert schedule["paused"]  # the action ran for the logged-in user
    finally:
        app.close()


@pytest.mark.browser
@pytest.mark.slow
def test_workflows_named_time_other_failed_render_in_chromium(sqlite_url, tmp_path) -> None:
    from playwright.sync_api import expect

    app = make_app(sqlite_url)
    try:
        run_reserved_workflows(app)
        port = free_port()
        argv = nbjobs_dashboard(sqlite_url, port)
        with server(argv, port, tmp_path / "names.log"), chromium() as page:
            page.goto(f"http://127.0.0.1:{port}/?token={TOKEN}")
            succeeded = page.locator(".nbj-count-succeeded .n")
            expect(succeeded).to_have_text("10", timeout=30_000)
            expect(page.locator(".nbj-count-failed .n")).to_have_text("1")
            expect(page.locator(".bk-Canvas, canvas").first).to_be_visible()
            page.screenshot(path=str(SHOTS / "security-reserved-names.png"))
        assert "Traceback" not in (tmp_path / "names.log").read_text()
    finally:
        app.close()


# -- the access token of nbjobs dashboard without a login -----------------------------
def fetch(url: str) -> tuple[str, str]:
    """(final URL after redirects, body) of a GET."""
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.geturl(), response.read().decode("utf-8", "replace")


@pytest.mark.browser
@pytest.mark.slow
def test_nbjobs_dashboard_without_a_login_needs_its_token(sqlite_url, tmp_path) -> None:
    from playwright.sync_api import expect

    app = make_app(sqlite_url)
    try:
        define_nightly(app).run()
    finally:
        app.close()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "token.log"
    with server(nbjobs_dashboard(sqlite_url, port), port, log_path):
        launched = log_path.read_text()
        assert f"on {base}/?token={TOKEN}" in launched  # the launch URL, and no other
        assert "Launching server at" not in launched
        final, page = fetch(f"{base}/")
        assert final.startswith(f"{base}/token") and "needs its access token" in page
        final, _ = fetch(f"{base}/?token=wrong-{TOKEN}")
        assert final.startswith(f"{base}/token")
        with pytest.raises(Exception):  # noqa: B017  (the handshake is refused, 403)
            pulled_text(f"{base}/")
        assert "nightly" in pulled_text(f"{base}/", TOKEN)
        with chromium() as page:
            page.goto(f"{base}/?token={TOKEN}")
            expect(page.locator(".nbj-card").first).to_be_visible(timeout=30_000)
            cookie = {c["name"]: c for c in page.context.cookies()}["nbjobs_token"]
            assert cookie["httpOnly"]
            page.goto(f"{base}/")  # a reload without the token: the cookie lets it in
            expect(page.locator(".nbj-card").first).to_be_visible(timeout=30_000)
    # --no-token serves as before, to this machine only.
    port = free_port()
    argv = nbjobs_dashboard(sqlite_url, port, "--no-token")
    with server(argv, port, tmp_path / "open.log"):
        assert "nightly" in pulled_text(f"http://127.0.0.1:{port}/")


def test_a_tab_closed_mid_update_leaves_no_traceback_in_the_server_log():
    """asyncio reports tornado's ``WebSocketClosedError`` from a task nobody awaits when
    a browser tab closes while the server pushes an update; ``nbjobs dashboard`` drops
    that record (and only that kind) so its log shows faults, not closed tabs."""
    from tornado.websocket import WebSocketClosedError

    from nbjobs.dashboard import _quiet_closed_sockets

    def record(error: BaseException) -> logging.LogRecord:
        info = (type(error), error, None)
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "Task exception", (), info)

    assert _quiet_closed_sockets(record(WebSocketClosedError())) is False
    assert _quiet_closed_sockets(record(RuntimeError("a real fault"))) is True
    plain = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "no exception", (), None)
    assert _quiet_closed_sockets(plain) is True
