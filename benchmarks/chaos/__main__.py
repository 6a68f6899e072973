"""``python -m benchmarks.chaos --url URL --seed N --duration S --workers K``."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.chaos.harness import Config, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__)
    parser.add_argument("--url", required=True, help="a fresh database (SQLite or PostgreSQL)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of chaos")
    parser.add_argument("--workers", type=int, default=3, help="worker processes")
    parser.add_argument("--concurrency", type=int, default=4, help="slots per worker")
    parser.add_argument("--kill-min", type=float, default=2.0, help="seconds between kills, min")
    parser.add_argument("--kill-max", type=float, default=5.0, help="seconds between kills, max")
    parser.add_argument("--rate", type=float, default=3.0, help="top-level jobs per second")
    parser.add_argument(
        "--recovery", type=float, default=120.0, help="seconds every job gets to finish after"
    )
    parser.add_argument("--logdir", type=Path, help="worker logs (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    config = Config(
        url=args.url,
        seed=args.seed,
        duration=args.duration,
        workers=args.workers,
        concurrency=args.concurrency,
        kill_min=args.kill_min,
        kill_max=args.kill_max,
        rate=args.rate,
        recovery_seconds=args.recovery,
        logdir=args.logdir or Path(tempfile.mkdtemp(prefix="nbjobs-chaos-")),
    )
    from benchmarks.chaos.invariants import check_all, table

    began = time.time()
    record, app = run(config, log=lambda m: print(m, flush=True))
    checks = check_all(app, record, config)
    print(table(checks, record, app.store.status_counts()), flush=True)
    print(f"worker logs in {config.logdir}; {time.time() - began:.0f} s in all", flush=True)
    app.close()
    failed = [c.name for c in checks if not c.ok]
    if failed:
        print(f"CHAOS FAILED: {', '.join(failed)}", flush=True)
        return 1
    print("CHAOS PASSED", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
