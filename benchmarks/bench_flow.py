"""What flow control costs, and whether a binding limit is reached, printed as tables.

    .venv/bin/python benchmarks/bench_flow.py                      # SQLite and PostgreSQL
    .venv/bin/python benchmarks/bench_flow.py --backends sqlite --jobs 2000

1. Drain ``--jobs`` no-op jobs with 4 ``nbjobs worker`` processes (``-c 4`` each), the
   queue without limits and then with ``concurrency`` far above what can run (a limit
   that never binds: every claim takes the limited path, locks the limit row and counts
   the running jobs).  The queue is paused while the jobs are submitted and the workers
   start; the clock runs from ``resume_queue`` to the last job done.  The target: the
   limited drain keeps at least 85% of the unlimited one's jobs/s.
2. A binding limit: a ``concurrency=4`` queue drained by 4 processes of jobs that sleep
   ``--sleep`` seconds; each job returns when its body started and ended, and the table
   shows the mean number of bodies running over 4 (first start to last end), the share
   of the time with all 4 running, and the most ever running at once (never above 4).

Each drain runs in a fresh database (a drain leaves dead rows behind that slow the next
one: measured one after the other in one database, the second drain lost 5-10%), the
limited and unlimited drains alternating in which goes first; medians of ``--rounds``.
Numbers on a shared machine are noisy: compare the columns of one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nbjobs  # noqa: E402
from benchmarks.bench_backends import stop_workers, wait_for  # noqa: E402
from benchmarks.bench_core import no_worker_yet  # noqa: E402

WORKER_TARGET = "benchmarks.bench_flow:app"


def register(target: nbjobs.App) -> None:
    @target.workflow(name="noop")
    def noop(cs: nbjobs.CallState, n: int) -> int:
        return n

    @target.workflow(name="nap", queue="capped")
    def nap(cs: nbjobs.CallState, seconds: float) -> tuple[float, float]:
        start = time.time()
        time.sleep(seconds)
        return start, time.time()


def _worker_app() -> nbjobs.App:
    worker = nbjobs.App(os.environ["NBJOBS_URL"], poll_seconds=0.05)
    register(worker)
    return worker


# ``nbjobs worker benchmarks.bench_flow:app`` imports this module with NBJOBS_URL set.
app = _worker_app() if os.environ.get("NBJOBS_BENCH_WORKER") else None


def start_workers(url: str, count: int, logs: Path, queues: str) -> list:
    import subprocess

    env = dict(os.environ, NBJOBS_URL=url, NBJOBS_BENCH_WORKER="1")
    procs = []
    for i in range(count):
        with open(logs / f"worker{i}.log", "ab") as log:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "nbjobs.cli",
                        "--log-level",
                        "WARNING",
                        "worker",
                        WORKER_TARGET,
                        "-c",
                        "4",
                        "-q",
                        queues,
                    ],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    return procs


def drain(url: str, n: int, limited: bool, logs: Path) -> float:
    """jobs/s of a drain of ``n`` no-op jobs by 4 processes, with a non-binding limit
    on the queue or none."""
    bench = nbjobs.App(url)
    register(bench)
    try:
        bench.set_queue("default", concurrency=100_000 if limited else None)
        bench.pause_queue("default")
        wf = bench.get_workflow("noop")
        with no_worker_yet():
            bench.submit_many([wf.spec(i) for i in range(n)])
        procs = start_workers(url, 4, logs, "default")
        try:
            wait_for(lambda: len(bench.workers()) >= 4, timeout=120)
            start = time.perf_counter()
            bench.resume_queue("default")
            wait_for(lambda: bench.store.count_jobs(status="succeeded") >= n, poll=0.01)
            return n / (time.perf_counter() - start)
        finally:
            stop_workers(procs)
            bench.purge(older_than=0)
    finally:
        bench.close()


def occupancy(url: str, n: int, sleep: float, logs: Path) -> tuple[float, float, int]:
    """(mean running / 4, share of the time with 4 running, most running at once) of a
    ``concurrency=4`` queue drained by 4 processes."""
    bench = nbjobs.App(url)
    register(bench)
    try:
        bench.set_queue("capped", concurrency=4)
        bench.pause_queue("capped")
        wf = bench.get_workflow("nap")
        with no_worker_yet():
            group = bench.submit_many([wf.spec(sleep) for _ in range(n)])
        procs = start_workers(url, 4, logs, "capped")
        try:
            wait_for(lambda: len(bench.workers()) >= 4, timeout=120)
            bench.resume_queue("capped")
            spans = [tuple(h.result(timeout=600)) for h in group.jobs]
        finally:
            stop_workers(procs)
    finally:
        bench.close()
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    at_four = 0.0
    last = events[0][0]
    for moment, step in events:
        if running >= 4:
            at_four += moment - last
        running += step
        peak = max(peak, running)
        last = moment
    wall = events[-1][0] - events[0][0]
    busy = sum(e - s for s, e in spans)
    return busy / wall / 4, at_four / wall, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--occupancy-jobs", type=int, default=200)
    parser.add_argument("--sleep", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    print(
        f"drain of {args.jobs} no-op jobs by 4 worker processes (-c 4), jobs/s, "
        f"medians of {args.rounds} rounds"
    )
    print(
        f"{'backend':<10} {'no limit':>10} {'limit':>10} {'ratio':>7}  "
        f"{'mean/4':>7} {'4 running':>9} {'peak':>5}"
    )
    for backend in args.backends.split(","):
        plain, limited, occupied = [], [], []
        for i in range(args.rounds):
            # Each drain in a fresh database (a drain leaves dead rows that slow the
            # next one), the two kinds alternating in which goes first.
            for limit in (bool(i % 2), not i % 2):
                drained = fresh(backend, lambda url, logs, limit=limit: drain(
                    url, args.jobs, limit, logs
                ))  # fmt: skip
                (limited if limit else plain).append(drained)
            occupied.append(
                fresh(
                    backend, lambda url, logs: occupancy(url, args.occupancy_jobs, args.sleep, logs)
                )
            )
        p, lim = statistics.median(plain), statistics.median(limited)
        mean = statistics.median(o[0] for o in occupied)
        share = statistics.median(o[1] for o in occupied)
        peak = max(o[2] for o in occupied)
        print(
            f"{backend:<10} {p:>10.0f} {lim:>10.0f} {lim / p:>7.0%}  "
            f"{mean:>7.1%} {share:>9.1%} {peak:>5}"
        )


def fresh(backend: str, run: Any) -> Any:
    """``run(url, logs)`` on a fresh database of ``backend``."""
    from tests import backends

    with tempfile.TemporaryDirectory() as tmp, backends.fresh_database(backend, Path(tmp)) as url:
        return run(url, Path(tmp))


if __name__ == "__main__":
    main()
