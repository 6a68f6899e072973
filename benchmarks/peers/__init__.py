"""The systems ``benchmarks/bench_peers.py`` measures side by side, one module each.

Each module names its measures in a ``MEASURES`` dict.  Every measure runs in a fresh
process, so that no system inherits another's imports, threads, caches or connection
pools, and no measure inherits the last one's::

    python -m benchmarks.peers huey_peer drain '{"path": "...", "jobs": 5000, ...}'

prints one JSON line, ``{"value": <figure>}`` (see ``__main__.py``).  This module holds
what the peer modules share: the parent's side of such a process (:func:`measure`),
and the completion check of a drain (:class:`Countdown`), which must cost the drain
nothing (``LESSONS.md`` #18: polling thousands of handles one query each
made a 5,700 jobs/s drain look like 950).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXTRA = "bench"
INSTALL_HINT = f"pip install -e '.[{EXTRA}]'"


@dataclass(frozen=True)
class System:
    """A system in the table: its title, its module here, and the distributions it needs."""

    title: str
    module: str
    distributions: tuple[str, ...]

    def missing(self) -> str | None:
        """Why this system cannot be measured here, or None when it can."""
        absent = [d for d in self.distributions if _version(d) is None]
        if not absent:
            return None
        return (
            f"{self.title} cannot be measured: {', '.join(absent)} not installed; "
            f"install the {EXTRA!r} extra ({INSTALL_HINT})"
        )

    def versions(self) -> str:
        return ", ".join(f"{d} {_version(d) or 'missing'}" for d in self.distributions)


SYSTEMS = {
    "nbjobs": System("nbjobs", "nbjobs_peer", ("sqlalchemy",)),
    "huey": System("huey", "huey_peer", ("huey",)),
    "pgqueuer": System("PgQueuer", "pgqueuer_peer", ("pgqueuer", "asyncpg")),
    "procrastinate": System(
        "Procrastinate", "procrastinate_peer", ("procrastinate", "psycopg", "psycopg-pool")
    ),
}


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


class MeasureFailed(RuntimeError):
    """A measuring process exited with an error; the message ends with its stderr."""


def measure(module: str, name: str, timeout: float = 900.0, **options: object) -> float:
    """Run ``name`` of ``benchmarks.peers.<module>`` in a fresh process; its figure."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.peers", module, name, json.dumps(options)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-20:])
        raise MeasureFailed(f"{module} {name} {options} exited {proc.returncode}:\n{tail}")
    return float(json.loads(lines[-1])["value"])


class Countdown:
    """Counts the jobs a drain has run, in memory, and wakes the waiter at the last one.

    The job body calls :meth:`hit`; the measuring thread sleeps in :meth:`wait` on an
    event rather than querying the queue while the worker runs, then checks the
    queue's durable state once or a few times (the job's record is written after its
    body returns).  Every system's drain ends this way, so none pays for its check.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.count = 0
        self._lock = threading.Lock()
        self._done = threading.Event()

    def hit(self) -> None:
        with self._lock:
            self.count += 1
            if self.count >= self.total:
                self._done.set()

    def wait(self, timeout: float = 600.0) -> None:
        if not self._done.wait(timeout):
            raise TimeoutError(f"{self.count} of {self.total} jobs ran in {timeout} s")


def wait_until(predicate: Callable[[], bool], timeout: float = 600.0) -> None:
    """Poll ``predicate`` every 2 ms: used only after the last job body has run."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the queue did not record every job as done")
        time.sleep(0.002)


def libpq_url(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL (``postgresql+psycopg://``) as libpq/asyncpg take it."""
    import sqlalchemy as sa

    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
