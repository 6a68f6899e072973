"""Benchmark: a cached step's hit against an uncached no-op checkpoint (µs per step).

Each job runs ``STEPS`` checkpoints inline (``wf.run``) in one of two workflows:

* ``uncached``: ``cs.checkpoint(name, noop)`` for a no-op function: the run, its
  encoding and the fenced checkpoint write;
* ``cached``: the same steps under ``cache=True``, after one job of this process made
  the entries (so the process knows them): each step is one fenced checkpoint write that
  copies the entry's value, with a ``cached_from`` mark, and no read.

The per-step figure is (time of a job) / ``STEPS``, so the job's own submit, claim and
finish are spread over the steps; both workflows pay the same.  Backends: SQLite with
``synchronous=NORMAL`` and ``FULL`` (compare in the same durability mode), and
PostgreSQL (``NBJOBS_BENCH_PG``, else a fresh database on the test server).

    python benchmarks/bench_cache.py [--steps 200] [--jobs 5]

The machine the figures were taken on was shared and loaded: they are noisy; compare
the two columns of one row, not rows of different runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.exc import OperationalError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.backends

import nbjobs

log = logging.getLogger("bench_cache")


def noop(i: int) -> int:
    return i


def hit(i: int) -> int:
    """The cached step: a function of its own, since ``nbjobs.step`` marks the
    function it is given (marking ``noop`` would make the uncached steps cached too)."""
    return i


@contextmanager
def sqlite_url(synchronous: str) -> Iterator[tuple[str, dict]]:
    with tempfile.TemporaryDirectory() as folder:
        yield f"sqlite:///{folder}/bench.db", {"sqlite_synchronous": synchronous}


@contextmanager
def postgres_url() -> Iterator[tuple[str, dict]]:
    """``NBJOBS_BENCH_PG`` as it is, or else a fresh database on the test server
    (``python -m tests.services start``), dropped afterwards."""
    if os.environ.get("NBJOBS_BENCH_PG"):
        yield os.environ["NBJOBS_BENCH_PG"], {}
        return
    from tests import backends

    with backends.server_database("postgres") as url:
        yield url, {}


def measure(url: str, options: dict, steps: int, jobs: int) -> tuple[float, float]:
    """(µs per uncached no-op step, µs per cached hit), medians over ``jobs`` jobs."""
    app = nbjobs.App(url, **options)
    try:
        cached_step = nbjobs.step(cache=True)(hit)

        @app.workflow(name="bench_uncached")
        def uncached(cs: nbjobs.CallState, n: int) -> int:
            for i in range(n):
                cs.checkpoint(f"s{i}", noop, i)
            return n

        @app.workflow(name="bench_cached")
        def cached(cs: nbjobs.CallState, n: int) -> int:
            for i in range(n):
                cs.checkpoint(f"s{i}", cached_step, i)
            return n

        cached.run(steps)  # makes the entries
        uncached.run(steps)  # warms the same paths
        plain: list[float] = []
        hits: list[float] = []
        for _ in range(jobs):  # interleaved: the machine's load hits both alike
            for wf, out in ((uncached, plain), (cached, hits)):
                started = time.perf_counter()
                wf.run(steps)
                out.append((time.perf_counter() - started) / steps * 1e6)
        for name, hits_expected in (("bench_cached", True), ("bench_uncached", False)):
            newest = max(app.jobs(workflow=name), key=lambda h: h.id)
            frame = newest.checkpoints_frame()
            marked = frame["cached_from"].notna()
            assert marked.all() if hits_expected else not marked.any(), f"{name}: wrong cache use"
        return statistics.median(plain), statistics.median(hits)
    finally:
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    cases = [
        ("SQLite NORMAL", lambda: sqlite_url("NORMAL")),
        ("SQLite FULL", lambda: sqlite_url("FULL")),
    ]
    if not args.no_postgres:
        cases.append(("PostgreSQL", postgres_url))
    rows = []
    for label, make in cases:
        try:
            with make() as (url, options):
                rows.append((label, *measure(url, options, args.steps, args.jobs)))
        except OperationalError as exc:  # a server that is not reachable here
            log.warning("%s skipped: %s", label, exc)
    print(f"{args.steps} steps per job, median of {args.jobs} jobs (noisy: a shared machine)")
    print(f"{'backend':<15} {'no-op step µs':>14} {'cache hit µs':>13} {'hit/no-op':>10}")
    for label, plain, hit in rows:
        print(f"{label:<15} {plain:>14.1f} {hit:>13.1f} {hit / plain:>10.2f}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
