"""Procrastinate on PostgreSQL, through its public API: an ``App`` over a
``PsycopgConnector``, its schema applied with ``schema_manager.apply_schema_async``, one
no-op ``async`` task deferred with ``defer_async``.

The drain runs ``run_worker_async(wait=False)``, Procrastinate's own "work until the
queues are caught up, then return", with concurrency 4 (the slots of an ``nbjobs
worker -c 4``); the clock stops when no job is left unfinished, checked once after the
worker returns (it records each job's status before it takes the next).
"""

from __future__ import annotations

import asyncio
import time

from procrastinate import App, PsycopgConnector

from benchmarks.peers import Countdown, libpq_url

CONCURRENCY = 4


def make_app(url: str, countdown: Countdown | None = None) -> App:
    app = App(connector=PsycopgConnector(conninfo=libpq_url(url)))

    @app.task(name="noop")
    async def noop(i: int) -> int:
        if countdown is not None:
            countdown.hit()
        return i

    return app


async def _enqueue(url: str, jobs: int) -> float:
    app = make_app(url)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        noop = app.tasks["noop"]
        start = time.perf_counter()
        for i in range(jobs):
            await noop.defer_async(i=i)
        return jobs / (time.perf_counter() - start)


async def _unfinished(app: App) -> int:
    rows = await app.connector.execute_query_all_async(
        "SELECT count(*) AS n FROM procrastinate_jobs WHERE status <> 'succeeded'"
    )
    return int(rows[0]["n"])


async def _drain(url: str, jobs: int) -> float:
    countdown = Countdown(jobs)
    app = make_app(url, countdown)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        await app.tasks["noop"].batch_defer_async(*({"i": i} for i in range(jobs)))
        start = time.perf_counter()
        await app.run_worker_async(
            concurrency=CONCURRENCY, wait=False, install_signal_handlers=False
        )
        while await _unfinished(app):
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - start
    if countdown.count < jobs:
        raise RuntimeError(f"Procrastinate ran {countdown.count} of {jobs} jobs")
    return jobs / elapsed


def enqueue(url: str, jobs: int) -> float:
    """Jobs/s deferred one call (one transaction) each."""
    return asyncio.run(_enqueue(url, jobs))


def drain(url: str, jobs: int) -> float:
    """Jobs/s of one worker in this process, from its start to no job unfinished."""
    return asyncio.run(_drain(url, jobs))


MEASURES = {"enqueue": enqueue, "drain": drain}
