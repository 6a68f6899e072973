"""``/metrics``: scraped over HTTP from a worker and from the dashboard's server, parsed
with ``prometheus_client``'s own parsers, and compared with the database.

Every scrape is a real HTTP request to a real server (``prometheus_client``'s in a worker,
tornado's in the dashboard), on every database backend where it matters.
"""

from __future__ import annotations

import base64
import contextlib
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

import nbjobs
import nbjobs.store.metrics
from nbjobs.metrics import STEP_BUCKETS, serve_metrics
from nbjobs.schema import attempts, checkpoints, jobs
from tests import backends
from tests.conftest import make_app
from tests.support import ROOT, free_port, server_process
from tests.test_dashboard_security import listening, login, non_loopback_address

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
TIMEOUT = 60


# -- helpers ----------------------------------------------------------------------------
def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    """(status, content type, body) of a GET of ``url``."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read().decode()


def samples(text: str) -> Samples:
    """Every sample of a classic-format scrape, keyed by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    status, _, body = fetch(url, headers)
    assert status == 200, body
    return samples(body)


def pick(found: Samples, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def family(found: Samples, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    """The samples of ``name`` as {label values in ``keys`` order: value}."""
    out = {}
    for (n, labels), value in found.items():
        if n == name:
            d = dict(labels)
            out[tuple(d[k] for k in keys)] = value
    return out


def nonzero(values: dict) -> dict:
    return {k: v for k, v in values.items() if v}


def database_truth(app: nbjobs.App, window_seconds: float = 300.0) -> dict[str, dict]:
    """What the metrics should say, counted straight from the tables."""
    since = app.store.now() - window_seconds
    with app.store.engine.connect() as conn:
        by_queue = conn.execute(
            sa.select(jobs.c.queue, jobs.c.status, sa.func.count()).group_by(
                jobs.c.queue, jobs.c.status
            )
        ).all()
        finished = conn.execute(
            sa.select(
                jobs.c.workflow,
                jobs.c.status,
                sa.func.count(),
                sa.func.sum(jobs.c.failures),
                sa.func.sum(jobs.c.reclaims),
            )
            .where(jobs.c.status.in_(["succeeded", "failed", "cancelled"]))
            .group_by(jobs.c.workflow, jobs.c.status)
        ).all()
        outcomes = conn.execute(
            sa.select(jobs.c.workflow, attempts.c.outcome, sa.func.count())
            .select_from(attempts.join(jobs, jobs.c.id == attempts.c.job_id))
            .where(attempts.c.finished_at >= since)
            .group_by(jobs.c.workflow, attempts.c.outcome)
        ).all()
        started = conn.execute(
            sa.select(jobs.c.queue, sa.func.count())
            .where(jobs.c.started_at >= since)
            .group_by(jobs.c.queue)
        ).all()
        steps = conn.execute(
            sa.select(jobs.c.workflow, sa.func.count())
            .select_from(checkpoints.join(jobs, jobs.c.id == checkpoints.c.job_id))
            .where(checkpoints.c.kind == "step", checkpoints.c.finished_at >= since)
            .group_by(jobs.c.workflow)
        ).all()
    return dict(
        jobs={(q, s): n for q, s, n in by_queue},
        finished={(w, s): n for w, s, n, _, _ in finished},
        failures={(w, s): int(f or 0) for w, s, _, f, _ in finished},
        reclaims={(w, s): int(r or 0) for w, s, _, _, r in finished},
        attempts={(w, o): n for w, o, n in outcomes},
        started={(q,): n for q, n in started},
        steps={(w,): n for w, n in steps},
    )


def check_against_database(found: Samples, app: nbjobs.App) -> None:
    truth = database_truth(app)
    assert nonzero(family(found, "nbjobs_jobs", "queue", "status")) == truth["jobs"]
    assert (
        nonzero(family(found, "nbjobs_finished_jobs", "workflow", "outcome")) == (truth["finished"])
    )
    assert nonzero(family(found, "nbjobs_finished_job_failures", "workflow", "outcome")) == (
        nonzero(truth["failures"])
    )
    assert nonzero(family(found, "nbjobs_finished_job_reclaims", "workflow", "outcome")) == (
        nonzero(truth["reclaims"])
    )
    assert family(found, "nbjobs_attempts", "workflow", "outcome") == truth["attempts"]
    counts = family(found, "nbjobs_job_start_delay_seconds_gcount", "queue")
    assert counts == truth["started"]
    assert family(found, "nbjobs_step_duration_seconds_gcount", "workflow") == truth["steps"]


def wait_for(predicate, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@contextlib.contextmanager
def metrics_server(app: nbjobs.App, **options) -> Iterator[str]:
    """``serve_metrics`` on a free port; yields the ``/metrics`` URL."""
    server = serve_metrics(app, 0, **options)
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def define(app: nbjobs.App, gate: threading.Event) -> dict[str, nbjobs.Workflow]:
    @app.workflow(name="ok")
    def ok(cs: nbjobs.CallState, n: int) -> int:
        a = cs.checkpoint("one", lambda: n + 1)
        return cs.checkpoint("two", lambda: 2 * a)

    @app.workflow(name="bad", retries=1)
    def bad(cs: nbjobs.CallState, n: int) -> int:
        cs.checkpoint("try", lambda: n)
        raise ValueError("no")

    @app.workflow(name="slow", queue="io")
    def slow(cs: nbjobs.CallState) -> bool:
        return cs.checkpoint("wait", lambda: gate.wait(TIMEOUT))

    return dict(ok=ok, bad=bad, slow=slow)


def settle(handles: list[nbjobs.JobHandle]) -> None:
    for h in handles:
        with contextlib.suppress(nbjobs.JobFailed):
            h.result(timeout=TIMEOUT)


# -- a worker's /metrics ----------------------------------------------------------------
@pytest.mark.no_worker(strict=False)
def test_a_scrape_while_jobs_run_matches_the_database(app: nbjobs.App) -> None:
    gate = threading.Event()
    wf = define(app, gate)
    app.pause_queue("held")
    with metrics_server(app) as url, app.running(concurrency=4, queues="default,io,held"):
        try:
            settle([wf["ok"].submit(i) for i in range(3)] + [wf["bad"].submit(i) for i in (1, 2)])
            for i in range(4):
                wf["ok"].options(queue="held").submit(i)
            running = [wf["slow"].submit() for _ in range(2)]
            wait_for(lambda: all(h.status == "running" for h in running), "the slow jobs")
            # the worker reports what it holds at its next heartbeat
            wait_for(lambda: pick(scrape(url), "nbjobs_worker_jobs_held") == 2, "the heartbeat")

            found = scrape(url)
            check_against_database(found, app)
            # the shape of the run, spelled out
            assert pick(found, "nbjobs_jobs", queue="io", status="running") == 2
            assert pick(found, "nbjobs_jobs", queue="default", status="succeeded") == 3
            assert pick(found, "nbjobs_finished_jobs", workflow="bad", outcome="failed") == 2
            # two attempts each (one retry): two failures per failed job
            assert (
                pick(found, "nbjobs_finished_job_failures", workflow="bad", outcome="failed") == 4
            )
            assert pick(found, "nbjobs_attempts", workflow="bad", outcome="failed") == 4
            assert pick(found, "nbjobs_jobs", queue="held", status="queued") == 4
            assert pick(found, "nbjobs_jobs_held_back", queue="held", reason="paused") == 4
            assert pick(found, "nbjobs_jobs_held_back", queue="default", reason="paused") == 0
            assert pick(found, "nbjobs_queue_paused", queue="held") == 1
            assert pick(found, "nbjobs_jobs_ready", queue="held") == 4
            assert pick(found, "nbjobs_workers_alive") == 1
            assert pick(found, "nbjobs_worker_slots") == 4
            assert pick(found, "nbjobs_worker_jobs_held") == 2
            # three "ok" jobs of two steps, two "bad" ones of one; the slow steps run
            steps = family(found, "nbjobs_step_duration_seconds_bucket", "workflow", "le")
            assert steps[("ok", "+Inf")] == 6 and steps[("bad", "+Inf")] == 2
            assert steps[("ok", "0.001")] <= steps[("ok", "1.0")] <= steps[("ok", "+Inf")]
            assert {le for w, le in steps if w == "ok"} == {
                *(str(float(b)) for b in STEP_BUCKETS),
                "+Inf",
            }
            delays = family(found, "nbjobs_job_start_delay_seconds_bucket", "queue", "le")
            assert delays[("io", "+Inf")] == 2 and delays[("default", "+Inf")] == 5
        finally:
            gate.set()
        settle(running)
        # the worker reports what it holds at its next heartbeat
        wait_for(lambda: pick(scrape(url), "nbjobs_worker_jobs_held") == 0, "the heartbeat")
        found = scrape(url)
        check_against_database(found, app)
        assert pick(found, "nbjobs_jobs", queue="io", status="running") == 0
        assert pick(found, "nbjobs_finished_jobs", workflow="slow", outcome="succeeded") == 2


def test_finished_totals_follow_new_jobs_retries_and_purges(
    app: nbjobs.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settled totals, kept between scrapes, move with the jobs: each scrape counts
    only what changed, and a retry or a purge makes the next count afresh."""
    # Settle at once: every scrape then adds the slice since the last one to its
    # settled totals (in production the slice trails five seconds behind).
    monkeypatch.setattr(nbjobs.store.metrics, "SETTLE_SECONDS", 0.0)
    wf = define(app, threading.Event())
    with metrics_server(app) as url:
        with app.running(concurrency=2):
            settle([wf["ok"].submit(i) for i in range(3)] + [wf["bad"].submit(1)])
            check_against_database(scrape(url), app)
            settle([wf["ok"].submit(i) for i in range(3, 5)])  # counted as a slice
            found = scrape(url)
            check_against_database(found, app)
            assert pick(found, "nbjobs_finished_jobs", workflow="ok", outcome="succeeded") == 5
            failed = app.jobs(status="failed")
            assert len(failed) == 1
            settle([failed[0].retry()])  # failed again: still one failed, counted afresh
            found = scrape(url)
            check_against_database(found, app)
            assert pick(found, "nbjobs_finished_jobs", workflow="bad", outcome="failed") == 1
            failures = pick(found, "nbjobs_finished_job_failures", workflow="bad", outcome="failed")
            assert failures == 2  # the retry started the count again
        assert app.purge(older_than=0, status="succeeded") == 5
        found = scrape(url)
    check_against_database(found, app)
    # no "ok" job is left: its series are gone, the failed "bad" one stays
    assert family(found, "nbjobs_finished_jobs", "workflow", "outcome") == {
        ("bad", "succeeded"): 0,
        ("bad", "failed"): 1,
        ("bad", "cancelled"): 0,
    }


def test_the_worker_metrics_server_binds_to_loopback_by_default(sqlite_app: nbjobs.App) -> None:
    server = serve_metrics(sqlite_app, 0)
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        # reachable there, and not from this machine's other address
        assert pick(scrape(f"http://127.0.0.1:{port}/metrics"), "nbjobs_workers_alive") == 0
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://{non_loopback_address()}:{port}/metrics", timeout=5)
    finally:
        server.shutdown()
        server.server_close()


def test_import_nbjobs_loads_no_prometheus_client() -> None:
    code = (
        "import sys, nbjobs\n"
        "before = 'prometheus_client' in sys.modules\n"
        "import nbjobs.metrics\n"
        "print(before, 'prometheus_client' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.split() == ["False", "True"], out.stdout + out.stderr


def test_bad_arguments_are_refused_before_anything_listens(sqlite_app: nbjobs.App) -> None:
    for port in (-1, 65536, "9464", 1.5):
        with pytest.raises(nbjobs.ConfigurationError, match="port"):
            serve_metrics(sqlite_app, port)  # type: ignore[arg-type]
    with pytest.raises(nbjobs.ConfigurationError, match="window_seconds"):
        serve_metrics(sqlite_app, 0, window_seconds=0)


def test_openmetrics_is_served_to_a_scraper_that_asks_for_it(sqlite_app: nbjobs.App) -> None:
    wf = define(sqlite_app, threading.Event())
    with metrics_server(sqlite_app) as url, sqlite_app.running(concurrency=1):
        settle([wf["ok"].submit(1)])
        accept = "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"
        status, content_type, body = fetch(url, {"Accept": accept})
    assert status == 200 and content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")
    types = {f.name: f.type for f in openmetrics_families(body)}
    assert types["nbjobs_job_start_delay_seconds"] == "gaugehistogram"
    assert types["nbjobs_step_duration_seconds"] == "gaugehistogram"
    assert types["nbjobs_jobs"] == types["nbjobs_finished_jobs"] == "gauge"
    # prometheus_client's own process metrics come along
    assert "process_cpu_seconds" in types or "python_info" in types


@pytest.mark.slow
@pytest.mark.parametrize("backend", backends.selected("sqlite", "postgres", "mysql"))
def test_two_workers_on_one_database_report_the_same_fleet(db_url: str, tmp_path: Path) -> None:
    """An `nbjobs worker --metrics-port` process and this one, each serving /metrics,
    scraped one after the other: the fleet's numbers come from the database, so they
    agree (no double count)."""
    app = make_app(db_url, stale_after_seconds=5.0)
    wf = define(app, threading.Event())
    metered = app.workflow(name="metered")(lambda cs, n: 2 * n)
    port = free_port()

    def ready(proc: subprocess.Popen) -> bool:
        return bool(listening(proc.pid, port))

    argv = [sys.executable, "-m", "nbjobs.cli", "worker", "tests.apps.metrics_app:app",
            "--concurrency", "2", "--metrics-port", str(port)]  # fmt: skip
    env = {"NBJOBS_URL": db_url}
    try:
        with (
            server_process(argv, tmp_path / "worker.log", ready, env=env),
            metrics_server(app) as here,
            app.running(concurrency=2),
        ):
            for n in range(6):  # either worker may run them: the fleet is what counts
                metered.submit(n)
            settle([wf["ok"].submit(n) for n in range(4)])
            wait_for(
                lambda: len(app.jobs(workflow="metered", status="succeeded")) == 6,
                "the worker process's jobs",
            )
            wait_for(lambda: len(app.workers(alive_within=5.0)) == 2, "both workers")
            there = f"http://127.0.0.1:{port}/metrics"
            a, b = scrape(here), scrape(there)
            fleet = (
                "nbjobs_jobs",
                "nbjobs_finished_jobs",
                "nbjobs_finished_job_failures",
                "nbjobs_workers_alive",
                "nbjobs_worker_slots",
                "nbjobs_jobs_held_back",
                "nbjobs_attempts",
                "nbjobs_job_start_delay_seconds_gcount",
                "nbjobs_step_duration_seconds_gcount",
            )
            for name in fleet:
                mine = {k: v for k, v in a.items() if k[0] == name}
                theirs = {k: v for k, v in b.items() if k[0] == name}
                assert mine == theirs and mine, name
            # each endpoint reports the fleet: both workers, both workflows
            assert pick(a, "nbjobs_workers_alive") == 2 and pick(a, "nbjobs_worker_slots") == 4
            assert pick(a, "nbjobs_finished_jobs", workflow="metered", outcome="succeeded") == 6
            assert pick(b, "nbjobs_finished_jobs", workflow="ok", outcome="succeeded") == 4
            assert pick(b, "nbjobs_jobs", queue="default", status="succeeded") == 10
            check_against_database(a, app)
    finally:
        app.close()


# -- the dashboard's /metrics -----------------------------------------------------------
PASSWORD = "metrics-Pw-41"
TOKEN = "metrics-token-7Q"


def dashboard_argv(url: str, port: int, **options: object) -> list[str]:
    call = ", ".join(f"{k}={v!r}" for k, v in {"port": port, **options}.items())
    code = f"from nbjobs.dashboard import serve; serve({url!r}, {call})"
    return [sys.executable, "-c", code]


@contextlib.contextmanager
def dashboard(argv: list[str], port: int, log_path: Path) -> Iterator[str]:
    ready = lambda proc: listening(proc.pid, port)  # noqa: E731
    with server_process(argv, log_path, ready):
        yield f"http://127.0.0.1:{port}/metrics"


@pytest.fixture
def finished_db(sqlite_url: str) -> str:
    app = make_app(sqlite_url)
    wf = define(app, threading.Event())
    try:
        with app.running(concurrency=2):
            settle([wf["ok"].submit(i) for i in range(3)] + [wf["bad"].submit(1)])
    finally:
        app.close()
    return sqlite_url


def basic(user: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


@pytest.mark.slow
def test_the_dashboard_serves_metrics_to_its_token_holder(finished_db: str, tmp_path) -> None:
    port = free_port()
    argv = dashboard_argv(finished_db, port, token=TOKEN)
    with dashboard(argv, port, tmp_path / "dash.log") as url:
        assert fetch(url)[0] == 401
        assert fetch(f"{url}?token=wrong")[0] == 401
        assert fetch(url, {"Authorization": "Bearer wrong"})[0] == 401
        for found in (
            scrape(f"{url}?token={TOKEN}"),
            scrape(url, {"Authorization": f"Bearer {TOKEN}"}),
        ):
            assert pick(found, "nbjobs_finished_jobs", workflow="ok", outcome="succeeded") == 3
            assert pick(found, "nbjobs_finished_jobs", workflow="bad", outcome="failed") == 1
            assert pick(found, "nbjobs_workers_alive") == 0


@pytest.mark.slow
def test_the_dashboard_asks_a_scraper_for_its_basic_auth_login(finished_db: str, tmp_path) -> None:
    users = tmp_path / "users.json"
    users.write_text(f'{{"prom": "{PASSWORD}"}}')
    port = free_port()
    argv = dashboard_argv(finished_db, port, basic_auth=str(users), cookie_secret="s" * 32)
    with dashboard(argv, port, tmp_path / "dash.log") as url:
        status, _, _ = fetch(url)
        assert status == 401
        assert fetch(url, basic("prom", "wrong"))[0] == 401
        assert fetch(url, basic("mallory", PASSWORD))[0] == 401
        found = scrape(url, basic("prom", PASSWORD))
        assert pick(found, "nbjobs_finished_jobs", workflow="ok", outcome="succeeded") == 3
        # a browser logged in through the dashboard's login page reads it too
        opener, cookies = login(url.removesuffix("/metrics"), "prom", PASSWORD)
        assert "user" in cookies
        with opener.open(url, timeout=TIMEOUT) as response:
            assert response.status == 200
            found = samples(response.read().decode())
        assert pick(found, "nbjobs_finished_jobs", workflow="bad", outcome="failed") == 1


@pytest.mark.slow
def test_panel_serve_with_the_plugin_serves_metrics_to_this_host_only(
    finished_db: str, tmp_path
) -> None:
    """``panel serve nbjobs/dashboard.py --plugins nbjobs.dashboard`` (no login, on every
    interface): /metrics answers loopback clients and refuses the others, like the page."""
    port = free_port()
    argv = [
        sys.executable, "-m", "panel", "serve", "nbjobs/dashboard.py", "--port", str(port),
        "--plugins", "nbjobs.dashboard", "--args", "--url", finished_db,
    ]  # fmt: skip
    with dashboard(argv, port, tmp_path / "panel.log") as url:
        found = scrape(url)
        assert pick(found, "nbjobs_finished_jobs", workflow="ok", outcome="succeeded") == 3
        remote = url.replace("127.0.0.1", non_loopback_address())
        assert fetch(remote)[0] == 403
