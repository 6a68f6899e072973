"""Sweeps: ``app.submit_many`` of N no-op specs in one transaction, printed as a table.

    .venv/bin/python benchmarks/bench_groups.py                        # SQLite and PostgreSQL
    .venv/bin/python benchmarks/bench_groups.py --backends sqlite --jobs 20000

Each round submits ``--jobs`` specs of a no-op workflow to a fresh database (SQLite in a
temporary folder, the other backends on the local test server, as ``bench_backends``)
with no worker running, and measures the seconds from the call to the returned
``JobGroup``: building the rows (encoding every input) and the one transaction that
inserts the jobs, the group and its members.  Then it reads the group's counts once, to
check every job is there (not timed).  The table shows the best and the median rate
over ``--repeat`` rounds.  Targets: 50,000 jobs/s on SQLite, 20,000 on PostgreSQL.

Then (``--drain N``, 10,000 by default; 0 skips it) a group of N no-op jobs is drained by
an in-process worker at concurrency 4, with the group's live display (``group.watch()``)
open and without, the rounds alternated; target: the display costs at most 5%.  On a
shared, loaded machine the spread between rounds is wider than that: repeat more.
SQLite runs with ``synchronous=NORMAL`` (nbjobs' default), PostgreSQL with its defaults
(``synchronous_commit=on``): one commit each, so the durability mode barely matters.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nbjobs

TARGETS = {"sqlite": 50_000, "postgres": 20_000}


@contextlib.contextmanager
def fresh(backend: str, tmp: Path, label: str) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp / (label + '.db')}"
    elif backend == "duckdb":
        yield f"duckdb:///{tmp / (label + '.duckdb')}"
    else:
        from tests import backends

        with backends.server_database(backend) as url:
            yield url


def run_once(url: str, n: int) -> tuple[float, float]:
    """(wall, this process's CPU) seconds for one ``submit_many`` of ``n`` no-op specs."""
    app = nbjobs.App(url)
    try:

        @app.workflow(name="noop")
        def noop(cs: nbjobs.CallState, i: int) -> int:
            return i

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no live worker": none is meant to run
            app.submit_many([noop.spec(i) for i in range(10)])  # warm up the connections
            specs = [noop.spec(i) for i in range(n)]
            start, cpu = time.perf_counter(), time.process_time()
            group = app.submit_many(specs)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        counts = group.status_counts()
        assert counts["queued"] == n, counts
        return elapsed, cpu
    finally:
        app.close()


def drain_once(url: str, n: int, watched: bool) -> float:
    """Jobs/s draining a group of ``n`` no-op jobs with an in-process worker (concurrency
    4), with the group's live display open (``watched``) or not."""
    app = nbjobs.App(url)
    try:

        @app.workflow(name="noop")
        def noop(cs: nbjobs.CallState, i: int) -> int:
            return i

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            group = noop.map(range(n))
        view = group.watch() if watched else None
        try:
            start = time.perf_counter()
            with app.running(concurrency=4):
                group.wait(timeout=3600)
            return n / (time.perf_counter() - start)
        finally:
            if view is not None:
                view.close()
    finally:
        app.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--drain", type=int, default=10_000, help="jobs of the drain with/without watch (0: skip)"
    )
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            rates, cpu_rates = [], []
            for r in range(args.repeat):
                with fresh(backend, Path(tmp), f"groups-{backend}-{r}") as url:
                    wall, cpu = run_once(url, args.jobs)
                rates.append(args.jobs / wall)
                cpu_rates.append(args.jobs / cpu)
            rows.append((backend, max(rates), statistics.median(rates), max(cpu_rates)))

    print(f"\nsubmit_many of {args.jobs:,} no-op specs, one transaction (jobs/s)")
    print(f"{'database':10} {'best':>10} {'median':>10} {'per CPU s':>10} {'target':>10}")
    for backend, best, median, per_cpu in rows:
        target = f"{TARGETS[backend]:,}" if backend in TARGETS else "-"
        print(f"{backend:10} {best:>10,.0f} {median:>10,.0f} {per_cpu:>10,.0f} {target:>10}")
    print(
        "per CPU s: jobs per second of this process's CPU time (the whole cost for SQLite and\n"
        "DuckDB, which run in it; the client's share only for a server database): on a\n"
        "loaded machine it tells what an idle one would do better than the wall clock."
    )
    if args.drain:
        drains = []
        with tempfile.TemporaryDirectory() as tmp:
            for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
                plain, watched = [], []
                for r in range(args.repeat):  # alternated, so that load drifts hit both
                    for on, into in ((False, plain), (True, watched)):
                        label = f"drain-{backend}-{r}-{on}"
                        with fresh(backend, Path(tmp), label) as url:
                            into.append(drain_once(url, args.drain, on))
                drains.append((backend, statistics.median(plain), statistics.median(watched)))
        print(f"\ndrain of a {args.drain:,}-job group, in-process worker, concurrency 4 (jobs/s)")
        print(f"{'database':10} {'no watch':>10} {'watch()':>10} {'change':>8} {'target':>8}")
        for backend, plain_rate, watched_rate in drains:
            change = (watched_rate - plain_rate) / plain_rate * 100
            print(
                f"{backend:10} {plain_rate:>10,.0f} {watched_rate:>10,.0f} {change:>7.1f}% {'>= -5%':>8}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
