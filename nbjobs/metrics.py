"""Prometheus metrics of a database's jobs, read at each scrape: ``/metrics``.

:class:`JobsCollector` is a ``prometheus_client`` collector that asks the store at each
scrape (it keeps no counters of its own), so every worker and dashboard scraped reports
the same fleet-wide values, and nothing runs between scrapes: the workers' hot paths
are unchanged.  It is served by a worker (:func:`serve_metrics`, ``nbjobs worker
--metrics-port``) and by the dashboard server (``/metrics``).  Every metric is listed in
``docs/content/how-to/metrics.md``.

``prometheus_client`` is an optional dependency (``pip install 'nbjobs[metrics]'``);
``import nbjobs`` does not import this module.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .errors import ConfigurationError
from .jobs import ACTIVE, FINISHED, STATUSES
from .validation import check_number

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer


class App(Protocol):
    """What the metrics read of an :class:`~nbjobs.App`: its store and its stale
    threshold (a view never imports the App)."""

    store: Any
    stale_after_seconds: float


__all__ = [
    "DELAY_BUCKETS",
    "STEP_BUCKETS",
    "WINDOW_SECONDS",
    "JobsCollector",
    "metrics_registry",
    "serve_metrics",
]

log = logging.getLogger(__name__)

#: The recent window of the histograms and attempt outcomes, in seconds.
WINDOW_SECONDS = 300.0
#: Bucket bounds (seconds) of the submit-to-start delay.
DELAY_BUCKETS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600)
#: Bucket bounds (seconds) of a step's duration.
STEP_BUCKETS: tuple[float, ...] = (0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 1800)


def _histogram(
    name: str,
    documentation: str,
    label: str,
    data: dict[str, dict[str, Any]],
    bounds: Sequence[float],
) -> GaugeHistogramMetricFamily:
    family = GaugeHistogramMetricFamily(name, documentation, labels=[label], unit="seconds")
    for value, h in sorted(data.items()):
        buckets = [(floatToGoString(b), n) for b, n in zip(bounds, h["buckets"], strict=True)]
        buckets.append(("+Inf", h["count"]))
        family.add_metric([value], buckets, gsum_value=h["sum"])
    return family


class JobsCollector(Collector):
    """The fleet's jobs, workers and queues as Prometheus metrics, read at each scrape.

    ``app`` is an :class:`~nbjobs.App` (only its store and ``stale_after_seconds`` are
    used); ``window_seconds`` is the recent window of the histograms and of
    ``nbjobs_attempts``.
    """

    def __init__(self, app: App, *, window_seconds: float = WINDOW_SECONDS) -> None:
        check_number("window_seconds", window_seconds, positive=True)
        self.store = app.store
        self.stale_after_seconds = float(app.stale_after_seconds)
        self.window_seconds = float(window_seconds)

    def describe(self) -> list[Metric]:
        """Nothing: registering the collector must not read the database."""
        return []

    def collect(self) -> Iterator[Metric]:
        began = time.perf_counter()
        store = self.store
        since = store.now() - self.window_seconds
        window = f"{self.window_seconds:g}s"

        depths = store.queue_depths()
        totals = store.finished_totals()
        jobs = GaugeMetricFamily(
            "nbjobs_jobs",
            "Jobs in the database per queue and status (all workers' jobs).",
            labels=["queue", "status"],
        )
        per_queue: dict[tuple[str, str], int] = {}
        for d in depths:
            for status in ACTIVE:
                per_queue[(d["queue"], status)] = d[status]
        for (queue, _workflow, status), (n, _f, _r) in totals.items():
            per_queue[(queue, status)] = per_queue.get((queue, status), 0) + n
        for queue in sorted({q for q, _ in per_queue}):
            for status in STATUSES:
                jobs.add_metric([queue, status], per_queue.get((queue, status), 0))
        yield jobs

        ready = GaugeMetricFamily(
            "nbjobs_jobs_ready",
            "Queued jobs that are due now (not delayed, not backing off) per queue.",
            labels=["queue"],
        )
        held = GaugeMetricFamily(
            "nbjobs_jobs_held_back",
            "Queued jobs no worker may claim, per queue and reason (paused: the queue is "
            "paused; limit: ready jobs a concurrency, rate or partition limit holds back).",
            labels=["queue", "reason"],
        )
        paused = GaugeMetricFamily(
            "nbjobs_queue_paused", "1 when the queue is paused, else 0.", labels=["queue"]
        )
        for d in depths:
            ready.add_metric([d["queue"]], d["ready"])
            held.add_metric([d["queue"], "paused"], d["queued"] if d["paused"] else 0)
            held.add_metric([d["queue"], "limit"], 0 if d["paused"] else d["held"])
            paused.add_metric([d["queue"]], 1 if d["paused"] else 0)
        yield from (ready, held, paused)

        finished = GaugeMetricFamily(
            "nbjobs_finished_jobs",
            "Finished jobs kept in the database per workflow and outcome (a purge lowers it).",
            labels=["workflow", "outcome"],
        )
        failures = GaugeMetricFamily(
            "nbjobs_finished_job_failures",
            "Failed attempts of the finished jobs kept, per workflow and outcome (the "
            "retries of a succeeded job; a failed job's last failure included).",
            labels=["workflow", "outcome"],
        )
        reclaims = GaugeMetricFamily(
            "nbjobs_finished_job_reclaims",
            "Times the finished jobs kept were taken back from a lost worker, per workflow "
            "and outcome.",
            labels=["workflow", "outcome"],
        )
        by_workflow: dict[tuple[str, str], list[int]] = {}
        for (_queue, workflow, status), (n, f, r) in totals.items():
            sums = by_workflow.setdefault((workflow, status), [0, 0, 0])
            sums[0] += n
            sums[1] += f
            sums[2] += r
        for workflow in sorted({w for w, _ in by_workflow}):
            for status in FINISHED:
                n, f, r = by_workflow.get((workflow, status), (0, 0, 0))
                finished.add_metric([workflow, status], n)
                failures.add_metric([workflow, status], f)
                reclaims.add_metric([workflow, status], r)
        yield from (finished, failures, reclaims)

        attempts = GaugeMetricFamily(
            "nbjobs_attempts",
            f"Attempts that ended in the last {window}, per workflow and outcome (failed, "
            "lost: reclaimed from a dead worker, timeout, succeeded, suspended, cancelled).",
            labels=["workflow", "outcome"],
        )
        for (workflow, outcome), n in sorted(store.attempt_outcomes(since=since).items()):
            attempts.add_metric([workflow, outcome], n)
        yield attempts

        yield _histogram(
            "nbjobs_job_start_delay",
            f"Submit-to-start delay of the jobs first started in the last {window}, per queue.",
            "queue",
            store.start_delays(since=since, bounds=DELAY_BUCKETS),
            DELAY_BUCKETS,
        )
        yield _histogram(
            "nbjobs_step_duration",
            f"Duration of the steps finished in the last {window}, per workflow.",
            "workflow",
            store.step_durations(since=since, bounds=STEP_BUCKETS),
            STEP_BUCKETS,
        )

        fleet = store.worker_totals(alive_within=self.stale_after_seconds)
        yield GaugeMetricFamily(
            "nbjobs_workers_alive",
            "Workers whose heartbeat is more recent than stale_after_seconds.",
            value=fleet["alive"],
        )
        yield GaugeMetricFamily(
            "nbjobs_worker_slots",
            "Concurrency summed over the live workers.",
            value=fleet["slots"],
        )
        yield GaugeMetricFamily(
            "nbjobs_worker_jobs_held",
            "Jobs the live workers hold (running or claimed), summed.",
            value=fleet["held"],
        )
        yield GaugeMetricFamily(
            "nbjobs_metrics_read_seconds",
            "How long this scrape's database reads took.",
            value=time.perf_counter() - began,
        )


def metrics_registry(
    app: App, *, window_seconds: float = WINDOW_SECONDS, process: bool = True
) -> CollectorRegistry:
    """A registry holding a :class:`JobsCollector` of ``app`` and, with ``process``,
    ``prometheus_client``'s metrics of this process (CPU, memory, GC, Python version)."""
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobsCollector(app, window_seconds=window_seconds))
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


def serve_metrics(
    app: App, port: int, host: str = "127.0.0.1", *, window_seconds: float = WINDOW_SECONDS
) -> WSGIServer:
    """Serve ``/metrics`` of ``app``'s database on ``host:port`` from a daemon thread of
    this process (``prometheus_client``'s HTTP server); returns the server
    (``server.shutdown(); server.server_close()`` stops it).

    Bound to 127.0.0.1 unless ``host`` says otherwise, and without authentication:
    expose it beyond the host only on a network Prometheus alone can reach.  Port 0
    picks a free port (``server.server_port``).
    """
    check_number("port", port, 0, integer=True)
    if port > 65535:
        raise ConfigurationError(f"port must be at most 65535, got {port!r}")
    registry = metrics_registry(app, window_seconds=window_seconds)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    log.info(
        "nbjobs metrics on http://%s:%d/metrics",
        host,
        server.server_port,
        extra={"host": host, "port": server.server_port},
    )
    return server
