"""nbjobs, measured as ``bench_core.py`` and ``bench_backends.py`` measure it.

Enqueue, checkpoint overhead and the drain by worker processes reuse those scripts'
functions; the in-process drain ends on a :class:`~benchmarks.peers.Countdown`, as every
peer's does here, instead of ``bench_core``'s poll of the last handle, so that no
system's completion check differs from another's.  The plain sqlite3 commit (the
yardstick) is measured here too: it needs nothing but Python.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import nbjobs
from benchmarks import bench_backends, bench_core
from benchmarks.peers import Countdown, wait_until


def raw_commit(path: str, jobs: int, synchronous: str) -> float:
    """Single-row commits/s of plain sqlite3 in WAL mode with ``synchronous``."""
    target = Path(path)
    return bench_core.raw_commits(str(target.parent), target.stem, jobs, synchronous)


def enqueue(url: str, jobs: int, synchronous: str = "NORMAL") -> float:
    app = bench_core.make_app(url, synchronous)
    noop = app.workflow(name="noop")(lambda cs, i: i)
    try:
        return bench_core.bench_enqueue(app, noop, jobs)
    finally:
        app.close()


def drain(url: str, jobs: int, concurrency: int, synchronous: str = "NORMAL") -> float:
    """Jobs/s of an in-process worker of ``concurrency`` slots, from its start to the
    last job recorded as succeeded."""
    app = bench_core.make_app(url, synchronous)
    countdown = Countdown(jobs)

    @app.workflow(name="noop")
    def noop(cs: nbjobs.CallState, i: int) -> int:
        countdown.hit()
        return i

    with bench_core.no_worker_yet():
        for i in range(jobs):
            noop.submit(i)
    try:
        start = time.perf_counter()
        app.start(concurrency=concurrency)
        countdown.wait()
        wait_until(lambda: app.store.count_jobs(status="succeeded") >= jobs)
        elapsed = time.perf_counter() - start
    finally:
        app.stop()
        app.close()
    return jobs / elapsed


def drain_processes(url: str, jobs: int, processes: int) -> float:
    """Jobs/s of ``processes`` ``nbjobs worker -c 4`` processes (``bench_backends``)."""
    bench = nbjobs.App(url)
    bench_backends.register(bench)
    try:
        with tempfile.TemporaryDirectory(prefix="nbjobs-peers-logs-") as logs:
            return bench_backends.bench_drain(bench, url, jobs, processes, Path(logs))
    finally:
        bench.close()


def checkpoint(url: str, steps: int, synchronous: str = "NORMAL") -> float:
    """Microseconds per no-op checkpoint of ``wf.run`` (``bench_core``)."""
    app = bench_core.make_app(url, synchronous)
    try:
        return bench_core.bench_checkpoints(app, steps)
    finally:
        app.close()


MEASURES = {
    "raw_commit": raw_commit,
    "enqueue": enqueue,
    "drain": drain,
    "drain_processes": drain_processes,
    "checkpoint": checkpoint,
}
