"""nbjobs against its peers, side by side in one run, printed as one table.

    .venv/bin/pip install -e '.[bench]'          # huey, PgQueuer, Procrastinate (pinned)
    .venv/bin/python benchmarks/bench_peers.py                    # SQLite and PostgreSQL
    .venv/bin/python benchmarks/bench_peers.py --only sqlite --jobs 5000 --repeat 3
    .venv/bin/python benchmarks/bench_peers.py --only postgres --peers pgqueuer

SQLite (WAL, in both ``synchronous`` modes, FULL and NORMAL): nbjobs against huey's
``SqliteHuey`` set to the same mode (see ``benchmarks/peers/huey_peer.py`` for the
pragmas each sets): enqueue (one transaction per job), drain of no-op jobs at
concurrency 1 and 4 (nbjobs' in-process worker; huey's consumer with worker threads),
nbjobs' checkpoint overhead per step, and one plain sqlite3 single-row commit in the
same mode on the same disk, the yardstick the targets of issue 23 are stated in.

PostgreSQL (the local test server; ``tests/services.py`` starts it when it is down):
nbjobs against PgQueuer and Procrastinate: enqueue N no-op jobs one transaction each,
drain them by one worker in one process, and by 4 ``nbjobs worker -c 4`` processes for
nbjobs.

Every figure is taken in a fresh process on a fresh database (a new SQLite file; a new
PostgreSQL database, dropped afterwards), ``--repeat`` times in interleaved rounds; a
cell is the median with the range, and a ratio is of the medians.  The limits of
issue 23 are printed beside the ratios they bound, marked met or NOT MET.  A drain's
clock runs from the worker's start to the last job recorded as done; the measuring
thread sleeps until the last job body has run and only then reads the queue (see
``benchmarks/peers/__init__.py``), so no system pays for the check.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_backends import cell  # noqa: E402
from benchmarks.peers import SYSTEMS, measure  # noqa: E402

log = logging.getLogger("bench_peers")

SQLITE_PEERS = ("huey",)
POSTGRES_PEERS = ("pgqueuer", "procrastinate")
MODES = ("FULL", "NORMAL")


@dataclass(frozen=True)
class Limit:
    """A target of issue 23: ``ratio >= value`` of nbjobs over a peer, or an absolute
    figure of nbjobs (``>=`` for a rate, ``<=`` for a cost in yardstick commits)."""

    text: str
    check: Callable[[float], bool]


@dataclass
class Figure:
    """One measure of one system: its values over the rounds."""

    section: str
    measure: str
    system: str
    unit: str
    run: Callable[[int], float] = field(repr=False)
    values: list[float] = field(default_factory=list)
    failed: bool = False


ENQUEUE = "enqueue, one transaction per job"
COMMIT = "one single-row commit"
ONE_PROCESS = "drain, one worker process"
FOUR_PROCESSES = "drain, 4 worker processes"
CHECKPOINT = "checkpoint overhead per no-op step"
FULL = "SQLite, WAL, synchronous=FULL"


def drain_at(concurrency: int) -> str:
    return f"drain, concurrency {concurrency}"


def module_of(system: str) -> str:
    # The plain sqlite3 commit needs nothing but Python; nbjobs' module measures it.
    return SYSTEMS[system].module if system in SYSTEMS else SYSTEMS["nbjobs"].module


def sqlite_figures(tmp: Path, jobs: int, steps: int, peers: list[str]) -> Iterator[Figure]:
    def on_new_file(system: str, name: str, **options: object) -> Callable[[int], float]:
        """``name`` of ``system`` on a SQLite file of its own in each round."""

        def run(round_: int) -> float:
            tag = "-".join(str(v) for v in options.values())
            file = tmp / f"{system}-{name}-{tag}-{round_}.db"
            where = {"url": f"sqlite:///{file}"} if system == "nbjobs" else {"path": str(file)}
            return measure(module_of(system), name, **where, **options)

        return run

    for mode in MODES:
        section = f"SQLite, WAL, synchronous={mode}"
        yield Figure(
            section,
            COMMIT,
            "sqlite3",
            "commits/s",
            on_new_file("sqlite3", "raw_commit", jobs=jobs, synchronous=mode),
        )
        for system in ("nbjobs", *peers):
            yield Figure(
                section,
                ENQUEUE,
                system,
                "jobs/s",
                on_new_file(system, "enqueue", jobs=jobs, synchronous=mode),
            )
        for concurrency in (1, 4):
            for system in ("nbjobs", *peers):
                yield Figure(
                    section,
                    drain_at(concurrency),
                    system,
                    "jobs/s",
                    on_new_file(
                        system, "drain", jobs=jobs, concurrency=concurrency, synchronous=mode
                    ),
                )
        yield Figure(
            section,
            CHECKPOINT,
            "nbjobs",
            "us/step",
            on_new_file("nbjobs", "checkpoint", steps=steps, synchronous=mode),
        )


def postgres_figures(jobs: int, peers: list[str]) -> Iterator[Figure]:
    from tests import backends

    def on_new_database(system: str, name: str, **options: object) -> Callable[[int], float]:
        """``name`` of ``system`` on a new database of the local server, dropped after."""

        def run(round_: int) -> float:
            with backends.server_database("postgres") as url:
                return measure(module_of(system), name, url=url, jobs=jobs, **options)

        return run

    section = "PostgreSQL"
    for system in ("nbjobs", *peers):
        yield Figure(section, ENQUEUE, system, "jobs/s", on_new_database(system, "enqueue"))
    # nbjobs' worker runs 4 slots, as ``nbjobs worker -c 4`` and Procrastinate's here.
    yield Figure(
        section, ONE_PROCESS, "nbjobs", "jobs/s", on_new_database("nbjobs", "drain", concurrency=4)
    )
    for system in peers:
        yield Figure(section, ONE_PROCESS, system, "jobs/s", on_new_database(system, "drain"))
    yield Figure(
        section,
        FOUR_PROCESSES,
        "nbjobs",
        "jobs/s",
        on_new_database("nbjobs", "drain_processes", processes=4),
    )


def limits() -> dict[tuple[str, str, str], Limit]:
    """Issue 23's targets, keyed by (section, measure, system the ratio is against)."""
    return {
        (FULL, ENQUEUE, "huey"): Limit(">= 1.3x", lambda ratio: ratio >= 1.3),
        (FULL, drain_at(1), "huey"): Limit(">= 1.5x", lambda ratio: ratio >= 1.5),
        (FULL, drain_at(4), "huey"): Limit(">= 1.5x", lambda ratio: ratio >= 1.5),
        (FULL, CHECKPOINT, "nbjobs"): Limit("<= 2 commits", lambda commits: commits <= 2),
        ("PostgreSQL", ONE_PROCESS, "pgqueuer"): Limit(">= 2x", lambda ratio: ratio >= 2.0),
        ("PostgreSQL", FOUR_PROCESSES, "nbjobs"): Limit(
            ">= 8,000 jobs/s", lambda rate: rate >= 8000
        ),
    }


def median_of(figure: Figure | None) -> float | None:
    if figure is None or figure.failed or not figure.values:
        return None
    return statistics.median(figure.values)


def table_rows(figures: list[Figure]) -> list[tuple[str, ...]]:
    """(measure, system, figure, comparison, limit, mark) per figure, by section.

    The comparison is nbjobs' median over a peer's on the peer's row; on the row of the
    checkpoint overhead, that overhead in single-row commits of the same mode; a limit
    with no comparison bounds nbjobs' own figure.
    """
    by_key = {(f.section, f.measure, f.system): f for f in figures}
    targets = limits()
    rows: list[tuple[str, ...]] = []
    section = measure_shown = None
    for f in figures:
        if f.section != section:
            section, measure_shown = f.section, None
            rows.append((section,))
        label = "" if f.measure == measure_shown else f"{f.measure} ({f.unit})"
        measure_shown = f.measure
        title = SYSTEMS[f.system].title if f.system in SYSTEMS else f.system
        median = median_of(f)
        if median is None:
            rows.append((label, title, "failed", "", "", ""))
            continue
        figure, comparison, value = cell(f.values), "", median
        if f.unit == "commits/s":
            figure += f" = {1e6 / median:,.0f} us"
        own = median_of(by_key.get((f.section, f.measure, "nbjobs")))
        commit = median_of(by_key.get((f.section, COMMIT, "sqlite3")))
        if f.measure == CHECKPOINT and commit:
            value = median * commit / 1e6
            comparison = f"{value:.2f} commits"
        elif f.system != "nbjobs" and own:
            value = own / median
            comparison = f"{value:.2f}x"
        elif f.system != "nbjobs":
            value = None
        target = targets.get((f.section, f.measure, f.system))
        limit = mark = ""
        if target and value is not None:
            limit, mark = target.text, "met" if target.check(value) else "NOT MET"
        rows.append((label, title, figure, comparison, limit, mark))
    return rows


def print_table(rows: list[tuple[str, ...]]) -> None:
    header = ("measure", "system", "median (min-max)", "ratio", "limit", "")
    body = [r for r in rows if len(r) > 1]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(
            f"{v:>{w}}" if i in (2, 3) else f"{v:<{w}}"
            for i, (v, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    print(line(header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(f"\n{row[0]}" if len(row) == 1 else line(row))


def machine(only: str | None) -> list[str]:
    """What the figures were measured on and with, printed above the table."""
    model = platform.processor() or "unknown CPU"
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                model = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown commit"
    import nbjobs

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    lines = [
        f"machine: {os.cpu_count()} cores, {model}; load average {load} at the start",
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"nbjobs {nbjobs.__version__} ({commit})",
    ]
    if only != "sqlite":
        lines.append(f"PostgreSQL {postgres_version()}")
    lines.append(
        "peers: " + "; ".join(SYSTEMS[n].versions() for n in ("huey", "pgqueuer", "procrastinate"))
    )
    return lines


def filesystem(path: Path) -> str:
    """The device and type of the file system ``path`` is on (Linux), as a fsync's cost
    depends on it: FULL on a tmpfs costs nothing."""
    best = ("", "unknown file system")
    try:
        for entry in Path("/proc/mounts").read_text().splitlines():
            device, point, kind = entry.split()[:3]
            inside = str(path.resolve()).startswith(point.rstrip("/") + "/") or point == "/"
            if inside and len(point) >= len(best[0]):
                best = (point, f"{device} ({kind}, mounted on {point})")
    except OSError:
        pass
    return best[1]


def postgres_version() -> str:
    import sqlalchemy as sa

    from tests import services

    try:
        services.ensure("postgres")
        engine = sa.create_engine(services.ADMIN_URL["postgres"], poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            return str(conn.exec_driver_sql("SHOW server_version").scalar())
    except Exception as exc:  # the table still reports what could be measured
        return f"unreachable ({exc.__class__.__name__})"


def run_rounds(figures: list[Figure], repeat: int, tmp: Path) -> bool:
    """Every figure once per round, in order, round after round; False if one failed.

    A figure whose process fails is logged and left out of the later rounds, so that
    one broken system (or a server that went away) does not hide the others' figures.
    """
    ok = True
    for round_ in range(repeat):
        for f in figures:
            if f.failed:
                continue
            log.info("round %d/%d: %s, %s, %s", round_ + 1, repeat, f.section, f.measure, f.system)
            try:
                f.values.append(f.run(round_))
            except Exception as exc:  # reported in the table as "failed"
                log.error("%s, %s, %s failed: %s", f.section, f.measure, f.system, exc)
                f.failed = ok = False
        for leftover in tmp.iterdir():  # SQLite files of this round
            leftover.unlink()
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000, help="jobs per enqueue and drain")
    parser.add_argument("--steps", type=int, default=1000, help="steps of the checkpoint run")
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds of every measure (the median is shown)"
    )
    parser.add_argument(
        "--dir", type=Path, help="where the SQLite files go (default: a new temporary directory)"
    )
    parser.add_argument("--only", choices=("sqlite", "postgres"))
    parser.add_argument(
        "--peers",
        default="huey,pgqueuer,procrastinate",
        help="comma-separated peers to measure nbjobs against (nbjobs is always measured)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    wanted = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in SYSTEMS or p == "nbjobs"]
    if unknown:
        parser.error(f"unknown peers {unknown}; choose among huey, pgqueuer, procrastinate")
    status = 0
    peers = []
    for name in wanted:
        reason = SYSTEMS[name].missing()
        if reason:
            log.error("%s", reason)
            status = 1
        else:
            peers.append(name)

    figures: list[Figure] = []
    tmp = Path(tempfile.mkdtemp(prefix="nbjobs-peers-", dir=args.dir))
    if args.only != "postgres":
        figures += sqlite_figures(
            tmp, args.jobs, args.steps, [p for p in peers if p in SQLITE_PEERS]
        )
    if args.only != "sqlite":
        figures += postgres_figures(args.jobs, [p for p in peers if p in POSTGRES_PEERS])
    header = machine(args.only)
    if args.only != "postgres":
        header.append(f"SQLite files in {tmp}, on {filesystem(tmp)}")

    try:
        if not run_rounds(figures, args.repeat, tmp):
            status = 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rounds = f"median of {args.repeat} rounds (min-max)" if args.repeat > 1 else "one round"
    print(f"\nnbjobs and its peers: {args.jobs} jobs, {args.steps} steps, {rounds}")
    print("\n".join(header))
    print(f"finished {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, load average "
          + ", ".join(f"{v:.1f}" for v in os.getloadavg()) + "\n")  # fmt: skip
    print_table(table_rows(figures))
    return status


if __name__ == "__main__":
    sys.exit(main())
