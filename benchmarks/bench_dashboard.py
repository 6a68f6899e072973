"""The dashboard at scale: each refresh query and the first render, with 1,000,000 jobs.

    .venv/bin/python benchmarks/bench_dashboard.py                     # SQLite in a temp dir
    .venv/bin/python benchmarks/bench_dashboard.py --url postgresql+psycopg://postgres@127.0.0.1/bench
    .venv/bin/python benchmarks/bench_dashboard.py --jobs 200000 --keep /tmp/bench.db

The jobs are bulk-inserted with SQLAlchemy Core ``executemany`` (a week of history: mostly
succeeded, some failed and cancelled, 100,000 queued, a few thousand running and waiting,
one fan-out of 1,000 children).  Each query is timed as the median of several runs after
one warm-up; the first render is the time to build the dashboard, load its data and
produce its Bokeh models (what a new browser session costs the server); ``--browser``
also serves the dashboard and times a new Chromium tab until the counters and a row of
the jobs table are on screen.  Targets: under 50 ms per refresh query, under 2 s to
first render.  A PostgreSQL database given with
``--url`` is emptied first.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import delete, func, insert, select

import nbjobs
from nbjobs.schema import checkpoints, jobs
from nbjobs.store.views import JobFilter

WORKFLOWS = [f"pipeline.step_{i}" for i in range(12)]
QUEUES = ["default", "io", "gpu"]
MIX = [  # status, share of the jobs
    ("succeeded", 0.865),
    ("failed", 0.02),
    ("cancelled", 0.005),
    ("queued", 0.10),
    ("running", 0.005),
    ("waiting", 0.005),
]


def populate(app: nbjobs.App, n: int, *, batch: int = 20_000, seed: int = 7) -> str:
    """Insert ``n`` jobs over the last week; returns the id of the fan-out parent."""
    rng = random.Random(seed)
    now = time.time()
    start = now - 7 * 86400
    statuses = [s for s, _ in MIX]
    weights = [w for _, w in MIX]
    parent_id = ""
    rows: list[dict[str, Any]] = []
    engine = app.store.engine

    def flush() -> None:
        with engine.begin() as conn:
            conn.execute(insert(jobs), rows)
        rows.clear()

    for i in range(n):
        created = start + (now - start) * i / n
        status = rng.choices(statuses, weights)[0]
        job_id = f"{int(created * 1_000_000):014x}{rng.getrandbits(40):010x}"
        finished = (
            created + rng.uniform(0.5, 30)
            if status in ("succeeded", "failed", "cancelled")
            else None
        )
        finished = min(finished, now) if finished else None
        row = dict(
            id=job_id, workflow=rng.choice(WORKFLOWS), queue=rng.choice(QUEUES), status=status,
            priority=rng.choice((0, 0, 0, 5)), run_at=created, key=f"key-{i}" if i % 10 == 0 else None,
            input='{"args": [1], "kwargs": {}}', result='{"ok": true}' if status == "succeeded" else None,
            error=f"ValueError: row {i} broke" if status == "failed" else None,
            traceback=None, attempts=1, failures=int(status == "failed"), max_retries=0,
            timeout_seconds=None, lease_token=None, lease_expires_at=None, worker_id=None,
            reclaims=0, cancel_requested=False, parent_id=None, root_id=job_id, fanout=None,
            fanout_index=None, waiting_for=None, schedule=None, tick_at=None, steps_expected=None,
            steps_done=4 if status == "succeeded" else rng.randint(0, 3), progress=None,
            message=None, code_fingerprint=None, created_at=created,
            started_at=created + 0.1 if status != "queued" else None, finished_at=finished,
            updated_at=finished or created,
        )  # fmt: skip
        if i == n - 2000:  # a fan-out parent of 1,000 children
            parent_id = job_id
            row.update(status="waiting", finished_at=None)
        rows.append(row)
        if len(rows) >= batch:
            flush()
    if rows:
        flush()
    with engine.begin() as conn:
        kids = []
        for k in range(1000):
            kid_id = f"{int((now - 60) * 1_000_000) + k:014x}{k:010x}"
            status = "succeeded" if k < 700 else ("failed" if k < 720 else "running")
            kids.append(dict(
                id=kid_id, workflow="pipeline.child", queue="default", status=status, priority=0,
                run_at=now, input="{}", attempts=1, failures=0, max_retries=0, reclaims=0,
                cancel_requested=False, parent_id=parent_id, root_id=parent_id, fanout="parts",
                fanout_index=k, steps_done=1, created_at=now - 60, updated_at=now - 30,
                finished_at=now - 30 if status != "running" else None,
            ))  # fmt: skip
        conn.execute(insert(jobs), kids)
        conn.execute(
            insert(checkpoints),
            [dict(job_id=parent_id, name=f"step-{s}", seq=s, kind="step", done=True,
                  value=str(s), started_at=now - 100 + s, finished_at=now - 99 + s)
             for s in range(3)],
        )  # fmt: skip
    return parent_id


def cold_counts(store: Any) -> dict[str, int]:
    """The counters as a new dashboard server first computes them (every finished job)."""
    store._settled = None
    return store.job_counts()


def timed(fn: Callable[[], Any], repeat: int = 7) -> float:
    """Median milliseconds of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def first_render(app: nbjobs.App) -> float:
    """Seconds to build a dashboard session: components, initial queries, Bokeh models."""
    import panel as pn
    from bokeh.document import Document

    from nbjobs.views import Dashboard

    pn.extension("tabulator")
    t0 = time.perf_counter()
    dashboard = Dashboard(app=app, live=False)
    dashboard.template().server_doc(Document())
    return time.perf_counter() - t0


def run(url: str, n: int, browser: bool = False) -> None:
    app = nbjobs.App(url)
    store = app.store
    with store.engine.connect() as conn:
        existing = conn.execute(select(func.count()).select_from(jobs)).scalar()
    if existing != n + 1000:
        with store.engine.begin() as conn:
            conn.execute(delete(checkpoints))
            conn.execute(delete(jobs))
        t0 = time.perf_counter()
        parent = populate(app, n)
        print(f"inserted {n + 1000:,} jobs in {time.perf_counter() - t0:.1f} s")
        if store.dialect.name == "postgresql":
            # The steady state autovacuum reaches: statistics and the visibility map
            # (index-only scans) up to date.
            with store.engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                    "VACUUM ANALYZE nbjobs_jobs"
                )
    else:
        with store.engine.connect() as conn:
            parent = conn.execute(
                select(jobs.c.parent_id).where(jobs.c.parent_id.is_not(None)).limit(1)
            ).scalar()
    now = time.time()
    watermark = store.latest_update() or now
    page2 = store.jobs_page(limit=25)
    ids = [r.id for r in page2]
    queries: list[tuple[str, Callable[[], Any]]] = [
        ("changes since watermark (idle)", lambda: store.jobs_changed_since(watermark)),
        ("changes in the last 60 s", lambda: store.jobs_changed_since(now - 60, limit=2000)),
        ("active counts", store.active_counts),
        ("status counters (settled + change)", store.job_counts),
        ("status counters, cold (first render)", lambda: cold_counts(store)),
        ("throughput, last 60 min", lambda: store.throughput(since=now - 3600)),
        ("throughput, last 2 min (incremental)", lambda: store.throughput(since=now - 120)),
        ("queue depths", store.queue_depths),
        ("workflow names", store.workflow_names),
        ("workers", lambda: store.list_workers(alive_within=30)),
        ("page 1, newest first", lambda: store.jobs_page(limit=25)),
        ("page 400, newest first", lambda: store.jobs_page(limit=25, offset=9975)),
        ("page 1, status=failed", lambda: store.jobs_page(JobFilter(status=("failed",)))),
        ("page 1, status=running", lambda: store.jobs_page(JobFilter(status=("running",)))),
        ("page 1, workflow", lambda: store.jobs_page(JobFilter(workflow=WORKFLOWS[3]))),
        ("page 1, queue=gpu", lambda: store.jobs_page(JobFilter(queue="gpu"))),
        ("page 1, sort by finished", lambda: store.jobs_page(sort="finished")),
        ("page 1, search id prefix", lambda: store.jobs_page(JobFilter(search=ids[0][:10]))),
        ("page 1, search error text", lambda: store.jobs_page(JobFilter(search="row 12345 "))),
        ("count, workflow (cap 10k)", lambda: store.count_matching(JobFilter(workflow=WORKFLOWS[3]))),
        ("count, status=running (cap 10k)", lambda: store.count_matching(JobFilter(status=("running",)))),
        ("patch rows of a page", lambda: store.jobs_rows(ids)),
        ("job detail", lambda: store.job_detail(parent)),
        ("fan-out tree of 1,000 children", lambda: store.job_tree(parent)),
        ("schedules", store.schedules_overview),
    ]  # fmt: skip
    print(f"\n{store.dialect.name}: {n + 1000:,} jobs ({store.safe_url})")
    print(f"{'query':40} {'median ms':>10}  target")
    for name, fn in queries:
        ms = timed(fn)
        refresh = not name.startswith(("page 1, search", "count,", "status counters, cold"))
        mark = ("ok" if ms < 50 else "SLOW") if refresh else "(on demand)"
        print(f"{name:40} {ms:10.1f}  {mark}")
    renders = []
    for _ in range(3):
        store._settled = None  # a new server counts the finished jobs once
        renders.append(first_render(app))
    seconds = min(renders)
    print(
        f"{'first render (server side)':40} {seconds * 1000:10.1f}  {'ok' if seconds < 2 else 'SLOW'}"
    )
    app.close()
    if browser:
        from benchmarks.served import ServedDashboard

        with tempfile.TemporaryDirectory() as logs:
            served = ServedDashboard(url, Path(logs))
            try:
                paints = [served.first_paint() for _ in range(3)]
            finally:
                served.close()
        for label, seconds in (
            ("first paint in Chromium (overview)", statistics.median(p[0] for p in paints)),
            ("... then the jobs tab's first row", statistics.median(p[1] for p in paints)),
        ):
            print(f"{label:40} {seconds * 1000:10.1f}  {'ok' if seconds < 2 else 'SLOW'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a PostgreSQL URL (emptied first); default SQLite")
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--keep", help="SQLite file to create or reuse (default: a temp dir)")
    parser.add_argument(
        "--browser", action="store_true", help="also time the first paint in Chromium"
    )
    args = parser.parse_args()
    if args.url:
        run(args.url, args.jobs, args.browser)
    elif args.keep:
        run(f"sqlite:///{args.keep}", args.jobs, args.browser)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            run(f"sqlite:///{tmp}/bench.db", args.jobs, args.browser)


if __name__ == "__main__":
    main()
