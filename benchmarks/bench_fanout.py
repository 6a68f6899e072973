"""Fan-out / fan-in latency: a parent fanning out to N no-op children, printed as a table.

    .venv/bin/python benchmarks/bench_fanout.py                      # SQLite in a temp dir
    .venv/bin/python benchmarks/bench_fanout.py --url postgresql+psycopg://...

For each size, the seconds from ``parent.submit(...)`` to ``h.result()`` with an
in-process worker already running at concurrency 4 (the parent gives its slot back
while it waits, so four children run at a time).  Each size is run ``--repeat`` times
on a fresh database; the table shows the best and the median.  Targets on SQLite:
100 children in <= 0.2 s, 1,000 in <= 2 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nbjobs

TARGETS = {100: 0.2, 1000: 2.0}


def run_once(url: str, n: int, concurrency: int) -> float:
    app = nbjobs.App(url, poll_seconds=0.5)
    try:

        @app.workflow
        def noop(cs: nbjobs.CallState, i: int) -> int:
            return i

        @app.workflow
        def parent(cs: nbjobs.CallState, count: int) -> int:
            outcomes = cs.fan_out("children", [noop.spec(i) for i in range(count)])
            return len(outcomes)

        app.start(concurrency=concurrency)
        parent.submit(1).result(timeout=60)  # warm up: connections, compiled statements
        start = time.perf_counter()
        assert parent.submit(n).result(timeout=600) == n
        return time.perf_counter() - start
    finally:
        app.close()


def fresh_sqlite(tmp: Path, label: str) -> str:
    return f"sqlite:///{tmp / (label + '.db')}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="also measure this database (e.g. PostgreSQL)")
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for url in [None] + ([args.url] if args.url else []):
            for n in sizes:
                times = []
                for r in range(args.repeat):
                    target = url or fresh_sqlite(Path(tmp), f"fanout-{n}-{r}")
                    times.append(run_once(target, n, args.concurrency))
                name = "sqlite" if url is None else nbjobs.dialects.for_url(url).name
                rows.append((name, n, min(times), statistics.median(times)))

    print(f"\nfan-out to N no-op children, concurrency {args.concurrency}, submit -> result")
    print(f"{'database':10} {'children':>8} {'best s':>8} {'median s':>9} {'target s':>9}")
    for name, n, best, median in rows:
        target = f"{TARGETS[n]:.1f}" if name == "sqlite" and n in TARGETS else "-"
        print(f"{name:10} {n:>8} {best:>8.3f} {median:>9.3f} {target:>9}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
