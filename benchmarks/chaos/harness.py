"""Run the chaos workload: a fleet of worker processes, SIGKILLs, submissions, signals.

Everything random comes from one ``random.Random(seed)``: the workload (what is
submitted when, with which plan), the signals and cancellations, and the kill times and
victims.  Process timing still varies from run to run, so a seed fixes the schedule of
events, not the interleaving the database sees.
"""

from __future__ import annotations

import heapq
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.chaos import ledger
from nbjobs.runtime.worker import PREFETCH

ROOT = Path(__file__).resolve().parents[2]
TARGET = "benchmarks.chaos.app:app"
SCHEDULE = "chaos-tick"
CRON = "* * * * * */2"  # every two seconds (croniter puts seconds sixth)


@dataclass
class Config:
    url: str
    seed: int = 1
    duration: float = 60.0
    workers: int = 3
    concurrency: int = 4
    kill_min: float = 2.0
    kill_max: float = 5.0
    rate: float = 3.0  # top-level submissions per second
    recovery_seconds: float = 120.0
    logdir: Path = field(default_factory=lambda: Path("chaos-logs"))


@dataclass
class Submitted:
    """What the harness knows of one top-level submission."""

    id: str
    workflow: str
    plan: dict
    key: str | None = None
    signals: list = field(default_factory=list)
    cancel: bool = False


@dataclass
class Record:
    """Everything the run did, for the invariant checks."""

    started: float = 0.0
    chaos_ended: float = 0.0
    drained_at: float | None = None
    submitted: list[Submitted] = field(default_factory=list)
    keys: dict[str, list[str]] = field(default_factory=dict)
    kills: int = 0
    killed_pids: list[int] = field(default_factory=list)
    kill_times: dict[int, float] = field(default_factory=dict)  # pid -> time.time()
    slot_samples: int = 0
    slot_overflows: list[str] = field(default_factory=list)
    schedule_created: float = 0.0
    sent: dict[str, list] = field(default_factory=dict)  # job id -> payloads, in send order
    errors: list[str] = field(default_factory=list)
    live_workers: list = field(default_factory=list)
    running_by_worker: dict[str, int] = field(default_factory=dict)


class Fleet:
    """``workers`` real ``nbjobs worker`` processes; kill one, start a new one in its place."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.procs: list[subprocess.Popen] = []
        self.started = 0
        config.logdir.mkdir(parents=True, exist_ok=True)

    def _spawn(self) -> subprocess.Popen:
        self.started += 1
        env = dict(os.environ, NBJOBS_URL=self.config.url, PYTHONPATH=str(ROOT))
        log = open(self.config.logdir / f"worker-{self.started:03d}.log", "wb")  # noqa: SIM115
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "nbjobs.cli", "--log-level", "WARNING", "worker", TARGET,
                 "--concurrency", str(self.config.concurrency), "--grace", "10"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        finally:
            log.close()

    def start(self) -> None:
        self.procs = [self._spawn() for _ in range(self.config.workers)]

    def kill_one(self, rng: random.Random, record: Record) -> None:
        i = rng.randrange(len(self.procs))
        victim = self.procs[i]
        if victim.poll() is None:
            victim.send_signal(signal.SIGKILL)
            record.kill_times[victim.pid] = at = time.time()
            record.kills += 1
            ledger.record_kill(victim.pid, at)
            record.killed_pids.append(victim.pid)
        victim.wait(30)
        self.procs[i] = self._spawn()

    def revive_dead(self, record: Record) -> None:
        """A worker that died on its own is an error to report; start another."""
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None:
                record.errors.append(f"worker pid {proc.pid} exited by itself ({proc.returncode})")
                self.procs[i] = self._spawn()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


# -- the workload ----------------------------------------------------------------------
def pipeline_plan(rng: random.Random) -> dict:
    return dict(
        steps=rng.randint(1, 4),
        work=rng.choice([0.0, 0.2, 0.5, 1.0]),
        flaky=rng.random() < 0.2,
        sleep=rng.choice([None, None, 0.5, 1.5, 3.0]),
        signals=rng.choice([0, 0, 0, 1, 2]),
    )


def fanout_plan(rng: random.Random, depth: int = 0) -> dict:
    n = rng.randint(2, 5) if depth == 0 else rng.randint(2, 3)
    children = []
    for _ in range(n):
        if depth < 1 and rng.random() < 0.25:
            children.append(fanout_plan(rng, depth + 1))
        else:
            children.append(
                dict(
                    steps=rng.randint(1, 2),
                    work=rng.choice([0.0, 0.1, 0.4]),
                    fail=rng.random() < 0.2,
                )
            )
    return dict(
        strategy=rng.choice(["fail_fast", "collect_all", "threshold"]),
        threshold=rng.randint(1, n),
        children=children,
    )


class Workload:
    """Submits the seeded workload and sends its signals and cancellations on time."""

    def __init__(self, config: Config, app: Any, rng: random.Random, record: Record) -> None:
        self.config = config
        self.app = app
        self.rng = rng
        self.record = record
        self.events: list[tuple[float, int, str, Any]] = []
        self._n = 0

    def plan_events(self, start: float) -> None:
        """Every event of the run, decided up front from the seed."""
        t = start + 0.5
        until = start + self.config.duration * 0.75
        while t < until:
            self._push(t, "submit", None)
            t += self.rng.expovariate(self.config.rate)
        t = start + 2.0
        while t < until:  # bursts that fill the flow-controlled queues
            self._push(t, "flow", None)
            t += self.rng.uniform(2.0, 4.0)
        t = start + 3.0
        while t < start + self.config.duration:
            self._push(t, "kill", None)
            t += self.rng.uniform(self.config.kill_min, self.config.kill_max)

    def _push(self, at: float, kind: str, payload: Any) -> None:
        self._n += 1
        heapq.heappush(self.events, (at, self._n, kind, payload))

    def due(self, now: float) -> list[tuple[str, Any]]:
        out = []
        while self.events and self.events[0][0] <= now:
            _, _, kind, payload = heapq.heappop(self.events)
            out.append((kind, payload))
        return out

    def next_at(self) -> float | None:
        return self.events[0][0] if self.events else None

    def submit(self, now: float) -> None:
        from benchmarks.chaos import app as chaos

        roll = self.rng.random()
        if roll < 0.45:
            wf, plan = chaos.pipeline, pipeline_plan(self.rng)
        elif roll < 0.60:
            wf, plan = chaos.async_pipeline, pipeline_plan(self.rng)
            plan["flaky"] = False
        elif roll < 0.90:
            wf, plan = chaos.fanout, fanout_plan(self.rng)
        else:
            self._submit_keyed(chaos.pipeline, pipeline_plan(self.rng))
            return
        handle = wf.submit(plan)
        self._track(Submitted(handle.id, wf.name, plan), now)

    def submit_flow(self) -> None:
        """A burst of jobs for each flow-controlled queue, more than its limit lets run
        at once.  Never cancelled: a cancelled body runs on to its end after its slot
        is free, which the limits do not promise to count."""
        from benchmarks.chaos import app as chaos

        for wf, count, work in ((chaos.capped, 4, 0.3), (chaos.rated, 8, 0.02)):
            for _ in range(count):
                plan = {"work": work * self.rng.uniform(0.5, 1.5)}
                handle = wf.submit(plan)
                self.record.submitted.append(Submitted(handle.id, wf.name, plan))

    def _submit_keyed(self, wf: Any, plan: dict) -> None:
        """One idempotency key submitted by three threads at once: one job must result."""
        key = f"chaos-key-{len(self.record.keys)}"
        ids: list[str] = []
        barrier = threading.Barrier(3)

        def go() -> None:
            barrier.wait(10)
            ids.append(wf.options(key=key).submit(plan).id)

        threads = [threading.Thread(target=go) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.record.keys[key] = ids
        if ids:
            self._track(Submitted(ids[0], wf.name, plan, key=key), time.time())

    def _track(self, sub: Submitted, now: float) -> None:
        self.record.submitted.append(sub)
        for n in range(sub.plan.get("signals") or 0):
            payload = {"job": sub.id, "n": n}
            sub.signals.append(payload)
            self._push(now + self.rng.uniform(0.0, 4.0) + n * 0.01, "signal", (sub.id, payload))
        if self.rng.random() < 0.08:
            sub.cancel = True
            self._push(now + self.rng.uniform(0.2, 3.0), "cancel", sub.id)

    def signal(self, job_id: str, payload: dict) -> None:
        self.app.signal(job_id, "go", payload)
        self.record.sent.setdefault(job_id, []).append(payload)

    def cancel(self, job_id: str) -> None:
        self.app.cancel(job_id)


def sample_slots(app: Any, config: Config, record: Record) -> None:
    """No live worker ever reports holding more jobs than it has slots, plus the short
    jobs it may claim ahead (``nbjobs.runtime.worker.PREFETCH`` per slot)."""
    record.slot_samples += 1
    for w in app.store.list_workers(alive_within=2.0):
        if w.jobs_held > w.concurrency * (1 + PREFETCH) or w.jobs_held < 0:
            record.slot_overflows.append(f"{w.id} held {w.jobs_held} of {w.concurrency}")


def unfinished(app: Any) -> int:
    counts = app.store.status_counts()
    return sum(counts.get(s, 0) for s in ("queued", "running", "waiting"))


def run(config: Config, log: Any = print) -> tuple[Record, Any]:
    """Run the workload under kills; returns (record, reader app) once it has drained."""
    import nbjobs

    os.environ["NBJOBS_URL"] = config.url
    ledger.create(config.url)
    from benchmarks.chaos import app as chaos

    app = chaos.app
    if app.store.count_jobs():
        raise SystemExit("the chaos harness needs a fresh database (it found jobs)")
    rng = random.Random(config.seed)
    record = Record()
    fleet = Fleet(config)
    workload = Workload(config, app, rng, record)
    app.schedule(SCHEDULE, chaos.tick, cron=CRON, catch_up="all")
    app.set_queue(ledger.CAPPED_QUEUE, concurrency=ledger.CAPPED_LIMIT)
    app.set_queue(ledger.RATED_QUEUE, rate=f"{ledger.RATED_COUNT}/s")
    record.schedule_created = app.store.now()
    fleet.start()
    record.started = time.time()
    workload.plan_events(record.started)
    last_sample = 0.0
    log(f"chaos: {config.workers} workers x {config.concurrency} slots, seed {config.seed}, "
        f"{config.duration:.0f} s on {app.store.safe_url}")  # fmt: skip
    try:
        while True:
            now = time.time()
            for kind, payload in workload.due(now):
                try:
                    if kind == "submit":
                        workload.submit(now)
                    elif kind == "flow":
                        workload.submit_flow()
                    elif kind == "kill":
                        fleet.kill_one(rng, record)
                    elif kind == "signal":
                        workload.signal(*payload)
                    elif kind == "cancel":
                        workload.cancel(payload)
                except nbjobs.NbjobsError as exc:
                    record.errors.append(f"{kind}: {exc}")
            if now - last_sample >= 1.0:
                last_sample = now
                sample_slots(app, config, record)
                fleet.revive_dead(record)
            if now >= record.started + config.duration and workload.next_at() is None:
                break
            nxt = workload.next_at() or (record.started + config.duration)
            time.sleep(max(0.01, min(0.25, nxt - time.time())))
        record.chaos_ended = time.time()
        app.pause_schedule(SCHEDULE)
        log(f"chaos: {record.kills} kills; draining (bound {config.recovery_seconds:.0f} s)")
        deadline = record.chaos_ended + config.recovery_seconds
        while time.time() < deadline:
            sample_slots(app, config, record)
            fleet.revive_dead(record)
            if unfinished(app) == 0:
                record.drained_at = time.time()
                break
            time.sleep(0.5)
        # Two heartbeats so every live worker has reported what it holds now.
        time.sleep(3 * app.heartbeat_seconds)
        record.live_workers = app.store.list_workers(alive_within=2.0)
        record.running_by_worker = _running_by_worker(app)
    finally:
        fleet.stop()
    return record, app


def _running_by_worker(app: Any) -> dict[str, int]:
    from sqlalchemy import func, select

    from nbjobs.schema import jobs

    with app.store._read() as conn:
        rows = conn.execute(
            select(jobs.c.worker_id, func.count())
            .where(jobs.c.status == "running")
            .group_by(jobs.c.worker_id)
        ).all()
    return {w: n for w, n in rows}
