"""nbjobs on PostgreSQL, MariaDB and SQLite with real worker processes, printed as a table.

    .venv/bin/python benchmarks/bench_backends.py                  # both local servers
    .venv/bin/python benchmarks/bench_backends.py --backends postgres --jobs 5000
    .venv/bin/python benchmarks/bench_backends.py --backends sqlite

Each backend gets a fresh database on the local test server (``tests.services`` starts
the server when it is down; the database is dropped afterwards), or a new SQLite file in
a temporary directory.  Columns:

- enqueue jobs/s: ``wf.submit`` from one process, one transaction per job;
- drain jobs/s with 1 and 4 ``nbjobs worker`` processes (``-c 4`` each) of no-op jobs:
  the queue is paused while the jobs are submitted and the workers start, and the clock
  runs from ``resume_queue`` to the last job done;
- checkpoint overhead per step: a 500-step workflow run with ``wf.run`` in this process,
  minus the same workflow with no steps, per step;
- dispatch latency p50/p99: an idle worker in another process, one job at a time; the
  job returns its start time, minus the submit time (same host, same clock).
  PostgreSQL wakes the worker by LISTEN/NOTIFY; MariaDB by its idle worker's wake lock
  and ``KILL CONNECTION`` (see ``nbjobs.dialects.mysql``), with the poll of ``--poll``
  seconds as the fallback; SQLite by the idle worker's watch of ``PRAGMA data_version``
  (see ``nbjobs.dialects.sqlite_wake``), with the default poll of 1 s as the fallback.

Every measure runs ``--repeat`` times (3 by default); a cell is the median with the
range, and the latency percentiles are of all rounds' samples together.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nbjobs  # noqa: E402
from benchmarks.bench_core import no_worker_yet, pct  # noqa: E402

WORKER_TARGET = "benchmarks.bench_backends:app"


def _worker_app() -> nbjobs.App:
    worker = nbjobs.App(
        os.environ["NBJOBS_URL"], poll_seconds=float(os.environ.get("NBJOBS_BENCH_POLL", "1"))
    )
    register(worker)
    return worker


def register(target: nbjobs.App) -> None:
    @target.workflow(name="noop")
    def noop(cs: nbjobs.CallState, n: int) -> int:
        return n

    @target.workflow(name="started")
    def started(cs: nbjobs.CallState) -> float:
        return time.time()


# ``nbjobs worker benchmarks.bench_backends:app`` imports this module with NBJOBS_URL set.
app = _worker_app() if os.environ.get("NBJOBS_BENCH_WORKER") else None


def start_workers(url: str, count: int, poll: float, logs: Path) -> list[subprocess.Popen]:
    env = dict(os.environ, NBJOBS_URL=url, NBJOBS_BENCH_WORKER="1", NBJOBS_BENCH_POLL=str(poll))
    procs = []
    for i in range(count):
        with open(logs / f"worker{i}.log", "ab") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "nbjobs.cli", "--log-level", "WARNING", "worker",
                     WORKER_TARGET, "-c", "4"],
                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                )
            )  # fmt: skip
    return procs


def stop_workers(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()


def wait_for(predicate, timeout: float = 600.0, poll: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("benchmark timed out")
        time.sleep(poll)


def bench_enqueue(bench: nbjobs.App, n: int) -> float:
    wf = bench.get_workflow("noop")
    with no_worker_yet():
        start = time.perf_counter()
        for i in range(n):
            wf.submit(i)
        return n / (time.perf_counter() - start)


def bench_drain(bench: nbjobs.App, url: str, n: int, processes: int, logs: Path) -> float:
    bench.pause_queue("default")
    wf = bench.get_workflow("noop")
    with no_worker_yet():
        handles = [wf.submit(i) for i in range(n)]
    procs = start_workers(url, processes, 1.0, logs)
    try:
        wait_for(lambda: len(bench.workers()) >= processes, timeout=120)
        start = time.perf_counter()
        bench.resume_queue("default")
        # Jobs are claimed in submit order: watch the last one (a primary-key read) rather
        # than count the finished jobs every few milliseconds, which loads the server.
        wait_for(lambda: handles[-1].status == "succeeded", poll=0.02)
        wait_for(lambda: bench.store.count_jobs(status="succeeded") >= n, poll=0.002)
        return n / (time.perf_counter() - start)
    finally:
        stop_workers(procs)


def bench_checkpoints(bench: nbjobs.App, steps: int) -> float:
    @bench.workflow(name=f"steps-{steps}")
    def many(cs: nbjobs.CallState, count: int) -> int:
        for i in range(count):
            cs.checkpoint(f"s{i}", int, i)
        return count

    many.run(0)  # warm up
    start = time.perf_counter()
    many.run(0)
    base = time.perf_counter() - start
    start = time.perf_counter()
    many.run(steps)
    total = time.perf_counter() - start
    return (total - base) / steps * 1e6


def bench_latency(bench: nbjobs.App, url: str, samples: int, poll: float, logs: Path):
    procs = start_workers(url, 1, poll, logs)
    try:
        wait_for(lambda: len(bench.workers()) >= 1, timeout=120)
        wf = bench.get_workflow("started")
        wf.submit().result(timeout=60)  # warm up the worker's pool
        latencies = []
        for _ in range(samples):
            time.sleep(0.02)  # let the worker go idle
            submitted = time.time()
            started = wf.submit().result(timeout=60)
            latencies.append((started - submitted) * 1000)
        return latencies
    finally:
        stop_workers(procs)


def run_backend(
    backend: str, args: argparse.Namespace, logs: Path
) -> tuple[dict[str, float], list[float]]:
    """One round of every measure on ``backend``: (figures, latency samples in ms)."""
    from tests import backends

    out: dict[str, float] = {}
    # The default poll where wake-ups are pushed or watched; MariaDB's is --poll.
    poll = args.poll if backend == "mysql" else 1.0

    def fresh():
        if backend == "sqlite":
            return _sqlite_file()
        return backends.server_database(backend)

    with fresh() as url:
        bench = nbjobs.App(url, poll_seconds=0.5)
        register(bench)
        out["enqueue jobs/s"] = bench_enqueue(bench, args.jobs)
        bench.close()
    for processes in (1, 4):
        with fresh() as url:
            bench = nbjobs.App(url)
            register(bench)
            rate = bench_drain(bench, url, args.jobs, processes, logs)
            out[f"drain jobs/s, {processes} worker process{'es' if processes > 1 else ''}"] = rate
            bench.close()
    with fresh() as url:
        bench = nbjobs.App(url)
        out["checkpoint overhead us/step"] = bench_checkpoints(bench, args.steps)
        bench.close()
    with fresh() as url:
        bench = nbjobs.App(url)
        register(bench)
        latencies = bench_latency(bench, url, args.samples, poll, logs)
        out["dispatch latency p50 ms, per round"] = statistics.median(latencies)
        bench.close()
    return out, latencies


@contextlib.contextmanager
def _sqlite_file() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="nbjobs-bench-sqlite-") as folder:
        yield f"sqlite:///{folder}/bench.db"


def cell(values: list[float]) -> str:
    """The median, with the range when there are several rounds."""
    digits = 1 if max(values) < 100 else 0
    text = f"{statistics.median(values):,.{digits}f}"
    if len(values) > 1:
        text += f" ({min(values):,.{digits}f}-{max(values):,.{digits}f})"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="postgres,mysql")
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--poll", type=float, default=0.1, help="MariaDB worker poll (s)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds of every measure (the median is shown)"
    )
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="nbjobs-bench-"))
    names = [b.strip() for b in args.backends.split(",") if b.strip()]
    results: dict[str, dict[str, str]] = {}
    for backend in names:
        rounds: dict[str, list[float]] = {}
        samples: list[float] = []
        for _ in range(args.repeat):
            figures, latencies = run_backend(backend, args, logs)
            for name, value in figures.items():
                rounds.setdefault(name, []).append(value)
            samples.extend(latencies)
        results[backend] = {name: cell(values) for name, values in rounds.items()}
        results[backend]["dispatch latency p50 ms, all rounds"] = f"{pct(samples, 0.5):.1f}"
        results[backend]["dispatch latency p99 ms, all rounds"] = f"{pct(samples, 0.99):.1f}"
    titles = {
        "postgres": "PostgreSQL",
        "mysql": f"MariaDB (fallback poll {args.poll:g} s)",
        "sqlite": "SQLite (NORMAL)",
    }
    rows = list(next(iter(results.values())))
    width = max(len(r) for r in rows) + 2
    header = "".join(f"{titles[b]:>28}" for b in names)
    print(f"\n{'':<{width}}{header}")
    for row in rows:
        print(f"{row:<{width}}" + "".join(f"{results[b][row]:>28}" for b in names))
    print(f"\n({args.jobs} jobs; median of {args.repeat} rounds (min-max); worker logs in {logs})")


if __name__ == "__main__":
    main()
