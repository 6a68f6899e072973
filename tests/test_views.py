"""Dashboard components in Python: data in (real jobs on a real SQLite file), widgets out."""

from __future__ import annotations

import threading
import time

import pandas as pd
import pytest
from sqlalchemy import insert

import nbjobs
from nbjobs.clock import FakeClock
from nbjobs.schema import schedules
from nbjobs.store.counts import SETTLE_SECONDS
from nbjobs.store.views import JobFilter
from nbjobs.views import Dashboard, FanOutTree, JobDetail, JobsTable, Schedules
from nbjobs.views.overview import Counters, QueueDepths, Throughput, Workers
from tests.conftest import make_app


def wait_until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


@pytest.fixture
def pipeline(sqlite_app):
    """Three workflows: a 3-step one, one that fails, and one gated by an event."""
    app = sqlite_app
    gate = threading.Event()

    @app.workflow(name="steps", steps=3)
    def steps(cs, x):
        for i in range(3):
            cs.checkpoint(f"step-{i}", lambda i=i: i * x)
        return x

    @app.workflow(name="breaks", queue="io")
    def breaks(cs, x):
        cs.checkpoint("before", lambda: x)
        raise ValueError(f"broken input {x}")

    @app.workflow(name="gated", steps=2)
    def gated(cs):
        cs.checkpoint("first", lambda: 1)
        gate.wait(30)
        cs.checkpoint("second", lambda: 2)
        return "done"

    app.gate = gate
    app.wf = {"steps": steps, "breaks": breaks, "gated": gated}
    return app


def finish(app, handles) -> None:
    for h in handles:
        wait_until(lambda h=h: h.status in ("succeeded", "failed", "cancelled"))


def test_status_counters_stay_exact_across_settling_retries_and_purges(db_url):
    clock = FakeClock()
    app = make_app(db_url, clock=clock)
    try:

        @app.workflow(name="ok")
        def ok(cs: nbjobs.CallState, i: int) -> int:
            return i

        @app.workflow(name="bad")
        def bad(cs: nbjobs.CallState) -> None:
            raise ValueError("no")

        def exact() -> dict[str, int]:
            return {**dict.fromkeys(app.store.job_counts(), 0), **app.store.status_counts()}

        for i in range(5):
            ok.run(i)
        with pytest.raises(nbjobs.JobFailed):
            bad.run()
        assert app.store.job_counts() == exact()
        clock.advance(SETTLE_SECONDS + 5)  # all of them settle below the watermark
        assert app.store.job_counts() == exact()
        for i in range(3):  # new finishes above the watermark
            ok.run(10 + i)
        clock.advance(SETTLE_SECONDS + 5)
        counts = app.store.job_counts()
        assert counts == exact() and counts["succeeded"] == 8 and counts["failed"] == 1
        # A settled failed job queued again by a retry leaves the failed count.
        failed_id = next(j.id for j in app.jobs(status="failed"))
        app.job(failed_id).retry()
        counts = app.store.job_counts()
        assert counts == exact() and counts["failed"] == 0 and counts["queued"] == 1
        # A purge deletes settled jobs: the counts follow.
        clock.advance(3600)
        assert app.purge(older_than=60) == 8
        counts = app.store.job_counts()
        assert counts == exact() and counts["succeeded"] == 0
    finally:
        app.close()


@pytest.mark.no_worker
def test_store_queries_count_page_filter_and_search(pipeline):
    app = pipeline
    ok = [app.wf["steps"].options(key=f"k-{i}").submit(i) for i in range(6)]
    bad = [app.wf["breaks"].submit(i) for i in range(2)]
    with app.running(concurrency=2, queues=["default", "io"]):
        finish(app, ok + bad)
    store = app.store
    counts = store.job_counts()
    assert counts == {"queued": 0, "running": 0, "waiting": 0, "succeeded": 6, "failed": 2,
                      "cancelled": 0}  # fmt: skip
    assert counts == {**dict.fromkeys(counts, 0), **store.status_counts()}

    page = store.jobs_page(limit=5)
    assert len(page) == 5 and [r.id for r in page] == sorted((r.id for r in page), reverse=True)
    assert [r.id for r in store.jobs_page(limit=5, offset=5)] == sorted(
        [h.id for h in ok + bad], reverse=True
    )[5:]
    failed = store.jobs_page(JobFilter(status=("failed",)))
    assert {r.id for r in failed} == {h.id for h in bad}
    assert all(r.error.startswith("ValueError: broken input") for r in failed)
    assert [r.id for r in store.jobs_page(JobFilter(search="broken input 1"))] == [bad[1].id]
    assert [r.id for r in store.jobs_page(JobFilter(search="k-3"))] == [ok[3].id]
    assert [r.id for r in store.jobs_page(JobFilter(search=ok[2].id[:22]))] == [ok[2].id]
    assert store.jobs_page(JobFilter(workflow="breaks", queue="default")) == []
    assert store.count_matching(JobFilter(workflow="steps")) == (6, True)
    assert store.count_matching(JobFilter(workflow="steps"), cap=4) == (4, False)
    oldest = store.jobs_page(sort="created", descending=False, limit=1)[0]
    assert oldest.id == ok[0].id
    assert store.workflow_names() == ["breaks", "steps"]
    # Progress in the same query: expected steps from steps=3, learned for "breaks" (none).
    row = store.jobs_rows([ok[0].id])[0]
    assert (row.steps_done, row.expected_steps) == (3, 3)
    assert store.jobs_rows([bad[0].id])[0].expected_steps is None


@pytest.mark.no_worker
def test_changes_since_watermark_and_throughput(pipeline):
    app = pipeline
    store = app.store
    mark = store.latest_update() or 0.0
    handles = [app.wf["steps"].submit(i) for i in range(3)]
    changed = store.jobs_changed_since(mark)
    assert {r.id for r in changed} == {h.id for h in handles}
    assert store.jobs_changed_since(changed[-1].updated_at) == []
    depths = {q["queue"]: q for q in store.queue_depths()}
    assert (depths["default"]["queued"], depths["default"]["ready"]) == (3, 3)
    with app.running(concurrency=2, queues=["default", "io"]):
        finish(app, handles)
    rows = store.throughput(since=time.time() - 3600)
    assert sum(r.n for r in rows if r.workflow == "steps" and r.status == "succeeded") == 3
    assert all(r.bucket % 60 == 0 for r in rows)
    assert store.queue_depths() == []  # no active job, no live worker, nothing paused


@pytest.mark.no_worker
def test_counters_queues_workers_and_throughput_widgets(pipeline):
    app = pipeline
    for i in range(3):
        app.wf["steps"].submit(i)
    app.wf["breaks"].submit(0)
    app.pause_queue("io")
    counters = Counters(app=app)
    counters.load()
    html = counters._pane.object
    assert 'data-status="queued">4<' in html and 'data-status="failed">0<' in html
    queues = QueueDepths(app=app)
    queues.load()
    frame = queues._table.value.set_index("queue")
    assert frame.loc["default", "queued"] == 3 and frame.loc["io", "paused"] == "paused"
    app.resume_queue("io")
    with app.running(concurrency=2, queues=["default", "io"]):
        wait_until(lambda: app.store.job_counts()["queued"] == 0)
        workers = Workers(app=app)
        workers.load()
        assert len(workers._table.value) == 1
        assert workers._table.value.iloc[0]["queues"] == "default, io"
        wait_until(lambda: app.store.job_counts()["running"] == 0)
    throughput = Throughput(app=app)
    throughput.load()
    drawn = throughput.frame()
    steps = drawn.columns[1 + drawn.attrs["workflows"].index("steps")]
    assert drawn[steps].sum() == 3 and drawn["failed"].sum() == 1
    counters._throttle.next_at = time.monotonic() + 60  # the last count was "just now"
    counters.refresh([object()])  # a change arrived, but the throttle holds the re-read
    assert 'data-status="succeeded">0<' in counters._pane.object
    counters._throttle.next_at = 0  # ... once the throttle allows, the counters re-read
    counters.refresh([])
    assert 'data-status="succeeded">3<' in counters._pane.object


@pytest.mark.no_worker
def test_a_table_that_empties_is_hidden_with_its_last_rows(pipeline):
    """JupyterLab showed Panel's traceback in the dashboard's cell when the Queues or
    Workers table went from rows to none while the page still sent its rows back."""
    app = pipeline
    job = app.wf["steps"].submit(1)
    queues = QueueDepths(app=app)
    queues.load()
    assert list(queues._table.value["queue"]) == ["default"]
    assert queues._table.visible and not queues._empty.visible
    job.cancel()
    queues.load()
    assert not queues._table.visible and queues._empty.visible
    assert list(queues._table.value["queue"]) == ["default"]  # hidden, never emptied
    app.wf["steps"].submit(2)
    queues.load()
    assert queues._table.visible and not queues._empty.visible


@pytest.mark.no_worker
def test_jobs_table_pages_filters_and_patches_progress(pipeline):
    app = pipeline
    for i in range(7):
        app.wf["steps"].submit(i)
    table = JobsTable(app=app, page_size=5)
    table.counts = app.store.job_counts()
    table.load()
    assert len(table.table.value) == 5 and table.total == 7
    assert "jobs 1-5 of 7" in table._pager_text.object and table._prev.disabled
    table._next.clicks += 1
    assert table.page == 2 and len(table.table.value) == 2 and table._next.disabled
    table.status = ["failed"]
    assert table.page == 1 and table.table.value.empty
    table.status = []

    # A running job's progress advances: the row is patched in place.
    gated = app.wf["gated"].submit()
    table.load()
    assert table.table.value.iloc[0]["id"] == gated.id
    before = table.table.value
    with app.running(concurrency=1, queues=["default"]):
        wait_until(lambda: gated.info()["steps_done"] == 1)
        table._throttle.next_at = 0
        table.refresh([object()])
        assert table.table.value is before  # patched, not replaced
        assert table.table.value.iloc[0]["progress_value"] == 0.5
        assert 'data-pct="50"' in table.table.value.iloc[0]["progress"]
        app.gate.set()
        wait_until(lambda: gated.status == "succeeded")
    table._throttle.next_at = 0
    table.refresh([object()])
    row = table.table.value.iloc[0]
    assert row["status_value"] == "succeeded" and row["progress_value"] == 1.0

    # A job submitted later appears on page 1 (a new page replaces the old one).
    fresh = app.wf["steps"].submit(99)
    table._throttle.next_at = 0
    table.refresh([object()])
    assert table.table.value.iloc[0]["id"] == fresh.id
    table.table.selection = [0]
    assert table.selected == fresh.id


@pytest.mark.no_worker
def test_job_detail_shows_error_and_retries_and_cancels(pipeline):
    app = pipeline
    bad = app.wf["breaks"].submit(5)
    with app.running(concurrency=1, queues=["io"]):
        finish(app, [bad])
    detail = JobDetail(app=app, job_id=bad.id)
    assert "ValueError: broken input 5" in detail._summary.object
    assert "Traceback" in detail._summary.object
    assert "before" in detail._steps.object and "nbj-lane" in detail._steps.object
    assert "failed" in detail._attempts.object
    assert detail.retry_button.visible and not detail.cancel_button.visible

    refused = JobDetail(app=app, job_id=bad.id, require_auth=True)
    assert not refused.retry()
    assert bad.status == "failed"

    assert detail.retry()
    assert bad.status == "queued" and detail.cancel_button.visible
    assert detail.cancel()
    assert bad.status == "cancelled"
    assert "cancelled" in detail._header.object


def test_fan_out_tree_caps_and_counts_children(pipeline):
    app = pipeline
    store = app.store
    parent, _ = store.enqueue_job(workflow="steps", input="{}")
    for i in range(120):
        kid, _ = store.enqueue_job(
            workflow="steps", input="{}", parent_id=parent, root_id=parent, fanout="parts",
            fanout_index=i,
        )  # fmt: skip
        if i == 0:
            for j in range(3):
                store.enqueue_job(workflow="steps", input="{}", parent_id=kid, root_id=parent,
                                  fanout="sub", fanout_index=j)  # fmt: skip
    tree = FanOutTree(app=app, job_id=parent, cap=50)
    assert tree.tree["total"] == 120 and len(tree.tree["children"]) == 50
    assert tree.tree["hidden"] == {"queued": 70}
    assert tree.tree["children"][0]["total"] == 3
    html = tree._pane.object
    assert "120 children" in html and "and 70 more: 70 queued" in html
    assert html.count("<details") == 2  # the parent and the child with grandchildren
    app.cancel(tree.tree["children"][1]["job"].id)
    tree.refresh(app.store.jobs_changed_since(0))
    assert tree.tree["counts"] == {"queued": 119, "cancelled": 1}


def test_schedules_view_lists_next_run_and_state(pipeline):
    app = pipeline
    now = time.time()
    with app.store._write() as conn:
        conn.execute(
            insert(schedules).values(
                name="nightly", workflow="steps", cron="0 3 * * *", timezone="Europe/Berlin",
                input="{}", queue="default", priority=0, catch_up="latest", paused=False,
                next_fire_at=now + 3600, created_at=now, updated_at=now,
            )
        )  # fmt: skip
    view = Schedules(app=app)
    view.load()
    row = view.table.value.iloc[0]
    assert row["cron"] == "0 3 * * *" and row["timezone"] == "Europe/Berlin"
    assert "in 60.0 min" in row["next run"] or "in 59.9 min" in row["next run"]
    assert "active" in row["state"]
    assert not view._empty.visible


@pytest.mark.no_worker
def test_dashboard_change_feed_reaches_every_view(pipeline):
    app = pipeline
    first = app.wf["steps"].submit(1)
    dash = Dashboard(app=app, live=False)
    assert isinstance(dash.jobs.table.value, pd.DataFrame)
    assert app.store.safe_url in dash._header().objects[0].object
    assert dash.changes() == []
    second = app.wf["steps"].submit(2)
    changed = dash.changes()
    assert [c.id for c in changed] == [second.id]
    assert dash.changes() == []  # the overlap window re-reads it but reports it once
    dash.jobs._throttle.next_at = 0
    dash.overview.counters._throttle.next_at = 0
    dash.refresh(changed)
    assert list(dash.jobs.table.value["id"][:2]) == [second.id, first.id]
    assert 'data-status="queued">2<' in dash.overview.counters._pane.object
    dash.jobs.table.selection = [1]
    assert dash.detail.job_id == first.id and dash.detail.tree.job_id == first.id


@pytest.mark.no_worker
def test_changed_code_is_marked_in_the_table_and_explained_in_the_detail(sqlite_url):
    """A dashboard in another process (no workflows registered) compares each unfinished
    run's code with the newest run of its workflow; one in the notebook, with the code."""
    notebook, viewer = make_app(sqlite_url), make_app(sqlite_url)
    try:

        @notebook.workflow(name="etl")
        def etl(cs):
            return 1

        old, done = etl.submit(), etl.submit()
        notebook.cancel(done.id)
        with pytest.warns(UserWarning):

            @notebook.workflow(name="etl")
            def etl(cs):  # the cell edited and run again
                return 2

        def marked(app) -> dict[str, bool]:
            table = JobsTable(app=app)
            table.load()
            frame = table.table.value
            return {
                i: "nbj-code-changed" in w
                for i, w in zip(frame["id"], frame["workflow"], strict=True)
            }

        # Nothing newer in the database yet: only the notebook, which has the new code, knows.
        assert marked(viewer) == {old.id: False, done.id: False}
        assert marked(notebook) == {old.id: True, done.id: False}
        new = etl.submit()
        assert marked(viewer) == {old.id: True, done.id: False, new.id: False}

        detail = JobDetail(app=viewer, job_id=old.id)
        notice = detail._header.object
        assert "nbj-notice" in notice and "<b>etl</b> has new code" in notice
        for choice in ("resume with the new code", "retry from a checkpoint", "cancel"):
            assert choice in notice
        assert "nbj-notice" not in JobDetail(app=viewer, job_id=new.id)._header.object
        assert detail.cancel()
        assert "nbj-notice" not in detail._header.object
    finally:
        viewer.close()
        notebook.close()


@pytest.mark.no_worker
def test_job_detail_reads_large_values_cut_by_the_database(app):
    """The detail view reads at most what it shows of each stored value: the database
    cuts them (``substr``) and gives their full length, which the view reports (on every
    backend; under MariaDB's 64 KiB ``TEXT``)."""
    big = "x" * 20_000
    accented = "é" * 20_000  # characters, not bytes, are counted

    @app.workflow(name="big")
    def big_values(cs, text):
        cs.checkpoint("copy", lambda: text)
        raise ValueError(accented)

    h = big_values.submit(big)
    with app.running(concurrency=1):
        finish(app, [h])
    detail = app.store.job_detail(h.id)
    job, (step,) = detail["job"], detail["checkpoints"]
    assert len(job.input) == 2000 and job.input_length == len(f'{{"args":["{big}"],"kwargs":{{}}}}')
    assert len(job.error) == 2000 and job.error_length == len("ValueError: ") + len(accented)
    assert len(job.traceback) == 8000 and job.traceback_length > len(accented)
    assert len(step.value) == 120 and step.value_length == len(big) + 2
    assert len(detail["attempts"][0].error) == 2000
    html = JobDetail(app=app, job_id=h.id)._summary.object
    assert f"({job.input_length - 2000:,} more characters)" in html
    assert f"({job.error_length - 2000:,} more characters)" in html


def test_a_call_from_another_thread_runs_on_the_loop_and_waits():
    """A comm message the kernel receives on a subshell thread is handled on the kernel's
    loop, where the notebook refresh runs: the caller waits and gets the result or error."""
    import asyncio

    from nbjobs.errors import NbjobsError
    from nbjobs.views.notebook import on_loop

    ran_on: list[int] = []

    def handler(value: int) -> int:
        ran_on.append(threading.get_ident())
        if value < 0:
            raise ValueError("negative")
        return value * 2

    async def main() -> None:
        loop = asyncio.get_running_loop()
        served = on_loop(handler, loop)
        assert served(1) == 2  # on the loop itself: at once
        assert await asyncio.to_thread(served, 21) == 42
        with pytest.raises(ValueError, match="negative"):
            await asyncio.to_thread(served, -1)
        assert set(ran_on) == {threading.get_ident()}

    asyncio.run(main())
    stopped = asyncio.new_event_loop()
    try:
        with pytest.raises(NbjobsError, match="stopped"):
            on_loop(handler, stopped)(1)
    finally:
        stopped.close()
    assert len(ran_on) == 3


@pytest.mark.no_worker
def test_job_detail_shows_artifacts_with_bounded_escaped_previews(sqlite_app):
    """A step's frame shows as type, shape and size with its dtypes and first rows; the
    result's too; every name and value escaped; at most MAX_PREVIEWS previews a job,
    the other artifacts with their facts only."""
    import numpy as np

    from nbjobs.views.detail import MAX_PREVIEWS

    app = sqlite_app
    hostile = "<img src=x onerror=alert(1)>"
    frame = pd.DataFrame({hostile: [hostile, "b"] * 500, "n": np.arange(1000)})

    @app.workflow(name="frames")
    def frames(cs):
        cs.checkpoint("load", lambda: frame)
        for i in range(MAX_PREVIEWS + 1):
            cs.checkpoint(f"array-{i}", lambda i=i: np.full((2, 2), i))
        cs.checkpoint("plain", lambda: 7)
        return frame.head(10)

    h = frames.submit()
    with app.running(concurrency=1):
        h.result(timeout=30)
    detail = JobDetail(app=app, job_id=h.id)
    steps, summary = detail._steps.object, detail._summary.object
    assert "<img" not in steps and "<img" not in summary
    load = steps.split('<tr data-step="load">')[1].split("<tr data-step=")[0]
    assert "pandas.DataFrame · 1,000 x 2 · " in load and "first 5 of 1,000 rows" in load
    assert "&lt;img src=x onerror=alert(1)&gt;" in load and ">int64<" in load
    assert "numpy.ndarray · 2 x 2" in steps and "<code" in steps  # "plain" as before
    # The budget: the result (Summary, drawn first), then the steps in order.
    assert "pandas.DataFrame · 10 x 2" in summary and summary.count("<details") == 1
    assert steps.count("<details") == MAX_PREVIEWS - 1
    last = steps.split(f'<tr data-step="array-{MAX_PREVIEWS}">')[1]
    assert "numpy.ndarray · 2 x 2" in last and "<details" not in last


def test_job_detail_says_why_a_queued_job_is_held(app):
    """A queued job's detail says what holds it back, as ``status_detail`` does: a full
    concurrency limit, a paused queue; and nothing once it runs (on every backend)."""
    release = threading.Event()
    app.set_queue("narrow", concurrency=1)

    @app.workflow(name="narrow", queue="narrow")
    def narrow(cs, n):
        release.wait(30)
        return n

    with app.running(concurrency=2, queues=["narrow"]):
        first, second = narrow.submit(1), narrow.submit(2)
        wait_until(lambda: first.status == "running")
        detail = JobDetail(app=app, job_id=second.id)
        held = "held by the concurrency limit of queue &#x27;narrow&#x27; (1 of 1 running)"
        assert f"<th>held</th><td>{held}</td>" in detail._header.object
        assert second.status_detail.endswith(held.replace("&#x27;", "'"))
        assert "<th>held</th>" not in JobDetail(app=app, job_id=first.id)._header.object
        app.pause_queue("narrow")
        detail.load()
        assert "<th>held</th><td>queue &#x27;narrow&#x27; is paused</td>" in detail._header.object
        app.resume_queue("narrow")
        release.set()
        assert second.result(timeout=60) == 2
    detail.load()
    assert "<th>held</th>" not in detail._header.object
