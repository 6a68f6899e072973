"""The invariants a chaos run must keep, checked against the database afterwards.

Each check returns a :class:`Check`: what was examined, how many violations, and a few
examples.  :func:`table` prints them; a run passes when every check has no violation.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from benchmarks.chaos.harness import CRON, SCHEDULE, Config, Record
from benchmarks.chaos.ledger import (
    CAPPED_LIMIT,
    CAPPED_QUEUE,
    RATED_COUNT,
    RATED_QUEUE,
    RATED_SECONDS,
    bodies,
    duplicates,
    kills,
    ledger,
)
from nbjobs.jobs import TERMINAL
from nbjobs.schema import attempts, checkpoints, jobs, signals, workers

TERMINAL_VALUES = {s.value for s in TERMINAL}
#: Clock skew allowed between the worker processes and the database clock.
SKEW_SECONDS = 0.5


@dataclass
class Check:
    name: str
    checked: int = 0
    violations: int = 0
    examples: list[str] = field(default_factory=list)
    note: str = ""

    def fail(self, example: str) -> None:
        self.violations += 1
        if len(self.examples) < 5:
            self.examples.append(example)

    @property
    def ok(self) -> bool:
        return self.violations == 0


@dataclass
class Snapshot:
    """Every row the checks read, loaded once after the run."""

    jobs: dict[str, Any]
    checkpoints: list[Any]
    attempts: dict[tuple[str, int], str]
    signals: list[Any]
    executions: dict[tuple[str, str], list[tuple[int, float]]]
    workers: list[Any]


def load(app: Any) -> Snapshot:
    with app.store._read() as conn:
        job_rows = {r.id: r for r in conn.execute(select(jobs))}
        cps = conn.execute(select(checkpoints)).all()
        atts = {(r.job_id, r.attempt): r.outcome for r in conn.execute(select(attempts))}
        sigs = conn.execute(select(signals)).all()
        execs: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
        for table in (ledger, duplicates):
            for r in conn.execute(
                select(table.c.job_id, table.c.step, table.c.attempt, table.c.at)
            ):
                execs[(r.job_id, r.step)].append((r.attempt, r.at))
        regs = conn.execute(select(workers)).all()
    return Snapshot(job_rows, cps, atts, sigs, dict(execs), regs)


def check_steps(snap: Snapshot) -> tuple[Check, Check]:
    """Committed steps ran exactly once after committing; uncommitted re-runs are counted."""
    exact = Check("committed steps never re-executed")
    rerun = Check("re-executions of uncommitted steps")
    committed = set()
    for cp in snap.checkpoints:
        if cp.kind != "step" or not cp.name.startswith("fx-") or not cp.done:
            continue
        committed.add((cp.job_id, cp.name))
        exact.checked += 1
        runs = [a for a, _ in snap.executions.get((cp.job_id, cp.name), [])]
        if runs.count(cp.attempt) != 1:
            exact.fail(
                f"{cp.job_id}/{cp.name}: {runs.count(cp.attempt)} runs by attempt {cp.attempt}"
            )
        for a in runs:
            if a > cp.attempt:
                exact.fail(
                    f"{cp.job_id}/{cp.name} ran again in attempt {a} after commit in {cp.attempt}"
                )
            elif a < cp.attempt:
                rerun.checked += 1
                outcome = snap.attempts.get((cp.job_id, a))
                # The attempt that ran it first must have ended without committing it.
                if outcome not in ("lost", "released", "timeout"):
                    exact.fail(f"{cp.job_id}/{cp.name}: earlier run in attempt {a} ({outcome})")
        if len(runs) != len(set(runs)):
            exact.fail(f"{cp.job_id}/{cp.name}: two runs in one attempt {sorted(runs)}")
    # An effect of a step that no committed history has, in a job that succeeded.
    for (job_id, step), runs in snap.executions.items():
        job = snap.jobs.get(job_id)
        if (job_id, step) not in committed and job is not None and job.status == "succeeded":
            exact.fail(f"{job_id}/{step}: ran {len(runs)}x but is not in the succeeded job")
    rerun.note = "expected: a step killed in flight runs again (at-least-once)"
    return exact, rerun


def check_stuck(snap: Snapshot, record: Record, config: Config) -> Check:
    c = Check("no job stuck (all terminal within the bound)")
    c.checked = len(snap.jobs)
    for j in snap.jobs.values():
        if j.status not in TERMINAL_VALUES:
            c.fail(f"{j.id} {j.workflow} {j.status} ({j.waiting_for or ''})")
    if record.drained_at is not None:
        c.note = (
            f"all terminal {record.drained_at - record.chaos_ended:.1f} s after the chaos phase"
        )
    else:
        c.note = f"not drained within {config.recovery_seconds:.0f} s"
    return c


def check_outcomes(snap: Snapshot, record: Record) -> Check:
    c = Check("expected outcomes (no job lost to the kills)")
    for sub in record.submitted:
        job = snap.jobs.get(sub.id)
        c.checked += 1
        if job is None:
            c.fail(f"{sub.id}: missing")
        elif not sub.cancel and job.status != "succeeded":
            c.fail(f"{sub.id} {sub.workflow}: {job.status}: {(job.error or '')[:80]}")
    for j in snap.jobs.values():
        if j.status == "failed" and "worker lost" in (j.error or ""):
            c.fail(f"{j.id}: {j.error[:80]}")
    return c


def check_fanouts(snap: Snapshot) -> Check:
    c = Check("fan-out counts match their children")
    children: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for j in snap.jobs.values():
        if j.parent_id is not None:
            children[(j.parent_id, j.fanout)].append(j)
            if j.parent_id not in snap.jobs:
                c.fail(f"{j.id}: orphan (parent {j.parent_id} missing)")
    for cp in snap.checkpoints:
        if cp.kind != "fanout":
            continue
        c.checked += 1
        parent = snap.jobs[cp.job_id]
        kids = sorted(children.get((cp.job_id, cp.name), []), key=lambda k: k.fanout_index)
        count = json.loads(cp.detail)["count"]
        if [k.fanout_index for k in kids] != list(range(count)):
            c.fail(f"{cp.job_id}/{cp.name}: {len(kids)} children for {count}")
            continue
        if any(k.root_id != (parent.root_id or parent.id) for k in kids):
            c.fail(f"{cp.job_id}/{cp.name}: a child with another root")
        if not cp.done:
            if parent.status == "succeeded":
                c.fail(f"{cp.job_id}/{cp.name}: undecided in a succeeded parent")
            continue
        outcomes = json.loads(cp.value)
        if len(outcomes) != count:
            c.fail(f"{cp.job_id}/{cp.name}: {len(outcomes)} outcomes for {count} children")
            continue
        for o, k in zip(outcomes, kids, strict=True):
            decided_without = "decided without it" in (o.get("error") or "")
            if o["job_id"] != k.id or (o["status"] != k.status and not decided_without):
                c.fail(f"{k.id}: outcome {o['status']} but the child is {k.status}")
    return c


def check_schedule(snap: Snapshot, app: Any) -> Check:
    from nbjobs.cron import parse

    c = Check("each schedule tick fired once")
    ticks = Counter(j.tick_at for j in snap.jobs.values() if j.schedule == SCHEDULE)
    c.checked = len(ticks)
    for tick, n in ticks.items():
        if n != 1:
            c.fail(f"tick {tick}: {n} jobs")
    row = app.store.list_schedules(SCHEDULE)[0]
    if not ticks:
        c.fail("the schedule never fired")
        return c
    expected = parse(CRON).ticks(min(ticks), row.last_fire_at, 100_000)
    missing = sorted(set(expected) - set(ticks))
    for tick in missing:
        c.fail(f"tick {tick} between the first and last fire has no job")
    c.note = f"{len(ticks)} ticks"
    return c


def check_signals(snap: Snapshot, record: Record) -> Check:
    c = Check("each signal consumed once, in order")
    consumers = Counter()
    for cp in snap.checkpoints:
        if cp.kind == "signal" and cp.done and cp.detail:
            sid = json.loads(cp.detail).get("signal")
            if sid:
                consumers[sid] += 1
    for s in snap.signals:
        c.checked += 1
        if consumers[s.id] > 1:
            c.fail(f"signal {s.id} consumed by {consumers[s.id]} checkpoints")
        if (s.consumed_at is None) != (consumers[s.id] == 0):
            c.fail(f"signal {s.id}: consumed_at {s.consumed_at} but {consumers[s.id]} consumers")
    for sub in record.submitted:
        job = snap.jobs.get(sub.id)
        if job is None or job.status != "succeeded" or "signals" not in sub.plan:
            continue
        got = json.loads(job.result)["signals"]
        if got != record.sent.get(sub.id, []):
            c.fail(f"{sub.id}: received {got}, sent {record.sent.get(sub.id)}")
    return c


def check_timers(snap: Snapshot) -> Check:
    c = Check("each timer fired once, never early")
    for cp in snap.checkpoints:
        if cp.kind != "sleep":
            continue
        c.checked += 1
        job = snap.jobs[cp.job_id]
        wake_at = json.loads(cp.detail)["wake_at"]
        if job.status == "succeeded" and not cp.done:
            c.fail(f"{cp.job_id}/{cp.name}: job succeeded, timer never fired")
        woke = snap.executions.get((cp.job_id, "fx-woke"), [])
        if woke and min(at for _, at in woke) < wake_at - SKEW_SECONDS:
            c.fail(f"{cp.job_id}: woke {wake_at - min(at for _, at in woke):.2f} s early")
        if job.status == "succeeded" and len({a for a, _ in woke}) != len(woke):
            c.fail(f"{cp.job_id}: the step after the timer ran twice in one attempt")
    return c


def check_keys(snap: Snapshot, record: Record) -> Check:
    c = Check("idempotency keys deduplicated")
    by_key = Counter(j.key for j in snap.jobs.values() if j.key and j.key.startswith("chaos-key-"))
    for key, ids in record.keys.items():
        c.checked += 1
        if len(set(ids)) != 1 or len(ids) != 3:
            c.fail(f"{key}: three submits returned {ids}")
        if by_key[key] != 1:
            c.fail(f"{key}: {by_key[key]} jobs")
    return c


def check_slots(snap: Snapshot, record: Record) -> Check:
    c = Check("no worker slot leaked")
    c.checked = record.slot_samples + len(record.live_workers)
    for example in record.slot_overflows:
        c.fail(example)
    for w in record.live_workers:
        running = record.running_by_worker.get(w.id, 0)
        if w.jobs_held != running:
            c.fail(f"{w.id}: jobs_held {w.jobs_held}, running {running}")
    live_ids = {w.id for w in record.live_workers}
    for w in snap.workers:
        dead = w.pid in record.killed_pids and w.stopped_at is None and w.id not in live_ids
        if dead and any(j.worker_id == w.id for j in snap.jobs.values() if j.status == "running"):
            c.fail(f"{w.id}: killed, still holds running jobs")
    c.note = f"{len(record.live_workers)} live workers at the end"
    return c


def check_limit(app: Any) -> Check:
    """No more bodies of the capped queue at once than its limit, from the bodies
    ledger: a body killed with its worker ends at the kill (its slot stays taken until
    its lease expires, so the limit still holds it then)."""
    c = Check("no limit ever exceeded")
    with app.store._read() as conn:
        rows = conn.execute(select(bodies).where(bodies.c.queue == CAPPED_QUEUE)).all()
        killed = dict(conn.execute(select(kills.c.pid, kills.c.at)).all())
    events: list[tuple[float, int, str]] = []
    for r in rows:
        end = r.ended
        if end is None:
            end = killed.get(r.pid)
        if end is None:
            c.fail(f"{r.job_id} attempt {r.attempt}: its body never ended, its worker not killed")
            continue
        events += [(r.started, 1, r.job_id), (end, -1, r.job_id)]
    c.checked = len(rows)
    running = peak = 0
    for at, step, _job in sorted(events):  # an end before a start at the same moment
        running += step
        peak = max(peak, running)
        if running > CAPPED_LIMIT:
            c.fail(f"{running} bodies of {CAPPED_QUEUE!r} at {at:.3f} (limit {CAPPED_LIMIT})")
    c.note = f"at most {peak} of {CAPPED_LIMIT} at once"
    return c


def check_rate(app: Any) -> Check:
    """No more starts of the rated queue in any window of the rate's length than the
    rate allows: the attempts' start times (each claim's time on the database clock,
    the one the limit counts with), killed attempts included."""
    c = Check("no rate window ever exceeded")
    with app.store._read() as conn:
        starts = sorted(
            conn.execute(
                select(attempts.c.started_at)
                .join(jobs, jobs.c.id == attempts.c.job_id)
                .where(jobs.c.queue == RATED_QUEUE)
            ).scalars()
        )
    c.checked = len(starts)
    busiest = 0
    for i, at in enumerate(starts):
        # The window (at - RATED_SECONDS, at] ends at this start: the starts in it.
        j = i
        while j > 0 and starts[j - 1] > at - RATED_SECONDS:
            j -= 1
        busiest = max(busiest, i - j + 1)
        if i - j + 1 > RATED_COUNT:
            c.fail(f"{i - j + 1} starts of {RATED_QUEUE!r} in {RATED_SECONDS:g} s to {at:.3f}")
    c.note = f"at most {busiest} of {RATED_COUNT} starts in a window"
    return c


def check_all(app: Any, record: Record, config: Config) -> list[Check]:
    snap = load(app)
    exact, rerun = check_steps(snap)
    checks = [
        exact,
        check_stuck(snap, record, config),
        check_outcomes(snap, record),
        check_fanouts(snap),
        check_schedule(snap, app),
        check_signals(snap, record),
        check_timers(snap),
        check_keys(snap, record),
        check_slots(snap, record),
        check_limit(app),
        check_rate(app),
    ]
    errors = Check("harness errors (submits, signals, cancels)", checked=1)
    for e in record.errors:
        errors.fail(e)
    checks.append(errors)
    rerun.violations = 0  # informational: expected, never a failure
    checks.append(rerun)
    return checks


def table(checks: list[Check], record: Record, snap_counts: dict[str, int]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'invariant':{width}}  {'checked':>8}  {'violations':>10}  result"]
    lines.append("-" * (width + 36))
    for c in checks:
        if c.name.startswith("re-executions"):
            result = f"{c.checked} (info)"
            lines.append(f"{c.name:{width}}  {c.checked:>8}  {'-':>10}  {result}")
        else:
            result = "OK" if c.ok else "FAIL"
            lines.append(f"{c.name:{width}}  {c.checked:>8}  {c.violations:>10}  {result}")
        if c.note:
            lines.append(f"{'':{width}}    {c.note}")
        for example in c.examples:
            lines.append(f"{'':{width}}    ! {example}")
    lines.append("-" * (width + 36))
    total = sum(snap_counts.values())
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(snap_counts.items()))
    lines.append(
        f"jobs {total} ({statuses}); top-level submissions {len(record.submitted)}; "
        f"SIGKILLs {record.kills}"
    )
    return "\n".join(lines)
