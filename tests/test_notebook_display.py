"""Rich notebook display: real jobs in a real database in, the HTML Jupyter shows out."""

from __future__ import annotations

import contextlib
import html
import re
import threading
import time
from datetime import datetime, timezone

import pytest
from sqlalchemy import event

import nbjobs
from nbjobs.clock import FakeClock
from nbjobs.jobs import STATUS_COLOURS
from nbjobs.notebook.display import MAX_ROWS, JobList, ScheduleList
from tests.conftest import make_app

WAIT = 60
HOSTILE = "<script>alert('x')</script>"


def wait_until(predicate, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


@contextlib.contextmanager
def counted_selects(app: nbjobs.App):
    """The SELECT statements this thread sends to the app's database inside the block."""
    me, seen = threading.get_ident(), []

    def record(conn, cursor, statement, parameters, context, executemany):
        if threading.get_ident() == me and statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    event.listen(app.store.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(app.store.engine, "before_cursor_execute", record)


def row_of(page: str, job_id: str) -> str:
    """The ``<tr>`` of one job in a rendered list."""
    found = re.search(rf'<tr data-job="{re.escape(job_id)}">(.*?)</tr>', page, re.DOTALL)
    assert found, f"no row for {job_id}"
    return found.group(1)


def pill_of(status: str) -> str:
    return f"background:{STATUS_COLOURS[status]};color:#fff"


@pytest.mark.no_worker
def test_job_list_renders_every_status_in_one_query(app):
    gate, entered = threading.Event(), threading.Event()

    @app.workflow(name="ok", steps=2)
    def ok(cs):
        cs.checkpoint("a", lambda: 1)
        cs.checkpoint("b", lambda: 2)
        return 3

    @app.workflow(name="boom")
    def boom(cs):
        raise ValueError(f"{HOSTILE}\nsecond line of the error")

    @app.workflow(name="held", steps=2)
    def held(cs):
        cs.checkpoint("first", lambda: 1)
        entered.set()
        gate.wait(WAIT)
        cs.checkpoint("second", lambda: 2)

    @app.workflow(name="nap")
    def nap(cs):
        cs.sleep("nap", 3600)

    @app.workflow(name=f"idle {HOSTILE}", queue="idle")
    def idle(cs):
        return None

    queued, cancelled = idle.submit(), idle.submit()
    cancelled.cancel()
    done, failed, running, waiting = ok.submit(), boom.submit(), held.submit(), nap.submit()
    app.start(concurrency=4, queues=["default"])  # not 'idle': its job stays queued
    try:
        wait_until(lambda: entered.is_set() and waiting.status == "waiting")
        wait_until(lambda: done.status == "succeeded" and failed.status == "failed")
        jobs = app.jobs()
        assert type(jobs) is JobList and isinstance(jobs, list) and len(jobs) == 6
        assert isinstance(jobs[0], nbjobs.JobHandle) and type(jobs[:2]) is JobList
        with counted_selects(app) as selects:
            page = jobs._repr_html_()
        assert len(selects) == 1, selects
    finally:
        gate.set()
        app.stop()
    expected = {
        queued: "queued", cancelled: "cancelled", done: "succeeded", failed: "failed",
        running: "running", waiting: "waiting",
    }  # fmt: skip
    for handle, status in expected.items():
        assert pill_of(status) in row_of(page, handle.id), status
    assert 'data-pct="100"' in row_of(page, done.id)
    assert 'data-pct="50"' in row_of(page, running.id)
    assert "1/2" in row_of(page, running.id)
    # The error: its first line shown, escaped; never live markup anywhere.
    bad = row_of(page, failed.id)
    assert f">ValueError: {html.escape(HOSTILE)}</span>" in bad
    assert "<script>" not in page and html.escape(f"idle {HOSTILE}") in page
    assert "6 jobs" in page and "took" in page and "started (UTC)" in page


@pytest.mark.no_worker
def test_one_query_however_many_jobs_and_long_lists_are_cut(sqlite_app):
    app = sqlite_app

    @app.workflow(name="many")
    def many(cs, i):
        return i

    for i in range(MAX_ROWS + 20):
        many.submit(i)
    for limit in (3, 40, MAX_ROWS + 20):
        jobs = app.jobs(limit=limit)
        with counted_selects(app) as selects:
            page = jobs._repr_html_()
        assert len(selects) == 1, (limit, selects)
        assert page.count("<tr data-job=") == min(limit, MAX_ROWS)
    assert f"the first {MAX_ROWS} of {MAX_ROWS + 20} jobs" in page
    assert f"{40} jobs" in app.jobs(limit=40)._repr_html_()


def test_empty_lists_and_a_purged_job(sqlite_app):
    app = sqlite_app
    assert app.jobs() == [] and "No jobs." in app.jobs()._repr_html_()
    assert app.schedules() == [] and "No schedules" in app.schedules()._repr_html_()
    gone = nbjobs.JobHandle(app._engine, "no-such-job")  # as if purged since
    assert "not found" in gone._repr_html_()
    assert "not found" in JobList([gone])._repr_html_()


@pytest.mark.no_worker
def test_job_handle_shows_status_progress_and_escaped_facts(sqlite_app):
    app = sqlite_app

    @app.workflow(name="two", steps=2)
    def two(cs):
        cs.checkpoint("a", lambda: 1)
        raise RuntimeError(f"failed on {HOSTILE}")

    h = two.options(key=f"k-{HOSTILE}").submit()
    with app.running(concurrency=1):
        wait_until(lambda: h.status == "failed")
    with counted_selects(app) as selects:
        page = h._repr_html_()
    # The job's row, its steps (without values: which were reused from the step cache),
    # then its input/result and checkpoints that hold artifact references.
    assert len(selects) == 4, selects
    assert pill_of("failed") in page and f"job {h.id}" in page
    assert "nbj-artifacts" not in page  # no artifacts, no section
    assert 'data-pct="50"' in page and "1/2" in page
    assert "<script>" not in page
    assert html.escape(f"k-{HOSTILE}") in page
    assert html.escape(f"RuntimeError: failed on {HOSTILE}") in page
    assert "finished" in page and "took" in page


def test_schedules_list_next_and_last_run_status_and_paused(sqlite_url):
    start = datetime(2026, 1, 5, 1, 0, tzinfo=timezone.utc).timestamp()
    clock = FakeClock(start)
    app = make_app(sqlite_url, clock=clock)
    try:

        @app.workflow(name="report")
        def report(cs, region):
            return region

        app.schedule("nightly", report, cron="0 3 * * *", args=("eu",), timezone="UTC")
        app.schedule(f"odd {HOSTILE}", report, cron="*/5 * * * *", timezone="Europe/Berlin")
        app.pause_schedule(f"odd {HOSTILE}")
        clock.advance(2 * 3600 + 1)  # 03:00:01: the nightly tick is due
        assert app._schedules.tick() == 1
        items = app.schedules()
        assert type(items) is ScheduleList and isinstance(items, list)
        assert {s["name"] for s in items} == {"nightly", f"odd {HOSTILE}"}
        assert type(items[:1]) is ScheduleList and items[:1].clock is clock
        page = items._repr_html_()
    finally:
        app.close()
    assert "<script>" not in page and html.escape(f"odd {HOSTILE}") in page
    nightly = re.search(r'<tr data-schedule="nightly">(.*?)</tr>', page, re.DOTALL).group(1)
    assert "0 3 * * *" in nightly and ">UTC<" in nightly
    assert "2026-01-06 03:00:00" in nightly and "(in 24.0 h)" in nightly  # next run
    assert "2026-01-05 03:00:00" in nightly and "(1.0 s ago)" in nightly  # last run
    assert pill_of("queued") in nightly and "active" in nightly
    odd = page.split(f'data-schedule="{html.escape(f"odd {HOSTILE}")}"')[1]
    assert "Europe/Berlin" in odd and ">paused<" in odd
    assert "2 schedules" in page


@pytest.mark.no_worker
def test_changed_code_is_marked_in_the_notebook_list(sqlite_url):
    app = make_app(sqlite_url)
    try:

        @app.workflow(name="edited")
        def edited(cs):
            return 1

        old = edited.submit()
        assert "nbj-code-changed" not in app.jobs()._repr_html_()

        with pytest.warns(UserWarning, match="changed while 1 of its runs are unfinished"):

            @app.workflow(name="edited")
            def edited(cs):
                return 2

        page = app.jobs()._repr_html_()
        assert "nbj-code-changed" in row_of(page, old.id)
        assert "nbj-code-changed" in old._repr_html_()
        # Another process with no workflows registered compares with the newest job.
        viewer = make_app(sqlite_url)
        try:
            assert "nbj-code-changed" not in viewer.jobs()._repr_html_()
            new = edited.submit()
            page = viewer.jobs()._repr_html_()
            assert "nbj-code-changed" in row_of(page, old.id)
            assert "nbj-code-changed" not in row_of(page, new.id)
            old.cancel()  # finished runs are never marked
            assert "nbj-code-changed" not in viewer.jobs()._repr_html_()
        finally:
            viewer.close()
    finally:
        app.close()


@pytest.mark.no_worker
def test_a_job_shows_its_artifacts_with_a_bounded_escaped_preview(sqlite_app):
    import numpy as np
    import pandas as pd

    app = sqlite_app
    frame = pd.DataFrame({HOSTILE: [HOSTILE, "b"] * 50_000, "n": np.arange(100_000)})

    @app.workflow(name="frames")
    def frames(cs):
        cs.checkpoint(f"load-{HOSTILE}", lambda: frame)
        cs.checkpoint("arrays", lambda: {"x": np.zeros((3, 2)), "y": np.ones(4)})
        for i in range(4):
            cs.checkpoint(f"more-{i}", lambda i=i: np.full(2, i))
        return 1

    h = frames.submit()
    with app.running(concurrency=1):
        h.result(timeout=WAIT)
    page = h._repr_html_()
    assert "<script>" not in page
    assert page.count('<details class="nbj-artifact">') == 3  # previews: the first three
    assert page.count("<tr data-step=") == 7
    assert html.escape(f"load-{HOSTILE}") in page
    assert "pandas.DataFrame · 100,000 x 2 · " in page and "numpy.ndarray · 3 x 2" in page
    assert "arrays[&#x27;y&#x27;]" in page  # where in the value
    # The preview: names, dtypes and the first rows, escaped; the rest counted.
    assert html.escape(HOSTILE) in page and ">int64<" in page
    assert re.search(r">(str|object)<", page)  # pandas 3 or 2
    assert "first 5 of 100,000 rows" in page
    art = h.artifact(f"load-{HOSTILE}")
    single = art._repr_html_()
    assert "<script>" not in single and html.escape(art.uri) in single
    assert "first 5 of 100,000 rows" in single and "100,000 x 2" in single
