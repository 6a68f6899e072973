"""``nbjobs demo``: the example pipeline, run_demo, and the command with its dashboard."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import nbjobs
from nbjobs.demo import define_pipeline, run_demo, submit_runs
from tests.support import free_port

WAIT = 120


def test_pipeline_publishes_reports(sqlite_app, tmp_path):
    pipeline = define_pipeline(sqlite_app, tmp_path, latency=0, failure_rate=0)
    sqlite_app.start(concurrency=3)
    handles = submit_runs(pipeline, 3, day="2026-01-01")
    for h in handles:
        result = h.result(timeout=WAIT)
        report = json.loads(Path(result["report"]).read_text())
        assert report["region"] in ("north", "south", "east")
        assert result["rows"] > 300 and result["revenue"] > 0
        assert list(h.checkpoints) == ["download", "clean", "aggregate", "exchange-rate", "publish"]
        assert "cleaned" in h.logs()


def test_flaky_step_retries_and_replays_finished_steps(sqlite_app, tmp_path):
    pipeline = define_pipeline(sqlite_app, tmp_path, latency=0, failure_rate=1.0)
    sqlite_app.start()
    h = pipeline.submit("north", "2026-01-01")
    with pytest.raises(Exception, match="exchange-rate service unavailable"):
        h.result(timeout=WAIT)
    assert [a["outcome"] for a in h.attempts] == ["failed"] * 5  # retries=4
    steps = sqlite_app.history_frame().query("kind == 'step'").set_index("name")
    assert list(steps.index) == ["download", "clean", "aggregate"]
    assert set(steps.attempt) == {1}  # made by the first attempt, replayed by the others


def test_run_demo_without_dashboard(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    assert run_demo(url, port=0, show=False, jobs=2, dashboard=False) == 0
    out = capsys.readouterr().out
    assert "2 runs of 'sales_report'" in out
    assert "[nbjobs demo]" in out
    summary = out.strip().splitlines()[-1]
    counts = re.findall(r"(\d+) (succeeded|failed)", summary)
    assert sum(int(n) for n, _ in counts) == 3, summary  # two runs and the fan-out parent

    app = nbjobs.App(url)
    try:
        (parent,) = app.jobs(workflow="all_regions")
        assert parent.status == "succeeded"
        assert len(parent.children) == 6  # one per region
        assert parent.result()["regions"] + len(parent.result()["failed"]) == 6
        assert app.schedules() == []  # the demo's schedule ends with the demo
    finally:
        app.close()


def test_demo_schedule_fires_refresh_rates(sqlite_app, tmp_path):
    from datetime import datetime, timezone

    from nbjobs.clock import FakeClock
    from nbjobs.demo import SCHEDULE, define_fan_out
    from tests.conftest import make_app

    clock = FakeClock(datetime(2026, 1, 1, 12, 0, 30, tzinfo=timezone.utc))
    app = make_app(sqlite_app.url, clock=clock)
    try:
        _, refresh_rates = define_fan_out(app, define_pipeline(app, tmp_path, latency=0))
        app.schedule(SCHEDULE, refresh_rates, cron="* * * * *")
        with app.running():
            clock.advance(60)
            deadline = time.monotonic() + WAIT
            while not app.jobs(workflow="refresh_rates", status="succeeded"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
        (h,) = app.jobs(workflow="refresh_rates")
        assert h.result()["regions"] == 6
    finally:
        app.close()


@pytest.mark.slow
def test_nbjobs_demo_command_serves_the_dashboard(tmp_path):
    port = free_port()
    nbjobs = Path(sys.executable).with_name("nbjobs")
    proc = subprocess.Popen(
        [str(nbjobs), "demo", "--jobs", "3", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "NBJOBS_URL": ""},
    )
    try:
        deadline = time.monotonic() + WAIT
        page = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
                    page = r.read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert page is not None, "the dashboard did not answer"
        assert "nbjobs" in page.lower()
        assert (tmp_path / "nbjobs.db").exists()  # the embedded default
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert "3 runs of 'sales_report'" in out, out
    assert "fans out over the 6 regions" in out
    assert proc.returncode == 0, out
