"""The served dashboard in Debian's Chromium (Playwright) against a real ``panel serve``.

The server is ``panel serve nbjobs/dashboard.py`` in a subprocess on a free localhost
port over a SQLite file; the jobs run on a worker in this test process, so everything the
page shows crossed the database between two processes.  Screenshots of each view are
saved under artifacts/screenshots/.
"""

from __future__ import annotations

import contextlib
import sys
import threading

import pandas as pd
import pytest
from playwright.sync_api import expect, sync_playwright

from tests.conftest import make_app
from tests.support import CHROMIUM_ARGS, ROOT, answers, free_port, server_process

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SHOTS = ROOT / "artifacts" / "screenshots"


@contextlib.contextmanager
def panel_serve(url: str):
    port = free_port()
    argv = [sys.executable, "-m", "panel", "serve", str(ROOT / "nbjobs" / "dashboard.py"),
            "--port", str(port), "--address", "127.0.0.1",
            "--allow-websocket-origin", f"127.0.0.1:{port}", "--args", "--url", url]  # fmt: skip
    address = f"http://127.0.0.1:{port}/dashboard"
    log = SHOTS.parent / "panel-serve.log"
    with server_process(argv, log, answers(address), env={"BOKEH_LOG_LEVEL": "warn"}, timeout=60):
        yield address


@pytest.fixture
def served(sqlite_url):
    SHOTS.mkdir(parents=True, exist_ok=True)
    app = make_app(sqlite_url)
    with panel_serve(sqlite_url) as address:
        yield app, address
    app.close()


def row(page, job_id: str):
    return page.locator(".nbj-jobs-table .tabulator-row", has_text=job_id)


def shot(page, name: str) -> None:
    page.wait_for_timeout(300)  # let the last patch paint
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@pytest.mark.no_worker
def test_dashboard_live_in_chromium(served):
    app, address = served
    gates = [threading.Event() for _ in range(3)]
    failing = {"left": 1}

    @app.workflow(name="ingest", steps=3)
    def ingest(cs, name):
        for i, gate in enumerate(gates):
            gate.wait(60)
            cs.checkpoint(f"part-{i}", lambda i=i: f"{name}-{i}")
        return name

    @app.workflow(name="flaky")
    def flaky(cs):
        cs.checkpoint("load", lambda: 42)
        cs.checkpoint("frame", lambda: pd.DataFrame({"city": ["Oslo", "<b>Lima</b>"], "n": [1, 2]}))
        if failing["left"]:
            failing["left"] -= 1
            raise RuntimeError("upstream unavailable")
        return "recovered"

    @app.workflow(name="leaf")
    def leaf(cs, i):
        return i

    @app.workflow(name="fanout")
    def fanout(cs, n):
        outcomes = cs.fan_out("leaves", [leaf.spec(i) for i in range(n)])
        return len(outcomes)

    for i in range(4):
        leaf.submit(i)
    app.start(concurrency=4, queues=["default"])  # "later" stays queued
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 950})
            page.goto(address)
            # The four leaf jobs have run: the live refresh has caught up with them.
            succeeded = page.locator('.nbj-card [data-status="succeeded"]')
            expect(succeeded).to_have_text("4", timeout=30_000)
            shot(page, "overview")

            page.locator(".bk-tab", has_text="Jobs").click()
            expect(page.locator(".nbj-jobs-table .tabulator-row").first).to_be_visible(
                timeout=15_000
            )

            # A job submitted after the page loaded appears within 3 s.
            h = ingest.submit("orders")
            expect(row(page, h.id)).to_be_visible(timeout=3_000)

            # Its progress bar advances as its steps finish.
            bar = row(page, h.id).locator(".nbj-progress")
            for i, gate in enumerate(gates):
                gate.set()
                expect(bar).to_have_attribute("data-pct", str(round((i + 1) * 100 / 3)),
                                              timeout=10_000)  # fmt: skip
                if i == 0:
                    shot(page, "jobs-progress")
            assert h.result(timeout=30) == "orders"

            # Retry on a failed job re-runs it.
            bad = flaky.submit()
            expect(row(page, bad.id)).to_contain_text("failed", timeout=15_000)
            row(page, bad.id).locator(".tabulator-cell[tabulator-field=id]").click()
            expect(page.locator(".nbj-error").first).to_contain_text("upstream unavailable",
                                                                     timeout=10_000)  # fmt: skip
            shot(page, "job-detail-failed")
            page.locator(".nbj-retry button").click()
            expect(row(page, bad.id)).to_contain_text("succeeded", timeout=15_000)
            assert bad.result(timeout=10) == "recovered"
            expect(page.locator(".nbj-detail")).to_contain_text("succeeded", timeout=10_000)
            page.locator(".bk-tab", has_text="Steps").click()
            # The frame step shows its type, shape and size; its preview opens on a click.
            artifact = page.locator('.nbj-steps tr[data-step="frame"] details.nbj-artifact')
            expect(artifact).to_contain_text("pandas.DataFrame · 2 x 2", timeout=10_000)
            expect(artifact.locator(".nbj-preview")).to_be_hidden()
            artifact.locator("summary").click()
            preview = artifact.locator(".nbj-preview")
            expect(preview).to_be_visible()
            expect(preview).to_contain_text("Oslo")
            expect(preview).to_contain_text("<b>Lima</b>")  # shown as text, not markup
            expect(preview).to_contain_text("int64")
            shot(page, "job-detail-steps")

            # The fan-out tree shows the children.
            # (The live refresh's own 3 s promise is checked above; here a loaded CI
            # machine, with the job detail open and refreshing too, may take longer.)
            parent = fanout.submit(12)
            expect(row(page, parent.id)).to_be_visible(timeout=30_000)
            assert parent.result(timeout=60) == 12
            row(page, parent.id).locator(".tabulator-cell[tabulator-field=id]").click()
            page.locator(".bk-tab", has_text="Fan-out").click()
            tree = page.locator(".nbj-tree")
            expect(tree).to_contain_text("12 children", timeout=10_000)
            expect(tree.locator(".leaf")).to_have_count(12)
            expect(tree).to_contain_text("12 succeeded")
            shot(page, "fanout-tree")

            # An edited workflow: the run queued with the old code is marked (the served
            # dashboard has no workflows: the newest run's code is the current one), and
            # its detail explains the three choices.
            @app.workflow(name="report", queue="later")
            def report(cs):
                return "v1"

            stale = report.submit()
            with pytest.warns(UserWarning, match="changed while 1 of its runs"):

                @app.workflow(name="report", queue="later")
                def report(cs):  # the notebook cell, edited and run again
                    return "v2"

            fresh = report.submit()
            expect(row(page, fresh.id)).to_be_visible(timeout=10_000)
            expect(row(page, stale.id).locator(".nbj-code-changed")).to_be_visible()
            expect(row(page, fresh.id).locator(".nbj-code-changed")).to_have_count(0)
            row(page, stale.id).locator(".tabulator-cell[tabulator-field=id]").click()
            notice = page.locator(".nbj-notice")
            expect(notice).to_contain_text("resume with the new code", timeout=10_000)
            expect(notice).to_contain_text("retry from a checkpoint")
            shot(page, "job-detail-code-changed")
            stale.cancel()
            fresh.cancel()

            # A schedule shows its next run.
            app.schedule("nightly-report", leaf, cron="0 3 * * *", args=(1,),
                         timezone="Europe/Berlin")  # fmt: skip
            page.locator(".bk-tab", has_text="Schedules").click()
            table = page.locator(".nbj-schedules-table")
            expect(table).to_contain_text("nightly-report", timeout=10_000)
            expect(table).to_contain_text("Europe/Berlin")
            expect(table).to_contain_text(" (in ")
            shot(page, "schedules")

            page.locator(".bk-tab", has_text="Overview").click()
            expect(succeeded).not_to_have_text("4")
            shot(page, "overview-after")
            browser.close()
    finally:
        for gate in gates:
            gate.set()
        app.stop()
