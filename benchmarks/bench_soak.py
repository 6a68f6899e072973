"""Soak: N jobs through real worker processes, measured per window, with retention on.

    .venv/bin/python benchmarks/bench_soak.py --jobs 20000 --window 5000        # quick check
    .venv/bin/python benchmarks/bench_soak.py --jobs 1000000                     # the full run
    .venv/bin/python benchmarks/bench_soak.py --url postgresql+psycopg://... --jobs 1000000

Each job is a two-step workflow (two checkpoints, a result).  ``--workers`` real
``nbjobs worker`` processes drain the queue while this process keeps about
``--backlog`` jobs queued; the workers run with ``App(retention_seconds=...)``, so
finished history is purged as the run goes.  For every window of ``--window`` finished
jobs the table shows the window's throughput, the largest worker's resident memory (RSS,
and its private part without the memory-mapped database file), the database size and the
job rows left; with ``--dashboard`` also the memory of a served dashboard kept open in
Chromium.  At the end: the last window's throughput against the first (target: within
10%), the growth of a worker's RSS from the first window to the last (target: < 30 MB)
and the dashboard's largest RSS (target: < 400 MB).

Without ``--url`` it makes a SQLite file in a temp directory.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nbjobs  # noqa: E402

WORKFLOW = "soak"


def define(app: nbjobs.App) -> Any:
    @app.workflow(name=WORKFLOW)
    def soak(cs: nbjobs.CallState, i: int) -> int:
        a = cs.checkpoint("a", lambda: i + 1)
        b = cs.checkpoint("b", lambda: a * 2)
        return b

    return soak


def __getattr__(name: str) -> Any:
    """``nbjobs worker benchmarks.bench_soak:app`` builds the worker's app on demand."""
    if name != "app":
        raise AttributeError(name)
    retention = float(os.environ.get("NBJOBS_SOAK_RETENTION", "60"))
    app = nbjobs.App(os.environ["NBJOBS_URL"], retention_seconds=retention or None)
    define(app)
    globals()["app"] = app
    return app


def database_bytes(app: nbjobs.App) -> int:
    url = app.store.dialect.url
    if url.get_backend_name() == "sqlite":
        path = Path(url.database)
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.exists())
    if url.get_backend_name() == "postgresql":
        with app.store._read() as conn:
            return int(conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar())
    return 0


def vacuum_if_needed(app: nbjobs.App) -> bool:
    """On a PostgreSQL server with autovacuum off (a tuned test server), VACUUM by hand.

    Deleted rows leave dead tuples that only VACUUM makes reusable: with autovacuum on
    (PostgreSQL's default) the retention's deletes keep the size bounded by themselves;
    with it off, this stands in for it once per window.  Returns whether it ran.
    """
    if app.store.dialect.url.get_backend_name() != "postgresql":
        return False
    with app.store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if conn.exec_driver_sql("SHOW autovacuum").scalar() == "on":
            return False
        for table in ("nbjobs_jobs", "nbjobs_checkpoints", "nbjobs_attempts", "nbjobs_logs"):
            conn.exec_driver_sql(f"VACUUM {table}")
    return True


def unfinished(app: nbjobs.App) -> int:
    counts = app.store.status_counts()
    return sum(counts.get(s, 0) for s in ("queued", "running", "waiting"))


def rss(procs: list[subprocess.Popen]) -> list[tuple[int, int]]:
    """(RSS, private) bytes per worker.  Private leaves out file-backed shared pages: on
    SQLite the database file is memory-mapped (``mmap_size``), and the pages of it a
    worker has touched count in its RSS without being memory it allocated."""
    import psutil

    out = []
    for p in procs:
        try:
            info = psutil.Process(p.pid).memory_info()
            out.append((info.rss, info.rss - info.shared))
        except psutil.Error:
            out.append((0, 0))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="database URL (default: SQLite in a temp dir)")
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--window", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--backlog", type=int, default=5_000, help="jobs kept queued")
    parser.add_argument("--submitters", type=int, default=8, help="submitting threads")
    parser.add_argument("--retention", type=float, default=60.0, help="seconds; 0 = off")
    parser.add_argument(
        "--dashboard", action="store_true", help="serve the dashboard, open it in Chromium"
    )
    args = parser.parse_args(argv)
    url = args.url or f"sqlite:///{Path(tempfile.mkdtemp(prefix='nbjobs-soak-')) / 'soak.db'}"
    app = nbjobs.App(url)
    if app.store.count_jobs():
        print("bench_soak needs a fresh database", file=sys.stderr)
        return 2
    soak = define(app)
    env = dict(
        os.environ,
        NBJOBS_URL=url,
        NBJOBS_SOAK_RETENTION=str(args.retention),
        PYTHONPATH=str(ROOT),
    )
    logdir = Path(tempfile.mkdtemp(prefix="nbjobs-soak-logs-"))
    procs = []
    for i in range(args.workers):
        with open(logdir / f"worker-{i}.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "nbjobs.cli", "--log-level", "WARNING", "worker",
                     "benchmarks.bench_soak:app", "--concurrency", str(args.concurrency)],
                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                )
            )  # fmt: skip
    dashboard = None
    if args.dashboard:
        from benchmarks.served import ServedDashboard

        dashboard = ServedDashboard(url, logdir)
        dashboard.open()
    print(f"soak: {args.jobs:,} jobs on {app.store.safe_url}, {args.workers} workers x "
          f"{args.concurrency}, retention {args.retention:g} s; logs in {logdir}", flush=True)  # fmt: skip
    header = (
        f"{'window':>7} {'finished':>10} {'jobs/s':>8} {'max RSS MB':>10} {'private MB':>10} "
        f"{'db MB':>8} {'job rows':>9}" + (f" {'dash MB':>8}" if dashboard else "")
    )
    print(header, flush=True)
    windows: list[dict[str, float]] = []
    submitted = 0
    started = window_start = time.perf_counter()
    window_done = 0
    submitters = ThreadPoolExecutor(max_workers=args.submitters)
    next_mark = args.window
    try:
        while True:
            left = unfinished(app)
            done = submitted - left
            while submitted < args.jobs and left < args.backlog:
                chunk = min(500, args.jobs - submitted)
                # Several submitting threads: on a server database one submit is a
                # round trip and a commit, and one thread alone could not keep up.
                list(submitters.map(soak.submit, range(submitted, submitted + chunk)))
                submitted += chunk
                left += chunk
            if done >= next_mark or (submitted == args.jobs and left == 0):
                now = time.perf_counter()
                memory = rss(procs)
                row = dict(
                    finished=done,
                    rate=(done - window_done) / max(1e-9, now - window_start),
                    max_rss=max(m[0] for m in memory) / 2**20,
                    private=max(m[1] for m in memory) / 2**20,
                    db=database_bytes(app) / 2**20,
                    rows=app.store.count_jobs(),
                    dash=dashboard.rss() / 2**20 if dashboard else 0.0,
                )
                windows.append(row)
                print(f"{len(windows):>7} {done:>10,} {row['rate']:>8.0f} {row['max_rss']:>10.1f} "
                      f"{row['private']:>10.1f} {row['db']:>8.1f} {row['rows']:>9,}"
                      + (f" {row['dash']:>8.1f}" if dashboard else ""), flush=True)  # fmt: skip
                if vacuum_if_needed(app) and len(windows) == 1:
                    print("(autovacuum is off on this server: VACUUM after each window)")
                window_start, window_done = now, done
                while next_mark <= done:
                    next_mark += args.window
                if done >= args.jobs:
                    break
            if any(p.poll() is not None for p in procs):
                print("a worker died; see its log", file=sys.stderr)
                return 1
            time.sleep(0.2)
    finally:
        if dashboard is not None:
            dashboard.close()
        submitters.shutdown()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        app.close()
    total = time.perf_counter() - started
    first, last = windows[0], windows[-1]
    print(f"total {args.jobs:,} jobs in {total:.0f} s ({args.jobs / total:.0f} jobs/s)")
    print(f"throughput last/first window: {last['rate'] / first['rate']:.2f} (target 0.90-1.10)")
    print(f"worker RSS growth first->last window: {last['max_rss'] - first['max_rss']:+.1f} MB, "
          f"private {last['private'] - first['private']:+.1f} MB (target < 30 MB)")  # fmt: skip
    print(f"database size at the end: {last['db']:.1f} MB with {last['rows']:,} job rows")
    if dashboard is not None:
        print(f"dashboard server RSS: max {max(w['dash'] for w in windows):.1f} MB (target < 400)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
