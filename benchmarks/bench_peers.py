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


def sqlite_figures(tmp: Path, jobs: int, steps: int, peers: list[str]) -> Iterator[Figure]:
    def path(*parts: object) -> str:
        return str(tmp / ("-".join(str(p) for p in parts) + ".db"))

    for mode in MODES:
        section = f"SQLite, WAL, synchronous={mode}"
        yield Figure(
            section,
            "one single-row commit",
            "sqlite3",
            "commits/s",
            lambda r, m=mode: measure(
                "nbjobs_peer", "raw_commit", path=path("raw", m, r), jobs=jobs, synchronous=m
            ),
        )
        yield Figure(
            section,
            "enqueue, one transaction per job",
            "nbjobs",
            "jobs/s",
            lambda r, m=mode: measure(
                "nbjobs_peer",
                "enqueue",
                url=f"sqlite:///{path('nbjobs-enqueue', m, r)}",
                jobs=jobs,
                synchronous=m,
            ),
        )
        for peer in peers:
            yield Figure(
                section,
                "enqueue, one transaction per job",
                peer,
                "jobs/s",
                lambda r, m=mode, p=peer: measure(
                    SYSTEMS[p].module,
                    "enqueue",
                    path=path(p, "enqueue", m, r),
                    jobs=jobs,
                    synchronous=m,
                ),
            )
        for concurrency in (1, 4):
            name = f"drain, concurrency {concurrency}"
            yield Figure(
                section,
                name,
                "nbjobs",
                "jobs/s",
                lambda r, m=mode, c=concurrency: measure(
                    "nbjobs_peer",
                    "drain",
                    url=f"sqlite:///{path('nbjobs-drain', c, m, r)}",
                    jobs=jobs,
                    concurrency=c,
                    synchronous=m,
                ),
            )
            for peer in peers:
                yield Figure(
                    section,
                    name,
                    peer,
                    "jobs/s",
                    lambda r, m=mode, c=concurrency, p=peer: measure(
                        SYSTEMS[p].module,
                        "drain",
                        path=path(p, "drain", c, m, r),
                        jobs=jobs,
                        concurrency=c,
                        synchronous=m,
                    ),
                )
        yield Figure(
            section,
            f"checkpoint overhead, {steps} no-op steps",
            "nbjobs",
            "us/step",
            lambda r, m=mode: measure(
                "nbjobs_peer",
                "checkpoint",
                url=f"sqlite:///{path('nbjobs-steps', m, r)}",
                steps=steps,
                synchronous=m,
            ),
        )


def postgres_figures(jobs: int, peers: list[str]) -> Iterator[Figure]:
    from tests import backends

    def on_fresh_database(module: str, name: str, **options: object) -> float:
        with backends.server_database("postgres") as url:
            return measure(module, name, url=url, jobs=jobs, **options)

    section = "PostgreSQL"
    enqueue, one, four = (
        "enqueue, one transaction per job",
        "drain, one worker process",
        "drain, 4 worker processes",
    )
    yield Figure(
        section, enqueue, "nbjobs", "jobs/s", lambda r: on_fresh_database("nbjobs_peer", "enqueue")
    )
    for peer in peers:
        yield Figure(
            section,
            enqueue,
            peer,
            "jobs/s",
            lambda r, p=peer: on_fresh_database(SYSTEMS[p].module, "enqueue"),
        )
    yield Figure(
        section,
        one,
        "nbjobs",
        "jobs/s",
        lambda r: on_fresh_database("nbjobs_peer", "drain", concurrency=4),
    )
    for peer in peers:
        yield Figure(
            section,
            one,
            peer,
            "jobs/s",
            lambda r, p=peer: on_fresh_database(SYSTEMS[p].module, "drain"),
        )
    yield Figure(
        section,
        four,
        "nbjobs",
        "jobs/s",
        lambda r: on_fresh_database("nbjobs_peer", "drain_processes", processes=4),
    )


def limits() -> dict[tuple[str, str, str], Limit]:
    """Issue 23's targets, keyed by (section, measure, system the ratio is against)."""
    full = "SQLite, WAL, synchronous=FULL"
    table = {
        (full, "enqueue, one transaction per job", "huey"): Limit(
            ">= 1.3x", lambda ratio: ratio >= 1.3
        ),
        ("PostgreSQL", "drain, one worker process", "pgqueuer"): Limit(
            ">= 2x", lambda ratio: ratio >= 2.0
        ),
        ("PostgreSQL", "drain, 4 worker processes", "nbjobs"): Limit(
            ">= 8,000 jobs/s", lambda rate: rate >= 8000
        ),
    }
    for concurrency in (1, 4):
        table[(full, f"drain, concurrency {concurrency}", "huey")] = Limit(
            ">= 1.5x", lambda ratio: ratio >= 1.5
        )
    return table


def cell(values: list[float]) -> str:
    """The median, with the range when there are several rounds."""
    digits = 1 if max(values) < 100 else 0
    text = f"{statistics.median(values):,.{digits}f}"
    if len(values) > 1:
        text += f" ({min(values):,.{digits}f}-{max(values):,.{digits}f})"
    return text


def table_rows(figures: list[Figure]) -> list[tuple[str, ...]]:
    """(measure, system, figure, nbjobs/peer, limit, mark) per figure, by section."""
    by_key = {(f.section, f.measure, f.system): f for f in figures}
    targets = limits()
    rows: list[tuple[str, ...]] = []
    section = measure_shown = None
    for f in figures:
        if f.section != section:
            section, measure_shown = f.section, None
            rows.append((f"{section}",))
        label = "" if f.measure == measure_shown else f"{f.measure} ({f.unit})"
        measure_shown = f.measure
        title = SYSTEMS[f.system].title if f.system in SYSTEMS else f.system
        if f.failed or not f.values:
            rows.append((label, title, "failed", "", "", ""))
            continue
        median = statistics.median(f.values)
        figure = cell(f.values)
        ratio = limit = mark = ""
        if f.unit == "commits/s":
            figure += f" = {1e6 / median:,.0f} us"
        own = by_key.get((f.section, f.measure, "nbjobs"))
        if f.system != "nbjobs" and own and own.values and not own.failed:
            value = statistics.median(own.values) / median
            ratio = f"{value:.2f}x"
            target = targets.get((f.section, f.measure, f.system))
            if target:
                limit, mark = target.text, "met" if target.check(value) else "NOT MET"
        if f.unit == "us/step":
            commit = by_key.get((f.section, "one single-row commit", "sqlite3"))
            if commit and commit.values and not commit.failed:
                value = median / (1e6 / statistics.median(commit.values))
                ratio = f"{value:.2f} commits"
                if "FULL" in f.section:
                    limit = "<= 2 commits"
                    mark = "met" if value <= 2 else "NOT MET"
        target = targets.get((f.section, f.measure, f.system))
        if f.system == "nbjobs" and target:
            limit, mark = target.text, "met" if target.check(median) else "NOT MET"
        rows.append((label, title, figure, ratio, limit, mark))
    return rows


def print_table(rows: list[tuple[str, ...]]) -> None:
    header = ("measure", "system", "median (min-max)", "nbjobs/peer", "limit", "")
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
    print(f"\nnbjobs and its peers, {args.jobs} jobs, {rounds}")
    print("\n".join(header))
    print(f"finished {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, load average "
          + ", ".join(f"{v:.1f}" for v in os.getloadavg()) + "\n")  # fmt: skip
    print_table(table_rows(figures))
    return status


if __name__ == "__main__":
    sys.exit(main())
