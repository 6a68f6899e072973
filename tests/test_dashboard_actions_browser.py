"""The dashboard's actions clicked in Debian's Chromium (Playwright) on a real
``nbjobs dashboard`` with a login and one operator.

The server is ``nbjobs dashboard --basic-auth-file users.json --operator alice`` in a
subprocess on a free localhost port over a SQLite file; the jobs run on a worker in this
test process, so every action crossed the database between two processes.  alice acts;
bob may log in and look, and his clicks (also those a script on his page sends over the
websocket for buttons he is not shown) are refused by the server and logged.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

import nbjobs
from tests.conftest import make_app
from tests.support import CHROMIUM_ARGS, ROOT, answers, free_port, server_process, wait_until
from tests.test_dashboard_actions import define as define_steps

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SHOTS = ROOT / "artifacts" / "screenshots"
PASSWORD = "act-Pw-71x"
TIMEOUT_MS = 15_000


@contextlib.contextmanager
def dashboard(url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``nbjobs dashboard`` with users alice and bob, alice the only operator; yields
    the base URL and the server's log file."""
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"alice": PASSWORD, "bob": PASSWORD}))
    port = free_port()
    argv = [sys.executable, "-m", "nbjobs.cli", "dashboard", "--url", url, "--port", str(port),
            "--basic-auth-file", str(users), "--operator", "alice", "--log-level", "info"]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "dashboard.log"
    with server_process(argv, log, answers(f"{base}/login"), timeout=60):
        yield base, log


@contextlib.contextmanager
def logged_in(base: str, user: str) -> Iterator:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/")
            page.locator("input[name=username]").fill(user)
            page.locator("input[name=password]").fill(PASSWORD)
            page.locator("button[type=submit], input[type=submit]").first.click()
            expect(page.locator(".nbj-card").first).to_be_visible(timeout=30_000)
            page.locator(".bk-tab", has_text="Jobs").click()
            yield page
        finally:
            browser.close()


def open_job(page, job_id: str) -> None:
    """Click the job's row and wait for its detail.  A live refresh that replaces the
    table's rows at the moment of the click swallows it (seen under a loaded CI run:
    the detail kept the previous job), so a click that opened nothing is repeated, as
    a person would."""
    row = page.locator(".nbj-jobs-table .tabulator-row", has_text=job_id)
    detail = page.locator(".nbj-detail")
    for _ in range(2):
        expect(row).to_be_visible(timeout=30_000)
        row.locator(".tabulator-cell[tabulator-field=id]").click()
        try:
            expect(detail).to_contain_text(job_id, timeout=TIMEOUT_MS // 3)
            return
        except AssertionError:
            continue
    expect(row).to_be_visible(timeout=30_000)
    row.locator(".tabulator-cell[tabulator-field=id]").click()
    expect(detail).to_contain_text(job_id, timeout=TIMEOUT_MS)


def define(app: nbjobs.App, calls: dict[str, int]) -> dict[str, nbjobs.Workflow]:
    """The unit tests' three workflows, and two on a queue no worker here serves."""
    workflows = define_steps(app, calls)

    @app.workflow(name="backlog", queue="later")
    def backlog(cs, i):
        return i

    @app.workflow(name="other", queue="later")
    def other(cs, i):
        return i

    return {**workflows, "backlog": backlog, "other": other}


def settled(app: nbjobs.App, wf: dict[str, nbjobs.Workflow]) -> dict[str, object]:
    """One job of each kind, run to where the test starts: succeeded, failed twice,
    waiting for a signal; three backlog jobs and another job queued on "later"."""
    three = wf["three"].submit()
    fails = wf["fails"].submit()
    waits = wf["waits"].submit()
    assert three.result(timeout=30) == ["a1", "b1", "c1"]
    with pytest.raises(nbjobs.JobFailed):
        fails.result(timeout=30)
    wait_until(lambda: waits.status == "waiting", what="the job to wait")
    backlog = [wf["backlog"].submit(i) for i in range(3)]
    other = wf["other"].submit(0)
    return dict(three=three, fails=fails, waits=waits, backlog=backlog, other=other)


@pytest.mark.no_worker
def test_an_operator_acts_from_the_dashboard_in_chromium(sqlite_url, tmp_path) -> None:
    app = make_app(sqlite_url)
    calls: dict[str, int] = {}
    wf = define(app, calls)
    app.start(concurrency=2, queues=["default"])  # "later" stays queued
    try:
        jobs = settled(app, wf)
        with dashboard(sqlite_url, tmp_path) as (base, log), logged_in(base, "alice") as page:
            # Retry from a chosen step: the step before it replays from its checkpoint.
            three = jobs["three"]
            open_job(page, three.id)
            page.locator(".nbj-retry-step select").select_option(label="2. b")
            shot_detail = SHOTS / "actions-job-detail.png"
            page.screenshot(path=str(shot_detail), full_page=True)
            page.locator(".nbj-retry-from button").click()
            wait_until(lambda: calls.get("c") == 2 and three.status == "succeeded",
                       what="the retry from step b")  # fmt: skip
            assert three.result(timeout=10) == ["a1", "b2", "c2"]
            assert calls["a"] == 1

            # Every attempt's traceback: the newest open, an older one on a click.
            open_job(page, jobs["fails"].id)
            page.locator(".bk-tab", has_text="Attempts").click()
            first = page.locator('details.nbj-traceback[data-attempt="1"]')
            second = page.locator('details.nbj-traceback[data-attempt="2"]')
            expect(second.locator("pre")).to_contain_text("failure number 2", timeout=TIMEOUT_MS)
            expect(second.locator("pre")).to_contain_text("Traceback (most recent call last)")
            expect(first.locator("pre")).to_be_hidden()
            first.locator("summary").click()
            expect(first.locator("pre")).to_be_visible()
            expect(first.locator("pre")).to_contain_text("failure number 1")
            page.wait_for_timeout(300)
            page.screenshot(path=str(SHOTS / "actions-attempts.png"), full_page=True)

            # A signal from the form: bad JSON is said and sends nothing; good JSON
            # reaches the waiting job.
            waits = jobs["waits"]
            open_job(page, waits.id)
            page.locator(".bk-tab", has_text="Signals").click()
            page.locator(".nbj-signal-name input").fill("approval")
            page.locator(".nbj-signal-payload textarea").fill('{"ok": tru}')
            page.locator(".nbj-signal-send button").click()
            message = page.locator(".nbj-signal-message")
            expect(message).to_contain_text("not valid JSON", timeout=TIMEOUT_MS)
            expect(message).to_contain_text("nothing was sent")
            page.screenshot(path=str(SHOTS / "actions-signal-bad-json.png"), full_page=True)
            assert app.store.job_detail(waits.id)["signals"] == []
            page.locator(".nbj-signal-payload textarea").fill('{"ok": true, "by": "alice"}')
            page.locator(".nbj-signal-send button").click()
            assert waits.result(timeout=30) == {"ok": True, "by": "alice"}
            expect(message).to_contain_text("Sent signal 'approval'")

            # Bulk cancel of the jobs the filter matches, after a question with the count.
            page.locator("select:has(option:text-is('backlog'))").select_option("backlog")
            expect(page.locator(".nbj-jobs-table .tabulator-row")).to_have_count(3,
                                                                               timeout=TIMEOUT_MS)  # fmt: skip
            page.locator(".nbj-bulk-cancel button").click()
            question = page.locator(".nbj-bulk-confirm")
            expect(question).to_contain_text("Cancel 3 queued jobs?", timeout=TIMEOUT_MS)
            page.wait_for_timeout(300)
            page.screenshot(path=str(SHOTS / "actions-bulk-confirm.png"), full_page=True)
            assert [h.status for h in jobs["backlog"]] == ["queued"] * 3  # not before "yes"
            page.locator(".nbj-bulk-confirm-yes button").click()
            wait_until(lambda: all(h.status == "cancelled" for h in jobs["backlog"]),
                       what="the bulk cancel")  # fmt: skip
            expect(question).to_be_hidden()
            assert jobs["other"].status == "queued"

        logged = log.read_text()
        assert f"retrying job {three.id} from step 'b' by alice" in logged
        assert f"sending signal 'approval' to job {waits.id} by alice" in logged
        assert (
            "bulk cancel of 3 jobs matching workflow='backlog' by alice: cancelled 3 of 3" in logged
        )
        assert "refused" not in logged
    finally:
        app.stop()
        app.close()


#: What a script on the page can send without any button being shown: a click on every
#: model with the CSS class (and first the step select's value: its option label),
#: straight into the websocket.
CRAFTED_CLICK = """([cls, value]) => {
    const {ButtonClick} = Bokeh.require("core/bokeh_events");
    let sent = 0;
    for (const doc of Bokeh.documents) {
        for (const model of doc.all_models) {
            const classes = model.css_classes || [];
            if (value !== null && classes.includes("nbj-retry-step")) model.value = value;
            if (classes.includes(cls)) { model.trigger_event(new ButtonClick()); sent++; }
        }
    }
    return sent;
}"""


@pytest.mark.no_worker
def test_a_user_who_is_not_an_operator_is_refused_by_the_server(sqlite_url, tmp_path) -> None:
    app = make_app(sqlite_url)
    calls: dict[str, int] = {}
    wf = define(app, calls)
    app.start(concurrency=2, queues=["default"])
    try:
        jobs = settled(app, wf)
        fails = jobs["fails"]
        with dashboard(sqlite_url, tmp_path) as (base, log), logged_in(base, "bob") as page:
            open_job(page, fails.id)
            # bob sees the job but no action.
            expect(page.locator(".nbj-detail")).to_contain_text("failure number 2")
            for cls in ("nbj-retry", "nbj-retry-from", "nbj-bulk-cancel", "nbj-bulk-retry"):
                expect(page.locator(f".{cls} button")).to_be_hidden()
            # A script clicks the hidden buttons anyway: the server refuses each click.
            assert page.evaluate(CRAFTED_CLICK, ["nbj-retry", None]) == 1
            assert page.evaluate(CRAFTED_CLICK, ["nbj-bulk-cancel", None]) == 1
            three = jobs["three"]
            open_job(page, three.id)
            expect(page.locator(".nbj-retry-from button")).to_be_hidden()
            assert page.evaluate(CRAFTED_CLICK, ["nbj-retry-from", "1. a"]) == 1
            toast = page.locator(".notyf__toast", has_text="not an operator")
            expect(toast.first).to_be_visible(timeout=TIMEOUT_MS)
            refused = "to bob: bob may look but not act"
            try:
                wait_until(lambda: log.read_text().count(refused) >= 3)
            except AssertionError:
                raise AssertionError(f"not three refusals in the log:\n{log.read_text()}") from None
            expect(page.locator(".nbj-bulk-confirm")).to_be_hidden()
            page.screenshot(path=str(SHOTS / "actions-refused.png"), full_page=True)
        logged = log.read_text()
        assert f"refused retrying job {fails.id} to bob" in logged
        assert f"refused retrying job {three.id} from step 'a' to bob" in logged
        assert "refused bulk cancel to bob" in logged
        assert fails.status == "failed" and len(fails.attempts) == 2
        assert three.status == "succeeded" and len(three.attempts) == 1
        assert all(h.status == "queued" for h in [*jobs["backlog"], jobs["other"]])
        assert calls == {"a": 1, "b": 1, "c": 1, "fails": 2}
    finally:
        app.stop()
        app.close()
