"""Notebooks as durable, schedulable jobs (``app.notebook``), in real kernels.

Kernel start-up costs a second or two, so each test runs few notebooks: the checks of
what needs no kernel (parameters refused at submit, the local stand-in of
``nbjobs.current()``) run none.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import nbformat
import psutil
import pytest

import nbjobs
from nbjobs import ConfigurationError, JobFailed, JobTimeout
from nbjobs.artifacts.reference import find_references
from nbjobs.clock import FakeClock
from tests import backends
from tests.apps.notebook_app import NOTE, crash_notebook, make_notebook
from tests.conftest import make_app
from tests.support import submit_elsewhere, wait_until, worker_process

MULTIPROCESS = backends.selected("sqlite", "postgres")


def ledger(path: Path) -> list[tuple[str, int]]:
    """(event, pid) for every line the notebooks noted, in order."""
    if not path.exists():
        return []
    rows = [line.rsplit(" ", 1) for line in path.read_text().splitlines()]
    return [(event, int(pid)) for event, pid in rows]


def gone(pid: int) -> bool:
    """The process has ended (a zombie waiting for a reaper counts as ended)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kernels_of(process: psutil.Process) -> list[psutil.Process]:
    """The live ipykernel processes under ``process``."""
    found = []
    for child in process.children(recursive=True):
        try:
            if "ipykernel" in " ".join(child.cmdline()) and not gone(child.pid):
                found.append(child)
        except psutil.Error:
            continue
    return found


@pytest.fixture
def book(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "ledger.txt"
    monkeypatch.setenv("NBJOBS_LEDGER", str(path))  # kernels inherit the environment
    return path


def report_notebook(path: Path) -> Path:
    return make_notebook(
        path,
        [
            ("markdown", "# Daily report"),
            ("parameters", "day = '2026-01-01'\nscale = 1"),
            NOTE,
            "def load(day):\n    note('load')\n    return {'day': day, 'rows': 3 * scale}\n"
            "data = cs.checkpoint('load', load, day)\nprint('loaded', data['rows'], 'rows for', day)",
            "data",
            "result = {'day': day, 'rows': data['rows'], 'job': cs.job_id}",
        ],
    )


# -- submit-time checks: no kernel ---------------------------------------------------------
@pytest.mark.no_worker(strict=False)
def test_unknown_parameters_and_bad_values_are_refused_at_submit(sqlite_app, tmp_path):
    nb = sqlite_app.notebook(report_notebook(tmp_path / "report.ipynb"))
    assert nb.name == "report" and nb.parameters == {"day": "'2026-01-01'", "scale": "1"}
    with pytest.raises(
        ConfigurationError, match=r"unknown parameter\(s\) dya; its parameters are day, scale"
    ):
        nb.submit(dya="2026-12-01")
    with pytest.raises(ConfigurationError, match="takes its parameters by name"):
        nb.submit("2026-12-01")
    with pytest.raises(ConfigurationError, match="no Python literal form"):
        nb.submit(day=object())
    with pytest.raises(ConfigurationError, match=r"item 1: .*unknown parameter\(s\) when"):
        nb.map([{"day": "a"}, {"when": "b"}])
    with pytest.raises(ConfigurationError, match="item 0: a notebook's map items are dicts"):
        nb.map(["2026-12-01"])
    with pytest.raises(ConfigurationError, match=r"schedule 'daily': .*unknown parameter\(s\) dya"):
        sqlite_app.schedule("daily", nb, cron="0 6 * * *", kwargs={"dya": "x"})
    assert sqlite_app.jobs() == []  # nothing was submitted

    bare = make_notebook(tmp_path / "bare.ipynb", ["x = 1"])
    with pytest.raises(ConfigurationError, match="no cell tagged 'parameters', so it takes none"):
        sqlite_app.notebook(bare).submit(x=2)
    with pytest.raises(ConfigurationError, match="cannot read the notebook"):
        sqlite_app.notebook(tmp_path / "missing.ipynb")
    (tmp_path / "junk.ipynb").write_text("not json")
    with pytest.raises(ConfigurationError, match="is not a notebook"):
        sqlite_app.notebook(tmp_path / "junk.ipynb")
    with pytest.raises(ConfigurationError, match="result must name a variable"):
        sqlite_app.notebook(bare, name="bare2", result="not a name")
    other = make_notebook(tmp_path / "other.ipynb", ["y = 1"])
    with pytest.raises(ConfigurationError, match="workflow name 'report' is taken"):
        sqlite_app.notebook(other, name="report")


def test_current_outside_a_job_runs_steps_directly():
    cs = nbjobs.current()
    assert cs.job_id is None and "not in a job" in repr(cs)
    calls = []
    assert cs.checkpoint("load", lambda x: calls.append(x) or x * 2, 21) == 42
    assert cs.checkpoint("load", lambda x: calls.append(x) or x * 2, 21) == 42  # a re-run cell
    assert calls == [21, 21]
    cs.progress(0.5)  # goes nowhere
    with pytest.raises(ConfigurationError, match="pass the function and its arguments"):
        cs.checkpoint("load", 42)
    with pytest.raises(ConfigurationError, match="wait_signal needs a job"):
        cs.wait_signal("approved")


# -- runs ------------------------------------------------------------------------------------
def test_a_parameterised_notebook_runs_as_a_job(app, tmp_path, book):
    # Every backend, DuckDB included: the kernel needs no connection of its own.
    nb = app.notebook(report_notebook(tmp_path / "report.ipynb"), name="daily-report")
    with app.running(concurrency=1):
        h = nb.submit(day="2026-12-01", scale=2)
        result = h.result(timeout=120)
    assert result == {"day": "2026-12-01", "rows": 6, "job": h.id}
    assert h.checkpoints == {"load": {"day": "2026-12-01", "rows": 6}}
    assert h.progress == 1.0
    assert [e for e, _ in ledger(book)] == ["load"]
    # The cells' output is the job's captured output.
    assert "loaded 6 rows for 2026-12-01" in h.logs()
    assert "{'day': '2026-12-01', 'rows': 6}" in h.logs()

    executed = h.notebook()
    assert isinstance(executed, nbformat.NotebookNode)
    tags = [c.metadata.get("tags", []) for c in executed.cells]
    assert tags[1] == ["parameters"] and tags[2] == ["injected-parameters"]
    assert "day = '2026-12-01'" in executed.cells[2].source
    prints = executed.cells[4].outputs
    assert prints[0]["text"] == "loaded 6 rows for 2026-12-01\n"
    shown = executed.cells[5].outputs[0]
    assert shown["output_type"] == "execute_result"
    assert shown["data"]["text/plain"] == "{'day': '2026-12-01', 'rows': 6}"
    assert executed.metadata["language_info"]["name"] == "python"
    (row,) = app.store.job_notebooks(h.id)
    # Six code cells: the injected one counts (it ran).
    assert (row.attempt, row.cells, row.cells_done, row.failed_cell) == (1, 6, 6, None)
    # The executed notebook is an artifact: a file nbformat reads without nbjobs.
    ((_, ref),) = find_references(row.value)
    assert nbformat.read(ref.uri.removeprefix("file://"), as_version=4) == executed
    assert app.job(h.id).notebook().cells[4].outputs == prints


def test_a_failing_cell_names_the_cell_and_a_retry_replays_the_checkpoints(
    sqlite_app, tmp_path, book
):
    flag = tmp_path / "broken.flag"
    flag.touch()  # the first attempt fails in cell 4 (and removes the flag)
    path = make_notebook(
        tmp_path / "broken.ipynb",
        [
            ("parameters", f"flag = {str(flag)!r}"),
            NOTE + "import pandas as pd",
            "def prepare():\n    note('prepare')\n    return pd.DataFrame({'x': [1, 2, 3]})\n"
            "frame = cs.checkpoint('prepare', prepare)",
            "# the failing cell\nif os.path.exists(flag):\n    os.remove(flag)\n    1 / 0",
            "result = frame.assign(y=frame.x * 2)",
        ],
    )
    nb = sqlite_app.notebook(path, retries=1)
    with sqlite_app.running(concurrency=1):
        h = nb.submit()
        result = h.result(timeout=120)
    # The retry re-executed the notebook and replayed the finished checkpoint: a
    # DataFrame, through the artifact store.  The result is a DataFrame too.
    assert [e for e, _ in ledger(book)] == ["prepare"]
    assert h.artifact("prepare").type == "pandas.DataFrame"
    assert result.to_dict("list") == {"x": [1, 2, 3], "y": [2, 4, 6]}
    failed, succeeded = h.attempts
    assert (failed["outcome"], succeeded["outcome"]) == ("failed", "succeeded")
    error = failed["error"]
    assert error.startswith("CellError: cell 4 failed: ZeroDivisionError: division by zero")
    assert "if os.path.exists(flag):" in error  # the source excerpt
    traceback = failed["traceback"]
    assert "the kernel's traceback (cell 4)" in traceback and "ZeroDivisionError" in traceback
    assert "\x1b[" not in traceback  # no terminal colours
    first, second = sqlite_app.store.job_notebooks(h.id)
    assert (first.attempt, first.failed_cell, first.cells_done) == (1, 4, 3)
    assert (second.attempt, second.failed_cell, second.cells_done) == (2, None, 5)
    assert h.notebook(attempt=1).cells[3].outputs[0]["ename"] == "ZeroDivisionError"
    assert h.notebook().cells[3].outputs == []  # attempt 2: the flag was gone
    assert "ZeroDivisionError" in h.logs()
    with pytest.raises(nbjobs.ArtifactError, match="kept no executed notebook for attempt 3"):
        h.notebook(attempt=3)


def test_cell_timeout_job_timeout_and_cancel_stop_the_kernel(sqlite_app, tmp_path, book):
    # No nbjobs import in the kernel: the first cell is quick however loaded the machine.
    note = NOTE.replace("import os, time, nbjobs\ncs = nbjobs.current()\n", "import os, time\n")
    slow = [note, "note('kernel')\ntime.sleep(60)", "result = 1"]
    per_cell = sqlite_app.notebook(make_notebook(tmp_path / "a.ipynb", slow), cell_timeout=3)
    whole = sqlite_app.notebook(make_notebook(tmp_path / "b.ipynb", slow), timeout=2)
    endless = sqlite_app.notebook(
        make_notebook(tmp_path / "c.ipynb", [note, "note('endless')\ntime.sleep(600)"])
    )
    with sqlite_app.running(concurrency=3):
        a, b, c = per_cell.submit(), whole.submit(), endless.submit()
        with pytest.raises(JobFailed, match=r"cell 2 failed: timed out after 3 s") as caught:
            a.result(timeout=120)
        assert not isinstance(caught.value, JobTimeout)
        with pytest.raises(JobTimeout):
            b.result(timeout=120)
        wait_until(lambda: "endless" in dict(ledger(book)), timeout=120, what="cell 2 of c")
        c.cancel()  # while its kernel sleeps in a cell
        with pytest.raises(nbjobs.JobCancelled):
            c.result(timeout=120)
        # Every kernel this process started has ended.
        wait_until(lambda: not kernels_of(psutil.Process()), timeout=30, what="no kernel left")
    # The timed-out attempt still kept the notebook it ran, up to the cell it stopped in
    # (the first, or none when the timeout came during the kernel's start on a loaded
    # machine); the last cell never ran.
    row = sqlite_app.store.job_notebook(b.id)
    assert row.cells == 3 and row.cells_done <= 1
    assert b.notebook().cells[2].execution_count is None


@pytest.mark.parametrize("backend", MULTIPROCESS)
def test_sigkill_of_the_worker_leaves_no_kernel_and_the_job_recovers(db_url, tmp_path, book):
    path = crash_notebook(tmp_path / "crash.ipynb")
    job_id = submit_elsewhere(db_url, "nb-crash", n=4)
    env = {"NBJOBS_NOTEBOOK": str(path), "NBJOBS_LEDGER": str(book), "NBJOBS_HANG": "1"}
    app = "tests.apps.notebook_app:app"
    with worker_process(app, db_url, tmp_path / "w1.log", env=env) as w1:
        (kernel,) = wait_until(
            lambda: [pid for event, pid in ledger(book) if event == "kernel"],
            timeout=120,
            what="the kernel to reach the hanging cell",
        )
        assert psutil.Process(kernel).ppid() == w1.pid  # the worker's own kernel
        w1.kill()  # SIGKILL: no cleanup, no shutdown of the kernel
        assert w1.wait(30) == -9
    wait_until(lambda: gone(kernel), timeout=30, what="the orphaned kernel to end")
    assert [e for e, _ in ledger(book)] == ["expensive", "kernel"]

    reader = make_app(db_url)
    try:
        h = reader.job(job_id)
        assert h.checkpoints == {"expensive": [0, 1, 2, 3]}
        env["NBJOBS_HANG"] = "0"
        with worker_process(app, db_url, tmp_path / "w2.log", env=env):
            assert h.result(timeout=120) == 6
        events = ledger(book)
        # The expensive step ran once in all; the notebook itself ran twice.
        assert [e for e, _ in events] == ["expensive", "kernel", "kernel"]
        assert events[1][1] != events[2][1]
        assert [a["outcome"] for a in h.attempts] == ["lost", "succeeded"]
        assert h.notebook().cells[-1].source == "result = sum(values)"
    finally:
        reader.close()


def test_a_scheduled_notebook_fires_under_the_fake_clock(sqlite_url, tmp_path, book):
    clock = FakeClock(datetime(2026, 12, 1, 5, 59, 50, tzinfo=UTC))
    app = make_app(sqlite_url, clock=clock)
    try:
        nb = app.notebook(report_notebook(tmp_path / "report.ipynb"))
        app.schedule("morning", nb, cron="0 6 * * *", kwargs={"day": "2026-12-01"})
        with app.running(concurrency=1):
            assert app.store.schedule_jobs("morning") == []
            clock.set(datetime(2026, 12, 1, 6, 0, 1, tzinfo=UTC))
            (job_id,) = wait_until(
                lambda: [r.id for r in app.store.schedule_jobs("morning")],
                what="the tick's job",
            )
            h = app.job(job_id)
            assert h.result(timeout=120)["day"] == "2026-12-01"
        assert {s["name"]: s for s in app.schedules()}["morning"]["last_status"] == "succeeded"
        assert h.notebook().cells[2].source.splitlines()[1] == "day = '2026-12-01'"
    finally:
        app.close()


def test_programming_errors_fail_the_job_without_retries(sqlite_app, tmp_path, book):
    twice = sqlite_app.notebook(
        make_notebook(
            tmp_path / "twice.ipynb",
            [NOTE, "a = cs.checkpoint('step', lambda: 1)", "b = cs.checkpoint('step', lambda: 2)"],
        ),
        retries=3,
    )
    # Sent without nbjobs in the kernel (plain data), refused by the worker's codec.
    unstorable = sqlite_app.notebook(
        make_notebook(tmp_path / "keys.ipynb", ["result = {1: 'one'}"]), retries=3
    )
    with sqlite_app.running(concurrency=2):
        h, k = twice.submit(), unstorable.submit()
        with pytest.raises(JobFailed, match="DuplicateCheckpoint: checkpoint name 'step' is used"):
            h.result(timeout=120)
        with pytest.raises(JobFailed, match=r"SerializationError: .*key of type int"):
            k.result(timeout=120)
    assert len(h.attempts) == 1 and len(k.attempts) == 1  # never retried
    assert h.checkpoints == {"step": 1}


def test_purge_deletes_the_executed_notebooks_and_the_sweep_keeps_theirs(app):
    @app.workflow(name="plain")
    def plain(cs):
        return 1

    with app.running(concurrency=1):
        h = plain.submit()
        assert h.result(timeout=60) == 1
    text = app.codec.dumps(b'{"cells": []}')  # as a notebook run keeps its notebook
    assert app.store.record_notebook(
        job_id=h.id, attempt=1, value=text, cells=0, cells_done=0, failed_cell=None
    )
    assert not app.store.record_notebook(
        job_id="nope", attempt=1, value=text, cells=0, cells_done=0, failed_cell=None
    )
    ((_, ref),) = find_references(text)
    assert app.sweep_artifacts(grace_seconds=0)["deleted"] == 0  # referenced: kept
    assert app.codec.artifacts.exists(ref.sha256, ref.suffix)
    assert app.purge(older_than=0) == 1
    with pytest.raises(nbjobs.UnknownJob):
        app.store.job_notebooks(h.id)
    assert app.sweep_artifacts(grace_seconds=0)["deleted"] == 1  # no longer referenced


# -- the dashboard -----------------------------------------------------------------------------
@pytest.mark.browser
@pytest.mark.slow
def test_the_executed_notebook_is_rendered_sanitised_in_the_dashboard(sqlite_url, tmp_path, book):
    from playwright.sync_api import expect, sync_playwright

    from tests.support import CHROMIUM_ARGS
    from tests.test_dashboard_browser import SHOTS, panel_serve, row

    SHOTS.mkdir(parents=True, exist_ok=True)
    path = make_notebook(
        tmp_path / "shown.ipynb",
        [
            ("markdown", "# A shown notebook"),
            "print('printed by cell two')",
            "from IPython.display import HTML\n"
            "HTML(\"<b class='kept'>bold output</b><script>document.title = 'pwned'</script>"
            '<img src=x onerror=\\"document.title=\'pwned\'\\">")',
            "result = 42",
        ],
    )
    app = make_app(sqlite_url)
    try:
        nb = app.notebook(path)
        with app.running(concurrency=1):
            h = nb.submit()
            assert h.result(timeout=120) == 42
        with panel_serve(sqlite_url) as address, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(address)
            page.locator(".bk-tab", has_text="Jobs").click()
            expect(row(page, h.id)).to_be_visible(timeout=30_000)
            row(page, h.id).locator(".tabulator-cell[tabulator-field=id]").click()
            page.locator(".bk-tab", has_text="Notebook").click()
            facts = page.locator(".nbj-notebook-facts")
            expect(facts).to_contain_text("attempt 1 · 3/3 code cells ran", timeout=15_000)
            frame_element = page.locator("iframe.nbj-notebook")
            expect(frame_element).to_have_attribute("sandbox", "")
            frame = page.frame_locator("iframe.nbj-notebook")
            expect(frame.locator("body")).to_contain_text("printed by cell two", timeout=15_000)
            expect(frame.locator("h1")).to_contain_text("A shown notebook")  # markdown rendered
            expect(frame.locator("b", has_text="bold output")).to_have_count(1)  # markup kept
            # Sanitised: the output's script and event handler are gone, and nothing ran.
            expect(frame.locator("script")).to_have_count(0)
            expect(frame.locator("img[onerror]")).to_have_count(0)
            assert page.title() != "pwned"
            page.wait_for_timeout(300)
            page.screenshot(path=str(SHOTS / "job-detail-notebook.png"), full_page=True)
            browser.close()
    finally:
        app.close()
