"""Core throughput and latency of nbjobs on one database, printed as a table.

    .venv/bin/python benchmarks/bench_core.py                 # SQLite in a temp dir
    .venv/bin/python benchmarks/bench_core.py --url postgresql+psycopg://...

Measures: enqueue jobs/s (one transaction each), drain jobs/s of no-op jobs at
concurrency 1 and 4 (in-process worker), checkpoint overhead per step (a workflow of
1,000 no-op steps run with ``wf.run``, minus the same workflow with no steps), dispatch
latency from submit to start and to done with an idle worker (p50/p99), and peak RSS;
on SQLite, first the raw single-row commit rate of plain sqlite3 on this machine, to
compare figures measured on machines of different speed.  Every measure runs
``--repeat`` times (3 by default) in interleaved rounds, each on a fresh database; the
table gives the median and the range, and the latency percentiles of all rounds' samples
together, because this machine's speed drifts by a third within minutes.
SQLite runs in WAL mode with ``synchronous=NORMAL`` (the default; pass
``--synchronous FULL`` to measure the power-loss-safe mode).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import resource
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nbjobs


def make_app(url: str, synchronous: str) -> nbjobs.App:
    options = {"sqlite_synchronous": synchronous} if url.startswith("sqlite") else {}
    return nbjobs.App(url, poll_seconds=0.5, **options)


@contextlib.contextmanager
def no_worker_yet() -> Iterator[None]:
    """Submit with no worker running, on purpose: enqueue alone is measured, or the
    worker starts after the jobs are in.  nbjobs then says (a ``UserWarning`` and a log
    line) that no worker will run the job: help for a notebook user, noise here."""
    nbjobs_log = logging.getLogger("nbjobs")
    level = nbjobs_log.level
    nbjobs_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"job \S+ of workflow .* waits in queue", UserWarning)
            yield
    finally:
        nbjobs_log.setLevel(level)


def bench_enqueue(app: nbjobs.App, wf, n: int) -> float:
    with no_worker_yet():
        start = time.perf_counter()
        for i in range(n):
            wf.submit(i)
        return n / (time.perf_counter() - start)


def bench_drain(app: nbjobs.App, wf, n: int, concurrency: int) -> float:
    with no_worker_yet():
        handles = [wf.submit(i) for i in range(n)]
    start = time.perf_counter()
    app.start(concurrency=concurrency)
    # Jobs are claimed in submit order: watch the last one (a primary-key read) rather
    # than count the unfinished jobs, which would compete with the worker for the GIL.
    while handles[-1].status != "succeeded":
        time.sleep(0.005)
    while app.store.count_jobs(status="queued") or app.store.count_jobs(status="running"):
        time.sleep(0.002)
    elapsed = time.perf_counter() - start
    app.stop()
    return n / elapsed


def bench_checkpoints(app: nbjobs.App, steps: int) -> float:
    """Microseconds per step of a run of ``steps`` no-op checkpoints, less a run with none.

    The run with none is the fastest of 5: it is a fixed cost, and one slow sample of
    it (a busy machine) made a short run's overhead per step come out negative."""

    @app.workflow(name=f"steps-{steps}")
    def many(cs, count):
        for i in range(count):
            cs.checkpoint(f"s{i}", int, i)
        return count

    @app.workflow(name="no-steps")
    def none(cs, count):
        return count

    none.run(0)
    many.run(10)  # warm up
    base = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        none.run(0)
        base = min(base, time.perf_counter() - start)
    start = time.perf_counter()
    many.run(steps)
    total = time.perf_counter() - start
    return (total - base) / steps * 1e6


def bench_latency(app: nbjobs.App, samples: int) -> tuple[list[float], list[float]]:
    started: dict[int, float] = {}
    lock = threading.Lock()

    @app.workflow(name="latency")
    def probe(cs, i):
        with lock:
            started[i] = time.perf_counter()
        return i

    app.start(concurrency=4)
    time.sleep(0.5)
    to_start, to_done = [], []
    for i in range(samples):
        submitted = time.perf_counter()
        h = probe.submit(i)
        h.result(timeout=10)
        done = time.perf_counter()
        to_start.append((started[i] - submitted) * 1000)
        to_done.append((done - submitted) * 1000)
        time.sleep(0.005)
    app.stop()
    return to_start, to_done


def raw_commits(tmp: str, name: str = "raw", n: int = 5000, synchronous: str = "NORMAL") -> float:
    """Single-row commits/s of plain sqlite3 (WAL, ``synchronous`` NORMAL by default, no
    index) on this machine: the yardstick the issue's targets were set against (about
    56,000/s there); ``bench_peers.py`` also takes it in FULL mode."""
    import sqlite3

    conn = sqlite3.connect(f"{tmp}/{name}.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    start = time.perf_counter()
    for _ in range(n):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (v) VALUES ('x')")
        conn.execute("COMMIT")
    rate = n / (time.perf_counter() - start)
    conn.close()
    return rate


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def one_round(args: argparse.Namespace, tmp: str, n: int) -> tuple[dict[str, float], dict]:
    """Every measure once, each on a fresh database; returns (figures, latency samples)."""

    def fresh(name: str) -> nbjobs.App:
        url = args.url or f"sqlite:///{tmp}/{name}-{n}.db"
        return make_app(url, args.synchronous)

    figures: dict[str, float] = {}
    if not args.url:
        figures["raw sqlite3 commits/s (yardstick)"] = raw_commits(tmp, f"raw-{n}")

    app = fresh("enqueue")
    noop = app.workflow(name="noop")(lambda cs, i: i)
    figures["enqueue (jobs/s, 1 txn each)"] = bench_enqueue(app, noop, args.jobs)
    app.close()

    for concurrency in (1, 4):
        app = fresh(f"drain{concurrency}")
        noop = app.workflow(name="noop")(lambda cs, i: i)
        rate = bench_drain(app, noop, args.jobs, concurrency)
        figures[f"drain, concurrency {concurrency} (jobs/s)"] = rate
        app.close()

    app = fresh("steps")
    figures["checkpoint overhead (us/step)"] = bench_checkpoints(app, args.steps)
    app.close()

    app = fresh("latency")
    to_start, to_done = bench_latency(app, args.samples)
    app.close()
    return figures, {"start": to_start, "done": to_done}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url")
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--synchronous", default="NORMAL")
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds of every measure (the median is shown)"
    )
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="nbjobs-bench-")
    rounds: dict[str, list[float]] = {}
    samples: dict[str, list[float]] = {"start": [], "done": []}
    for n in range(args.repeat):
        figures, latency = one_round(args, tmp, n)
        for name, value in figures.items():
            rounds.setdefault(name, []).append(value)
        for kind, values in latency.items():
            samples[kind].extend(values)
            rounds.setdefault(f"submit -> {kind} p50 (ms), per round", []).append(pct(values, 0.5))

    rows = [
        (name, f"{statistics.median(values):,.{2 if 'ms' in name else 0}f}", spread(values))
        for name, values in rounds.items()
    ]
    for kind in ("start", "done"):
        values = samples[kind]
        rows.append(
            (
                f"submit -> {kind} p50 / p99 (ms), all rounds",
                f"{pct(values, 0.5):.2f} / {pct(values, 0.99):.2f}",
                "",
            )
        )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows.append(("peak RSS (MB)", f"{rss:,.0f}", ""))

    backend = (args.url or "sqlite").split(":")[0]
    mode = f"WAL, synchronous={args.synchronous}" if backend.startswith("sqlite") else ""
    print(
        f"\nnbjobs core benchmark: {backend} {mode}, {args.jobs} jobs, "
        f"median of {args.repeat} rounds (min to max)"
    )
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':{width}}  {'median':>13}  range")
    print(f"{'-' * width}  {'-' * 13}  -----")
    for name, value, span in rows:
        print(f"{name:{width}}  {value:>13}  {span}")


def spread(values: list[float]) -> str:
    if len(values) < 2:
        return ""
    digits = 2 if max(values) < 100 else 0
    return f"{min(values):,.{digits}f} to {max(values):,.{digits}f}"


if __name__ == "__main__":
    main()
