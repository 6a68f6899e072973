"""What metrics and tracing cost: the SQLite drain and the checkpoint overhead, off and on.

    .venv/bin/python benchmarks/bench_observability.py            # SQLite in a temp dir
    .venv/bin/python benchmarks/bench_observability.py --jobs 5000 --repeat 5

Five modes, measured in interleaved rounds (the order reversed every other round), each
on a fresh database, so that the drift of a loaded machine falls on all of them:

* **off**: ``App()`` as most users make it: no tracer provider set, so tracing is off
  (OpenTelemetry is not even imported before the first traced round), and no
  ``/metrics`` server.
* **metrics**: the ``/metrics`` server of :mod:`nbjobs.metrics`, scraped over HTTP every
  ``--scrape-seconds`` (1 s by default, fifteen times Prometheus' default rate).
* **tracing**: ``App(tracing=provider)``, an OpenTelemetry SDK ``TracerProvider`` whose
  ``BatchSpanProcessor`` exports to the SDK's ``InMemorySpanExporter``.
* **both**: metrics and tracing; **both, sampled**: the same with the provider's sampler
  ``ParentBased(TraceIdRatioBased(0.1))``, what a busy production service runs.

Measures (the ones ``benchmarks/bench_core.py`` makes, with its code): enqueue jobs/s
(with tracing on, a ``submit`` span each), drain jobs/s of no-op jobs at concurrency 1
and 4 (an attempt span each), and the checkpoint overhead per step (a step span each).
The table gives the median of the rounds, their range, and each mode's change against off.
Last, what the hooks cost while tracing is off, timed alone: the work a job's attempt
and each step do for tracing then (``Tracing.attempt`` returning None, the ``is None``
tests), in nanoseconds, to compare with the microseconds a job takes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import timeit
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nbjobs
from benchmarks.bench_core import bench_checkpoints, bench_drain, bench_enqueue

MODES = ("off", "metrics", "tracing", "both", "both, sampled")


class Scraper:
    """``/metrics`` of an app served and fetched every ``every`` seconds, as Prometheus
    would, from a thread of this process."""

    def __init__(self, app: nbjobs.App, every: float) -> None:
        from nbjobs.metrics import serve_metrics

        self.server = serve_metrics(app, 0)
        self.url = f"http://127.0.0.1:{self.server.server_port}/metrics"
        self.every = every
        self.scrapes = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="bench-scraper", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            with urllib.request.urlopen(self.url, timeout=30) as answer:
                answer.read()
            self.scrapes += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.server.shutdown()
        self.server.server_close()


class Observed:
    """An App of one mode, with its span exporter and scraper when on."""

    def __init__(self, url: str, mode: str, scrape_seconds: float) -> None:
        self.exporter: Any = None
        self.provider: Any = None
        self.scraper: Scraper | None = None
        options: dict[str, Any] = {}
        if "tracing" in mode or "both" in mode:
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
                InMemorySpanExporter,
            )
            from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

            self.exporter = InMemorySpanExporter()
            sampled = "sampled" in mode
            self.provider = TracerProvider(
                sampler=ParentBased(TraceIdRatioBased(0.1)) if sampled else None
            )
            self.provider.add_span_processor(BatchSpanProcessor(self.exporter))
            options["tracing"] = self.provider
        self.app = nbjobs.App(url, poll_seconds=0.5, **options)
        if "metrics" in mode or "both" in mode:
            self.scraper = Scraper(self.app, scrape_seconds)

    def close(self) -> int:
        """Stop everything; returns the number of spans exported."""
        if self.scraper is not None:
            self.scraper.close()
        self.app.close()
        if self.provider is None:
            return 0
        self.provider.force_flush()
        count = len(self.exporter.get_finished_spans())
        self.provider.shutdown()
        return count


def one_round(
    args: argparse.Namespace, tmp: str, n: int, mode: str, spans: dict[str, int]
) -> dict[str, float]:
    figures: dict[str, float] = {}

    def measured(name: str, measure: Callable[[nbjobs.App], float], label: str) -> None:
        observed = Observed(f"sqlite:///{tmp}/{name}-{mode}-{n}.db", mode, args.scrape_seconds)
        try:
            figures[label] = measure(observed.app)
        finally:
            spans[mode] = spans.get(mode, 0) + observed.close()

    def enqueue(app: nbjobs.App) -> float:
        return bench_enqueue(app, app.workflow(name="noop")(lambda cs, i: i), args.jobs)

    measured("enqueue", enqueue, "enqueue (jobs/s)")
    for concurrency in (1, 4):

        def drain(app: nbjobs.App, concurrency: int = concurrency) -> float:
            noop = app.workflow(name="noop")(lambda cs, i: i)
            return bench_drain(app, noop, args.jobs, concurrency)

        measured(f"drain{concurrency}", drain, f"drain, concurrency {concurrency} (jobs/s)")
    measured("steps", lambda app: bench_checkpoints(app, args.steps), "checkpoint (us/step)")
    return figures


def disabled_hooks_ns() -> tuple[float, float]:
    """(per attempt, per step) nanoseconds of what tracing adds while off: the
    attempt asks ``Tracing.attempt`` (a ``sys.modules`` look-up, None) and enters a
    ``nullcontext``; a step tests ``execution.trace is not None``."""
    import contextlib

    from nbjobs.runtime.tracing import Tracing

    tracing = Tracing()
    number = 200_000

    def attempt() -> None:
        trace = tracing.attempt(None, "w")  # type: ignore[arg-type]
        with contextlib.nullcontext() if trace is None else trace:
            pass

    class Execution:
        trace = None

    execution = Execution()

    def step() -> None:
        if execution.trace is not None:
            raise AssertionError

    def empty() -> None:
        pass

    base = min(timeit.repeat(empty, number=number, repeat=5))
    per_attempt = min(timeit.repeat(attempt, number=number, repeat=5)) - base
    per_step = min(timeit.repeat(step, number=number, repeat=5)) - base
    # A difference below the timer's noise can come out negative: it is nothing.
    return max(0.0, per_attempt / number * 1e9), max(0.0, per_step / number * 1e9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each mode")
    parser.add_argument("--scrape-seconds", type=float, default=1.0)
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="nbjobs-bench-obs-")
    rounds: dict[str, dict[str, list[float]]] = {mode: {} for mode in MODES}
    spans: dict[str, int] = {}
    # Before anything imports OpenTelemetry (the traced rounds do), and after.
    hooks = {"not imported": disabled_hooks_ns()}
    started = time.perf_counter()
    for n in range(args.repeat):
        for mode in MODES if n % 2 == 0 else reversed(MODES):
            for name, value in one_round(args, tmp, n, mode, spans).items():
                rounds[mode].setdefault(name, []).append(value)
    elapsed = time.perf_counter() - started
    hooks["imported, no provider set"] = disabled_hooks_ns()

    print(
        f"\nnbjobs observability benchmark: SQLite (WAL, synchronous=NORMAL), {args.jobs} "
        f"jobs, {args.steps} steps, median of {args.repeat} rounds per mode (min to max)"
    )
    print(
        f"metrics = /metrics served and scraped every {args.scrape_seconds:g} s; tracing = an "
        "SDK TracerProvider, BatchSpanProcessor -> InMemorySpanExporter; both = the two; "
        "sampled = both, with ParentBased(TraceIdRatioBased(0.1))"
    )
    names = list(rounds["off"])
    width = max(len(name) for name in names)
    header = f"{'measure':{width}}  {'off':>18}"
    for mode in MODES[1:]:
        header += f"  {mode:>18}  {'vs off':>7}"
    print(header)
    print("-" * len(header))
    for name in names:
        off = statistics.median(rounds["off"][name])
        line = f"{name:{width}}  {cell(rounds['off'][name]):>18}"
        for mode in MODES[1:]:
            on = statistics.median(rounds[mode][name])
            line += f"  {cell(rounds[mode][name]):>18}  {(on - off) / off * 100:>+6.0f}%"
        print(line)
    print()
    for mode in MODES:
        print(f"spans exported, {mode}: {spans.get(mode, 0):,}")
    for state, (per_attempt, per_step) in hooks.items():
        print(
            f"tracing off, OpenTelemetry {state}: its hooks cost {per_attempt:,.0f} ns "
            f"per attempt and {per_step:,.0f} ns per step"
        )
    print(f"({elapsed:.0f} s in all, on a shared, loaded machine: compare within one run only)")


def cell(values: list[float]) -> str:
    median = statistics.median(values)
    digits = 1 if median < 100 else 0
    return f"{median:,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


if __name__ == "__main__":
    main()
