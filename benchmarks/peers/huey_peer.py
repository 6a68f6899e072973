"""huey's ``SqliteHuey`` on a SQLite file in the same modes as nbjobs'.

What huey sets on its connection (huey 3.5, ``SqliteStorage``): ``journal_mode=wal``,
``cache_size`` of 8 MB, and ``synchronous`` only when ``fsync`` is given (2, FULL, for
``fsync=True``; 0, OFF, for ``False``), else SQLite's default, which is FULL.  nbjobs
sets WAL and its ``sqlite_synchronous`` option (NORMAL by default).  So FULL is huey's
``fsync=True``; NORMAL, which huey offers no option for, is its storage with that one
pragma changed after huey has opened the connection (:class:`NormalSyncStorage`).
Each system keeps its own cache and page settings, which are not durability settings.

Results are stored (huey's default), as nbjobs stores every job's outcome; a drain ends
when the last task's result is in the result store.
"""

from __future__ import annotations

import time

from huey import SqliteHuey
from huey.storage import SqliteStorage

from benchmarks.peers import Countdown, wait_until


class NormalSyncStorage(SqliteStorage):
    """huey's SQLite storage with ``synchronous=NORMAL`` on each connection it opens."""

    def _create_connection(self):
        conn = super()._create_connection()
        conn.execute("pragma synchronous=1")
        return conn


SYNCHRONOUS = {"FULL": 2, "NORMAL": 1}


def make_huey(path: str, synchronous: str) -> SqliteHuey:
    """huey on ``path`` in WAL mode with ``synchronous``, checked on its connection."""
    mode = synchronous.upper()
    if mode == "FULL":
        huey = SqliteHuey("bench", filename=path, fsync=True)
    elif mode == "NORMAL":
        huey = SqliteHuey("bench", filename=path, storage_class=NormalSyncStorage)
    else:
        raise ValueError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
    conn = huey.storage.conn
    actual = (conn.execute("pragma journal_mode").fetchone()[0],
              conn.execute("pragma synchronous").fetchone()[0])  # fmt: skip
    if actual != ("wal", SYNCHRONOUS[mode]):
        raise RuntimeError(f"huey's connection runs {actual}, not WAL with {mode}")
    return huey


def enqueue(path: str, jobs: int, synchronous: str) -> float:
    """Tasks/s enqueued one call (one transaction) each."""
    huey = make_huey(path, synchronous)
    noop = huey.task()(lambda i: i)
    start = time.perf_counter()
    for i in range(jobs):
        noop(i)
    return jobs / (time.perf_counter() - start)


def drain(path: str, jobs: int, concurrency: int, synchronous: str) -> float:
    """Tasks/s of huey's consumer with ``concurrency`` worker threads, from its start to
    the last result stored."""
    huey = make_huey(path, synchronous)
    countdown = Countdown(jobs)

    @huey.task()
    def noop(i: int) -> int:
        countdown.hit()
        return i

    for i in range(jobs):
        noop(i)
    consumer = huey.create_consumer(workers=concurrency, worker_type="thread", periodic=False)
    start = time.perf_counter()
    consumer.start()
    try:
        countdown.wait()
        wait_until(lambda: huey.storage.result_store_size() >= jobs)
        elapsed = time.perf_counter() - start
    finally:
        consumer.stop(graceful=True)
    return jobs / elapsed


MEASURES = {"enqueue": enqueue, "drain": drain}
