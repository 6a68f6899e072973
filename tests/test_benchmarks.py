"""The peer benchmark's harness works: ``benchmarks/bench_peers.py`` measures every system.

Smoke tests of the harness, not of speed: a tiny run (50 jobs, 100 steps, one round) must print a
row with a positive figure for every system in every section, each taken in its own
process on a fresh database, and a peer that is not installed must be reported with the
extra to install, not crash the run.  Nothing here asserts a rate.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import bench_peers, peers
from tests import backends

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("SQLite, WAL, synchronous=FULL", "SQLite, WAL, synchronous=NORMAL", "PostgreSQL")
# "<measure>  <system>  <figure> ..." or, under the first row of a measure, "  <system>  ..."
ROW = re.compile(
    r"^(?:\S.*?\s{2,}|\s+)(?P<system>sqlite3|nbjobs|huey|PgQueuer|Procrastinate)\s{2,}"
    r"(?P<cell>\S+)"
)


def figures(table: str) -> dict[str, dict[str, list[str]]]:
    """{section: {system: [the first word of each of its cells]}} of a printed table."""
    found: dict[str, dict[str, list[str]]] = {}
    section = None
    for line in table.splitlines():
        if line in SECTIONS:
            section = line
            found[section] = {}
        elif section and (match := ROW.match(line)):
            found[section].setdefault(match["system"], []).append(match["cell"])
    return found


def positive(cell: str) -> bool:
    try:
        return float(cell.replace(",", "")) > 0
    except ValueError:  # "failed"
        return False


def test_every_system_gets_a_positive_figure_in_every_section():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    tiny = ["--jobs", "50", "--steps", "100", "--repeat", "1"]
    with_postgres = "postgres" in backends.selected()  # NBJOBS_TEST_BACKENDS
    only = [] if with_postgres else ["--only", "sqlite"]
    proc = subprocess.run(
        [sys.executable, "benchmarks/bench_peers.py", *tiny, *only],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = figures(proc.stdout)
    rows = {"sqlite3": 1, "nbjobs": 4, "huey": 3}  # commit; enqueue, 2 drains, checkpoint
    expected = {SECTIONS[0]: rows, SECTIONS[1]: rows}
    if with_postgres:
        expected[SECTIONS[2]] = {"nbjobs": 3, "PgQueuer": 2, "Procrastinate": 2}
    assert {s: {k: len(v) for k, v in systems.items()} for s, systems in found.items()} == (
        expected
    ), proc.stdout
    for section, systems in found.items():
        for system, cells in systems.items():
            assert all(positive(c) for c in cells), (section, system, proc.stdout)
    # The machine, the versions and the limits are printed with the figures.
    assert "cores" in proc.stdout and "huey 3." in proc.stdout and ">= 1.3x" in proc.stdout


def test_a_peer_not_installed_is_reported_with_the_extra(monkeypatch, capsys, caplog):
    absent = peers.System("huey", "huey_peer", ("huey-is-not-installed-here",))
    monkeypatch.setitem(peers.SYSTEMS, "huey", absent)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    tiny = ["--jobs", "20", "--steps", "100", "--repeat", "1"]
    monkeypatch.setattr(
        sys, "argv", ["bench_peers.py", "--only", "sqlite", "--peers", "huey", *tiny]
    )

    status = bench_peers.main()

    assert status == 1
    assert "install the 'bench' extra" in caplog.text
    table = capsys.readouterr().out
    found = figures(table)
    assert set(found) == set(SECTIONS[:2]), table
    for systems in found.values():
        assert set(systems) == {"sqlite3", "nbjobs"}, table
        assert all(positive(c) for cells in systems.values() for c in cells), table
