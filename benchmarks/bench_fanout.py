"""Fan-out / fan-in: a parent fanning out to N no-op children, printed as a table.

    .venv/bin/python benchmarks/bench_fanout.py                  # 10,000 children, 3 rounds
    .venv/bin/python benchmarks/bench_fanout.py --backends sqlite,postgres --sizes 1000,10000
    .venv/bin/python benchmarks/bench_fanout.py --compare /path/to/other/checkout

What is timed: the seconds from ``parent.submit(N)`` to ``h.result()`` returning, with an
in-process worker already running at concurrency 4 (the parent gives its slot back
while it waits, so four children run at a time) and warmed up by a fan-out of one.
That covers the parent's first run (building N specs, inserting the children and the
fan-out record in one transaction), every child's claim, run and finish (each finish
also checks the fan-in), the fan-in decision (all N outcomes in one JSON text), and
the parent's replay (decoding the N outcomes) up to its own result.  The split columns
come from the same round: *insert* is submit -> first child running, *children* is
first child running -> the parent's replay starting, *replay* is the rest.

Each round runs in a fresh process on a fresh database: SQLite in a temporary folder
(``synchronous=NORMAL``, nbjobs' default, and ``FULL``), the other backends on the local
test server (``tests.backends.server_database``).  The table shows the median of
``--repeat`` rounds (the split columns are the round with the median total).
``--compare PATH`` runs every round a second time, interleaved, with the nbjobs found at
PATH (an older checkout), so a before/after table comes from one run on one machine.
Targets (issue #23): 10,000 children in at most 5 s on SQLite, 10 s on PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
# ``--compare`` runs rounds with another checkout's nbjobs: it goes first on the path.
sys.path.insert(0, os.environ.get("NBJOBS_BENCH_SOURCE") or str(_ROOT))
if str(_ROOT) not in sys.path:
    sys.path.append(str(_ROOT))  # ``tests.backends``, for a fresh server database

import nbjobs  # noqa: E402

TARGETS = {("sqlite", 10_000): 5.0, ("sqlite-full", 10_000): 5.0, ("postgres", 10_000): 10.0}
BACKENDS = ("sqlite", "sqlite-full", "postgres", "mysql", "duckdb")


def run_once(url: str, n: int, concurrency: int, **options: object) -> dict[str, float]:
    """One timed fan-out of ``n`` no-op children on ``url``: total and split seconds."""
    marks: dict[str, float] = {}
    app = nbjobs.App(url, poll_seconds=0.5, **options)  # type: ignore[arg-type]
    try:

        @app.workflow
        def noop(cs: nbjobs.CallState, i: int) -> int:
            marks.setdefault("first_child", time.perf_counter())
            return i

        @app.workflow
        def parent(cs: nbjobs.CallState, count: int) -> int:
            marks["parent_run"] = time.perf_counter()  # the last one: the replay
            outcomes = cs.fan_out("children", [noop.spec(i) for i in range(count)])
            return len(outcomes)

        app.start(concurrency=concurrency)
        parent.submit(1).result(timeout=60)  # warm up: connections, compiled statements
        marks.clear()
        start = time.perf_counter()
        assert parent.submit(n).result(timeout=900) == n
        end = time.perf_counter()
        return {
            "total": end - start,
            "insert": marks["first_child"] - start,
            "children": marks["parent_run"] - marks["first_child"],
            "replay": end - marks["parent_run"],
        }
    finally:
        app.close()


def one_round(backend: str, n: int, concurrency: int) -> dict[str, float]:
    """A round on a fresh database of ``backend`` (in this process)."""
    if backend.startswith("sqlite"):
        with tempfile.TemporaryDirectory() as tmp:
            synchronous = "FULL" if backend == "sqlite-full" else "NORMAL"
            return run_once(
                f"sqlite:///{tmp}/fanout.db", n, concurrency, sqlite_synchronous=synchronous
            )
    if backend == "duckdb":
        with tempfile.TemporaryDirectory() as tmp:
            return run_once(f"duckdb:///{tmp}/fanout.duckdb", n, concurrency)
    from tests import backends

    with backends.server_database(backend) as url:
        return run_once(url, n, concurrency)


def spawn_round(backend: str, n: int, concurrency: int, source: str | None) -> dict[str, float]:
    """A round in a fresh process (``source``: the checkout whose nbjobs it imports)."""
    env = dict(os.environ)
    if source:
        env["NBJOBS_BENCH_SOURCE"] = source
        env["PYTHONPATH"] = os.pathsep.join([source, str(_ROOT)])
    out = subprocess.run(
        [sys.executable, __file__, "--one", backend, str(n), str(concurrency)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backends", default="sqlite,sqlite-full,postgres")
    parser.add_argument("--sizes", default="10000")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--compare", metavar="PATH", help="also time the nbjobs at PATH")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        backend, n, concurrency = args.one
        print(json.dumps(one_round(backend, int(n), int(concurrency))))
        return 0
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown backends {unknown}; choose from {', '.join(BACKENDS)}")
    sizes = [int(s) for s in args.sizes.split(",")]
    variants = [("this", None)] + ([("compare", args.compare)] if args.compare else [])

    rows = []
    for backend in backends:
        for n in sizes:
            rounds: dict[str, list[dict[str, float]]] = {label: [] for label, _ in variants}
            for _ in range(args.repeat):
                for label, source in variants:  # interleaved: the load hits both alike
                    result = spawn_round(backend, n, args.concurrency, source)
                    rounds[label].append(result)
                    print(f"{backend} {label} {n}: {result['total']:.2f} s", file=sys.stderr)
            for label, _ in variants:
                runs = sorted(rounds[label], key=lambda r: r["total"])
                middle = runs[len(runs) // 2]
                median = statistics.median(r["total"] for r in runs)
                rows.append((backend, label, n, median, middle))

    print(
        f"\nfan-out to N no-op children, in-process worker at concurrency {args.concurrency}, "
        f"submit -> result, median of {args.repeat} (fresh process and database each)"
    )
    header = (
        f"{'database':12} {'code':8} {'children':>8} {'median s':>9} {'insert s':>9} "
        f"{'children s':>10} {'replay s':>9} {'children/s':>10} {'target s':>9}"
    )
    print(header)
    for backend, label, n, median, middle in rows:
        target = TARGETS.get((backend, n))
        print(
            f"{backend:12} {label:8} {n:>8} {median:>9.2f} {middle['insert']:>9.2f} "
            f"{middle['children']:>10.2f} {middle['replay']:>9.2f} {n / median:>10,.0f} "
            f"{'-' if target is None else f'{target:.1f}':>9}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
