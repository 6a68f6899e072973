"""PgQueuer on PostgreSQL, through its public API: ``Queries`` over an ``AsyncpgDriver``
(one asyncpg connection, its quick-start set-up), its schema installed with
``Queries.install``, and a ``QueueManager`` with one no-op entrypoint.

The drain runs the queue manager in its ``drain`` mode (PgQueuer's own "process until
the queue is empty, then return", which flushes its buffered completions on the way
out) with its default batch size and no concurrency limit; the clock stops when the
queue table is empty, checked on a second connection.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
from pgqueuer import AsyncpgDriver, Job, Queries, QueueManager
from pgqueuer.types import QueueExecutionMode

from benchmarks.peers import Countdown, libpq_url


async def _queries(url: str) -> Queries:
    queries = Queries(AsyncpgDriver(await asyncpg.connect(libpq_url(url))))
    await queries.install()
    return queries


async def _enqueue(url: str, jobs: int) -> float:
    queries = await _queries(url)
    start = time.perf_counter()
    for i in range(jobs):
        await queries.enqueue("noop", str(i).encode())
    return jobs / (time.perf_counter() - start)


async def _drain(url: str, jobs: int) -> float:
    queries = await _queries(url)
    await queries.enqueue(["noop"] * jobs, [str(i).encode() for i in range(jobs)], [0] * jobs)
    checker = await asyncpg.connect(libpq_url(url))
    manager = QueueManager(Queries(AsyncpgDriver(await asyncpg.connect(libpq_url(url)))))
    countdown = Countdown(jobs)

    @manager.entrypoint("noop")
    async def noop(job: Job) -> None:
        countdown.hit()

    start = time.perf_counter()
    await manager.run(mode=QueueExecutionMode.drain)
    while await checker.fetchval("SELECT count(*) FROM pgqueuer"):
        await asyncio.sleep(0.002)
    elapsed = time.perf_counter() - start
    if countdown.count < jobs:
        raise RuntimeError(f"PgQueuer ran {countdown.count} of {jobs} jobs")
    return jobs / elapsed


def enqueue(url: str, jobs: int) -> float:
    """Jobs/s enqueued one statement (one transaction) each."""
    return asyncio.run(_enqueue(url, jobs))


def drain(url: str, jobs: int) -> float:
    """Jobs/s of one queue manager in this process, from its start to an empty queue."""
    return asyncio.run(_drain(url, jobs))


MEASURES = {"enqueue": enqueue, "drain": drain}
