"""``nbjobs demo``: an example sales-report pipeline on the embedded SQLite default.

Each ``sales_report`` run "downloads" a region's raw sales file (made locally, with a
little latency), cleans it, aggregates it, enriches it with exchange rates from a flaky
"service" that fails about a third of the time (the run retries with exponential backoff
and jitter; the finished steps are replayed from their checkpoints, not run again), and
publishes a JSON report.  An ``all_regions`` run fans out one child per region (the
partitions) and combines their results, and a cron schedule runs ``refresh_rates`` every
minute while the demo runs.  Everything goes to a worker started in this process while
the dashboard is served, so the whole life cycle can be watched live.

The workflows are defined by :func:`define_pipeline` and :func:`define_fan_out`, so they
can be reused elsewhere.
"""

from __future__ import annotations

import csv
import json
import random
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import App, CollectAll
from .jobs import FINISHED

if TYPE_CHECKING:
    from . import CallState

REGIONS = ["north", "south", "east", "west", "central", "islands"]
PRODUCTS = ["tea", "coffee", "cocoa", "juice", "water"]
#: How often the exchange-rate service fails.
FLAKY_FAILURE_RATE = 0.35


def define_pipeline(
    app: App, data_dir: Path, *, latency: float = 1.0, failure_rate: float = FLAKY_FAILURE_RATE
) -> Any:
    """Register the demo's ``sales_report`` workflow on ``app``; returns it.

    ``latency`` scales the simulated work (0 makes it instant, for tests).
    """
    raw_dir, clean_dir, report_dir = (data_dir / d for d in ("raw", "clean", "reports"))
    for d in (raw_dir, clean_dir, report_dir):
        d.mkdir(parents=True, exist_ok=True)

    def pause(low: float, high: float) -> None:
        if latency:
            time.sleep(random.uniform(low, high) * latency)

    def download(region: str, day: str, rows: int) -> str:
        """The "download": a deterministic raw file with a few broken rows."""
        pause(0.3, 0.8)
        rng = random.Random(f"{region}-{day}")
        path = raw_dir / f"{region}-{day}.csv"
        with path.open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["order_id", "product", "quantity", "unit_price"])
            for i in range(rows):
                quantity = "" if rng.random() < 0.03 else str(rng.randint(1, 20))
                out.writerow([i, rng.choice(PRODUCTS), quantity, f"{rng.uniform(1, 9):.2f}"])
        return str(path)

    def clean(raw_path: str) -> dict:
        pause(0.2, 0.5)
        good, dropped = [], 0
        with open(raw_path, newline="") as f:
            for row in csv.DictReader(f):
                if not row["quantity"]:
                    dropped += 1
                    continue
                good.append(row)
        path = clean_dir / Path(raw_path).name
        with path.open("w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=["order_id", "product", "quantity", "unit_price"])
            out.writeheader()
            out.writerows(good)
        print(f"cleaned {Path(raw_path).name}: kept {len(good)}, dropped {dropped}")
        return {"path": str(path), "rows": len(good), "dropped": dropped}

    def aggregate(clean_path: str) -> dict:
        pause(0.2, 0.5)
        totals: dict[str, float] = {}
        with open(clean_path, newline="") as f:
            for row in csv.DictReader(f):
                amount = int(row["quantity"]) * float(row["unit_price"])
                totals[row["product"]] = round(totals.get(row["product"], 0.0) + amount, 2)
        return totals

    def exchange_rate(region: str) -> float:
        """The flaky dependency: fails now and then, like a real remote service."""
        pause(0.1, 0.3)
        if random.random() < failure_rate:
            raise ConnectionError("exchange-rate service unavailable (simulated)")
        return round(0.8 + (sum(map(ord, region)) % 40) / 100, 4)

    def publish(region: str, day: str, totals: dict, rate: float) -> str:
        pause(0.1, 0.3)
        report = {
            "region": region,
            "day": day,
            "rate": rate,
            "totals_eur": {p: round(v * rate, 2) for p, v in sorted(totals.items())},
        }
        path = report_dir / f"{region}-{day}.json"
        path.write_text(json.dumps(report, indent=2))
        return str(path)

    @app.workflow(name="sales_report", retries=4, steps=5)
    def sales_report(cs: CallState, region: str, day: str, rows: int = 400) -> dict:
        """Download, clean, aggregate, enrich (flaky) and publish one region's report."""
        raw = cs.checkpoint("download", download, region, day, rows)
        cleaned = cs.checkpoint("clean", clean, raw)
        totals = cs.checkpoint("aggregate", aggregate, cleaned["path"])
        rate = cs.checkpoint("exchange-rate", exchange_rate, region)
        report = cs.checkpoint("publish", publish, region, day, totals, rate)
        return {
            "report": report,
            "rows": cleaned["rows"],
            "revenue": round(sum(totals.values()), 2),
        }

    return sales_report


def define_fan_out(app: App, sales_report: Any) -> tuple[Any, Any]:
    """Register ``all_regions`` (a fan-out over the regions) and ``refresh_rates``."""

    @app.workflow(name="all_regions")
    def all_regions(cs: CallState, day: str) -> dict:
        """One child run per region (partition), then a combined summary."""
        outcomes = cs.fan_out(
            "regions",
            [sales_report.spec(region, day, 200) for region in REGIONS],
            strategy=CollectAll(),
        )
        done = [o.value for o in outcomes if o.ok]
        return cs.checkpoint(
            "combine",
            lambda: {
                "regions": len(done),
                "failed": [o.error for o in outcomes if not o.ok],
                "revenue": round(sum(r["revenue"] for r in done), 2),
            },
        )

    @app.workflow(name="refresh_rates")
    def refresh_rates(cs: CallState) -> dict:
        """What the cron schedule runs every minute: a quick two-step refresh."""
        stamp = cs.checkpoint("fetch", lambda: time.strftime("%H:%M:%S"))
        return cs.checkpoint("store", lambda: {"refreshed_at": stamp, "regions": len(REGIONS)})

    return all_regions, refresh_rates


def submit_runs(workflow: Any, count: int, day: str | None = None) -> list:
    """Submit ``count`` runs over the regions (later days once the regions are used)."""
    day = day or time.strftime("%Y-%m-%d")
    handles = []
    for i in range(count):
        region = REGIONS[i % len(REGIONS)]
        run_day = day if i < len(REGIONS) else f"{day}-{i // len(REGIONS)}"
        handles.append(workflow.submit(region, run_day))
    return handles


def _report_progress(
    app: App, handles: list, since: float, stop: threading.Event, write: Callable[[str], None]
) -> None:
    """Print a status line of the demo's jobs when it changes, until ``handles`` finish."""
    ids = {h.id for h in handles}
    last = ""
    while not stop.is_set():
        rows = app.store.history_jobs(since=since, limit=10_000)
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.status] = counts.get(r.status, 0) + 1
        retries = sum(max(0, r.attempts - 1) for r in rows)
        line = " · ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        line = f"[nbjobs demo] {line} · retries so far {retries}"
        if line != last:
            write(line)
            last = line
        mine = [r for r in rows if r.id in ids]
        if len(mine) == len(ids) and all(r.status in FINISHED for r in mine):
            return
        stop.wait(0.5)


SCHEDULE = "demo-refresh-rates"


def run_demo(url: str, port: int, show: bool, jobs: int, *, dashboard: bool = True) -> int:
    """Run the demo: submit ``jobs`` runs, work them in-process, serve the dashboard."""
    app = App(url)
    since = app.clock.now()
    data_dir = Path(tempfile.gettempdir()) / "nbjobs-demo"
    pipeline = define_pipeline(app, data_dir)
    all_regions, refresh_rates = define_fan_out(app, pipeline)
    app.start(concurrency=4)  # first, so that no submit below warns that nothing runs it
    handles = submit_runs(pipeline, jobs)
    handles.append(all_regions.submit(time.strftime("%Y-%m-%d") + "-all"))
    app.schedule(SCHEDULE, refresh_rates, cron="* * * * *")
    print(
        f"nbjobs demo: {jobs} runs of 'sales_report' on {app.store.safe_url}, and one\n"
        f"  'all_regions' run that fans out over the {len(REGIONS)} regions (partitions);\n"
        f"  the cron schedule {SCHEDULE!r} runs 'refresh_rates' every minute.\n"
        f"  Data and reports in {data_dir}.\n"
        "  The 'exchange-rate' step fails about a third of the time and is retried.",
        flush=True,
    )
    stop = threading.Event()
    progress = threading.Thread(
        target=_report_progress,
        args=(app, handles, since, stop, lambda line: print(line, flush=True)),
        daemon=True,
    )
    progress.start()
    serve = _dashboard_server() if dashboard else None
    try:
        if serve is not None:
            print("  the dashboard runs until Ctrl-C", flush=True)
            serve(app.url, port=port, address="127.0.0.1", show=show)
        else:
            progress.join()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        app.unschedule(SCHEDULE)  # the demo's schedule lives as long as the demo
        statuses = [h.status for h in handles]
        shown = app.store.safe_url  # never the password given on the command line
        app.close()
    summary = ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses)))
    print(f"nbjobs demo: {summary}; list them with `nbjobs jobs --url {shown}`", flush=True)
    return 0


def _dashboard_server() -> Callable[..., Any] | None:
    """``nbjobs.dashboard.serve`` when the dashboard is installed, else None."""
    try:
        from .dashboard import serve
    except ImportError:
        return None
    return serve
