"""Cron schedules stored in the database; each tick fired exactly once across workers.

A schedule lives in ``nbjobs_schedules``, not in code, so it survives a kernel restart and
every worker of every process sees it.  Every worker's monitor thread calls
:meth:`Scheduler.tick` a few times a second: one indexed read finds the due schedules, and
only then does a worker try to claim a tick.  The claim and the tick's job are one
transaction (see :meth:`nbjobs.store.schedules.ScheduleQueries.fire_schedule`), so a tick
becomes exactly one job however many workers race for it.

Missed ticks (no worker was running) follow the schedule's ``catch_up`` policy:

* ``"latest"`` (default): one run, for the latest missed tick;
* ``"all"``: one run per missed tick, oldest first, at most :data:`MAX_TICKS_PER_PASS`
  per transaction (the next passes continue with the rest);
* ``"none"``: missed ticks are skipped; a tick fires only if it is at most
  :data:`MISFIRE_GRACE_SECONDS` late.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import TYPE_CHECKING, Any

from ..artifacts.sweep import sweep
from ..clock import to_datetime
from ..codec import ARTIFACT_MARKER
from ..errors import ConfigurationError, NbjobsError, SerializationError
from ..jobs import FINISHED
from ..validation import check_name as _check_name
from ..validation import check_number
from .registry import Definition

if TYPE_CHECKING:
    from sqlalchemy.engine import Row

    from ..cron import Cron
    from .context import Runtime

log = logging.getLogger(__name__)

CATCH_UP = ("latest", "all", "none")
#: Ticks one pass of ``catch_up="all"`` enqueues in one transaction at most.
MAX_TICKS_PER_PASS = 1000
#: How late a tick may be and still fire under ``catch_up="none"``.
MISFIRE_GRACE_SECONDS = 60.0
#: Due schedules one tick pass handles at most (the rest wait for the next pass).
DUE_PER_PASS = 100
#: Longest cron expression a schedule takes (whitespace normalized).
MAX_CRON_LENGTH = 200


def _parse_cron(expression: str, timezone: str) -> Cron:
    """:func:`nbjobs.cron.parse`, imported on first use so ``import nbjobs`` skips croniter."""
    from ..cron import parse

    return parse(expression, timezone)


class Scheduler:
    """Defines schedules and fires their due ticks from the workers' monitor threads."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._failing: set[str] = set()  # schedules whose last firing raised (log once)

    # -- defining ----------------------------------------------------------------------
    def define(
        self,
        name: str,
        workflow: Definition | str,
        *,
        cron: str,
        args: tuple | list = (),
        kwargs: dict[str, Any] | None = None,
        timezone: str = "UTC",
        queue: str | None = None,
        priority: int | None = None,
        catch_up: str = "latest",
    ) -> dict[str, Any]:
        """Create or update (by name) a schedule; returns it as :meth:`every` shows it."""
        name = _check_name("schedule name", name)
        wf: Definition | None
        if isinstance(workflow, Definition):
            wf_name, wf = workflow.name, workflow
        elif isinstance(workflow, str):
            wf_name = _check_name("workflow name", workflow)
            wf = self._registered(wf_name)
        else:
            raise ConfigurationError(
                f"schedule {name!r}: workflow must be a workflow or its name, got {workflow!r}"
            )
        # Measured before parsing: croniter takes half a second over a 200 KB expression.
        if isinstance(cron, str) and len(" ".join(cron.split())) > MAX_CRON_LENGTH:
            raise ConfigurationError(
                f"schedule {name!r}: the cron expression is longer than {MAX_CRON_LENGTH} "
                f"characters: {cron[:40]!r}..."
            )
        spec = _parse_cron(cron, timezone)
        if catch_up not in CATCH_UP:
            raise ConfigurationError(
                f"schedule {name!r}: catch_up must be one of {', '.join(CATCH_UP)}, "
                f"got {catch_up!r}"
            )
        if queue is None:
            queue = wf.defaults.queue if wf is not None and wf.defaults.queue else "default"
        queue = _check_name("queue", queue)
        if priority is None:
            priority = wf.defaults.priority if wf is not None and wf.defaults.priority else 0
        check_number(f"schedule {name!r}: priority", priority, integer=True, int32=True)
        if not isinstance(args, (tuple, list)):
            raise ConfigurationError(f"schedule {name!r}: args must be a tuple or list")
        kwargs = kwargs or {}
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise ConfigurationError(f"schedule {name!r}: kwargs must be a dict with str keys")
        if wf is not None:
            try:
                wf.check_arguments(tuple(args), kwargs)
            except ConfigurationError as exc:
                raise ConfigurationError(f"schedule {name!r}: {exc}") from None
        try:
            encoded = self.runtime.codec.dumps({"args": list(args), "kwargs": kwargs})
        except SerializationError as exc:
            raise SerializationError(
                f"schedule {name!r}: an argument cannot be stored: {exc}"
            ) from None
        now = self.runtime.clock.now()
        next_fire = spec.next_after(now)
        if next_fire is None:
            raise ConfigurationError(
                f"schedule {name!r}: cron expression {spec.expression!r} never fires after now"
            )
        if wf is None:
            log.info(
                "schedule %r names workflow %r, not registered in this process; its jobs "
                "wait queued until a worker that registers it runs",
                name,
                wf_name,
            )
        self.runtime.store.save_schedule(
            name=name,
            workflow=wf_name,
            cron=spec.expression,
            timezone=spec.timezone,
            input=encoded,
            queue=queue,
            priority=priority,
            catch_up=catch_up,
            next_fire_at=next_fire,
            max_retries=self.runtime.retries(wf.defaults) if wf is not None else None,
            timeout_seconds=wf.defaults.timeout if wf is not None else None,
            steps_expected=wf.defaults.steps if wf is not None else None,
        )
        return self.get(name)

    def _registered(self, workflow: str) -> Definition | None:
        return self.runtime.registry.find(workflow)

    def remove(self, name: str) -> None:
        if not self.runtime.store.delete_schedule(name):
            raise ConfigurationError(f"no schedule named {name!r}")

    def set_paused(self, name: str, paused: bool) -> None:
        """Pause, or resume from the next tick after now (ticks while paused are skipped)."""
        if paused:
            if not self.runtime.store.pause_schedule(name):
                raise ConfigurationError(f"no schedule named {name!r}")
            return
        row = self._row(name)
        if not row.paused:
            return
        spec = _parse_cron(row.cron, row.timezone)
        next_fire = spec.next_after(self.runtime.clock.now())
        self.runtime.store.resume_schedule(name, cron=row.cron, next_fire_at=next_fire)

    # -- reading -----------------------------------------------------------------------
    def _row(self, name: str) -> Row:
        rows = self.runtime.store.list_schedules(name)
        if not rows:
            raise ConfigurationError(f"no schedule named {name!r}")
        return rows[0]

    def get(self, name: str) -> dict[str, Any]:
        return self._as_dict(self._row(name))

    def every(self) -> list[dict[str, Any]]:
        return [self._as_dict(r) for r in self.runtime.store.list_schedules()]

    def _as_dict(self, row: Row) -> dict[str, Any]:
        try:
            stored = self.runtime.codec.loads(row.input) or {}
        except (NbjobsError, ValueError):
            stored = {}  # e.g. pickled by an app that opted in; this one cannot read it
        return {
            "name": row.name,
            "workflow": row.workflow,
            "cron": row.cron,
            "timezone": row.timezone,
            "next_run": None if row.paused else to_datetime(row.next_fire_at),
            "last_run": to_datetime(row.last_fire_at),
            "last_status": row.last_status,
            "paused": bool(row.paused),
            "catch_up": row.catch_up,
            "queue": row.queue,
            "priority": row.priority,
            "args": stored.get("args"),
            "kwargs": stored.get("kwargs"),
            "last_job_id": row.last_job_id,
        }

    def run_now(self, name: str) -> str:
        """Fire the schedule ``name`` once, now (paused or not); its cron ticks go on as
        before.  Returns the new job's id."""
        row = self._row(name)
        fields = self._job_fields(row)
        with self.runtime.tracing.submitting(row.workflow, row.queue) as traced:
            if traced is not None:
                fields["trace_context"] = traced.carrier
                traced.scheduled(row.name)
            job_id = self.runtime.store.fire_schedule_now(name=row.name, job=fields)
            if traced is not None and job_id is not None:
                traced.submitted(job_id)
        if job_id is None:  # removed meanwhile
            raise ConfigurationError(f"no schedule named {name!r}")
        self.runtime.wake()
        return job_id

    # -- firing ------------------------------------------------------------------------
    def tick(self, queues: list[str] | None = None) -> int:
        """Fire due ticks (called by every worker's monitor; exactly once per tick).

        A worker fires only the schedules it can run (its App registers the workflow and
        it serves the queue: ``queues``): a tick fired by another worker would wait, orphaned, for
        one that can.  Returns the number of jobs this call enqueued.  Cheap when nothing
        is due: one indexed read, no write.
        """
        now = self.runtime.clock.now()
        runnable: dict[str, Any] = {}
        if queues is not None:
            runnable = dict(workflows=self.runtime.registry.claim_names, queues_=queues)
        due = self.runtime.store.due_schedules(now, limit=DUE_PER_PASS, **runnable)
        fired = 0
        for row in due:
            try:
                fired += self._fire(row, now)
                self._failing.discard(row.name)
            except Exception:
                if row.name not in self._failing:
                    self._failing.add(row.name)
                    log.exception("schedule %r: firing failed; will retry", row.name)
        return fired

    def _fire(self, row: Row, now: float) -> int:
        spec = _parse_cron(row.cron, row.timezone)
        expected = row.next_fire_at
        if row.catch_up == "all":
            ticks = spec.ticks(expected, now, MAX_TICKS_PER_PASS)
            next_fire = spec.next_after(ticks[-1])
        else:
            latest = spec.latest(expected, now)
            late = now - latest
            ticks = [latest] if row.catch_up != "none" or late <= MISFIRE_GRACE_SECONDS else []
            next_fire = spec.next_after(max(latest, now))
            if ticks and latest != expected:
                log.info("schedule %r: ran late; firing only its latest tick", row.name)
        fields = self._job_fields(row)
        tracing = self.runtime.tracing
        # Ticks fired in one pass share one submit span (none when no tick fires).
        traced_submit = tracing.submitting(row.workflow, row.queue) if ticks else None
        with traced_submit or contextlib.nullcontext() as traced:
            if traced is not None:
                fields["trace_context"] = traced.carrier
                traced.scheduled(row.name)
            ids = self.runtime.store.fire_schedule(
                name=row.name,
                expected_next=expected,
                ticks=ticks,
                next_fire_at=next_fire,
                job=fields,
            )
            if traced is not None and ids:
                traced.submitted(*ids)
        return len(ids or ())

    def _job_fields(self, row: Row) -> dict[str, Any]:
        """The fields a tick's job takes: the schedule's, with the workflow's options as
        recorded when the schedule was defined (or, failing that, as registered here)."""
        fields: dict[str, Any] = dict(
            workflow=row.workflow,
            input=row.input,
            queue=row.queue,
            priority=row.priority,
            max_retries=row.max_retries or 0,
            timeout_seconds=row.timeout_seconds,
            steps_expected=row.steps_expected,
        )
        wf = self._registered(row.workflow)
        if wf is not None:
            if row.max_retries is None:
                fields.update(
                    max_retries=self.runtime.retries(wf.defaults),
                    timeout_seconds=wf.defaults.timeout,
                    steps_expected=wf.defaults.steps,
                )
            fields["code_fingerprint"] = wf.fingerprint
        return fields


#: Batches one monitor pass of automatic retention deletes at most (each a short
#: transaction).
BATCHES_PER_PASS = 4
BATCH_SIZE = 500
#: Artifacts younger than this are never swept: their reference may not have committed.
SWEEP_GRACE_SECONDS = 3600.0
#: How often each worker with retention on sweeps the artifact store.
SWEEP_INTERVAL_SECONDS = 3600.0


def retention_interval(retention_seconds: float) -> float:
    """How often a worker purges: a tenth of the retention period, within [1 s, 5 min]."""
    return min(300.0, max(1.0, retention_seconds / 10))


def sweep_artifacts(runtime: Runtime, grace_seconds: float = SWEEP_GRACE_SECONDS) -> dict[str, int]:
    """Delete the artifacts no stored value refers to (see :mod:`nbjobs.artifacts.sweep`)."""
    artifacts = runtime.codec.artifacts
    if artifacts is None:
        return {"deleted": 0, "bytes": 0, "kept": 0, "temporary": 0}
    return sweep(artifacts, lambda: runtime.store.texts_containing(ARTIFACT_MARKER), grace_seconds)


class Retention:
    """Automatic retention (``App(retention_seconds=...)``), run by every worker's
    monitor: finished job trees older than the period are purged a few batches at a
    time, so no pass holds the database for long.  The artifacts they referred to are
    swept hourly, in a thread of its own (a listing of object storage may take a while,
    and the monitor also heartbeats)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._next_at = 0.0
        self._sweep_at = 0.0
        self._sweeping: threading.Thread | None = None

    def tick(self) -> None:
        """One pass, when it is due (a few batches at most)."""
        period = self.runtime.settings.retention_seconds
        now = self.runtime.clock.now()
        if period is None or now < self._next_at:
            return
        # Set first: a failing purge (logged by the monitor) waits a full interval to retry.
        self._next_at = now + retention_interval(period)
        deleted, more = self.runtime.store.purge_jobs(
            finished_before=now - period,
            statuses=FINISHED,
            batch_size=BATCH_SIZE,
            max_batches=BATCHES_PER_PASS,
        )
        if more:
            self._next_at = now + 1.0
        if deleted:
            log.info("retention: purged %d finished job(s)", deleted)
        idle = self._sweeping is None or not self._sweeping.is_alive()
        if self.runtime.codec.artifacts is not None and now >= self._sweep_at and idle:
            self._sweep_at = now + SWEEP_INTERVAL_SECONDS
            self._sweeping = threading.Thread(
                target=self._sweep, name="nbjobs-artifact-sweep", daemon=True
            )
            self._sweeping.start()

    def _sweep(self) -> None:
        try:
            sweep_artifacts(self.runtime)
        except Exception:
            log.exception("the artifact sweep failed; it runs again in an hour")
