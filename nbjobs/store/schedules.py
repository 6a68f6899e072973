"""Cron schedules and their ticks.

A tick is claimed and its job enqueued in one transaction: the schedule row's
``next_fire_at`` is advanced only if it still holds the value the caller read (a
conditional ``UPDATE`` that exactly one worker wins, whatever the database), and the job
carries ``(schedule, tick_at)``, which the unique key ``uq_nbjobs_jobs_tick`` keeps single
even if a redefinition or a skewed clock ever offered the same tick twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, false, insert, select, true, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError

from ..jobs import Status
from ..schema import jobs, new_id, schedules
from .core import JOB_SUMMARY, CoreStore

#: The columns a firing worker needs.
_DUE_COLUMNS = (
    schedules.c.name,
    schedules.c.workflow,
    schedules.c.cron,
    schedules.c.timezone,
    schedules.c.input,
    schedules.c.queue,
    schedules.c.priority,
    schedules.c.catch_up,
    schedules.c.next_fire_at,
    schedules.c.max_retries,
    schedules.c.timeout_seconds,
    schedules.c.steps_expected,
)


class ScheduleQueries(CoreStore):
    """Cron schedules and their ticks."""

    def save_schedule(
        self,
        *,
        name: str,
        workflow: str,
        cron: str,
        timezone: str,
        input: str,
        queue: str,
        priority: int,
        catch_up: str,
        next_fire_at: float | None,
        max_retries: int | None = None,
        timeout_seconds: float | None = None,
        steps_expected: int | None = None,
    ) -> None:
        """Create a schedule, or update the one of that name.

        ``next_fire_at`` is used for a new schedule and when the cron text or timezone
        changed; otherwise the pending tick (and any backlog to catch up) is kept, so
        re-running the defining notebook cell neither skips nor repeats a run.  The paused
        flag and the fire history survive an update.
        """
        now = self.now()
        values = dict(
            workflow=workflow,
            cron=cron,
            timezone=timezone,
            input=input,
            queue=queue,
            priority=priority,
            catch_up=catch_up,
            max_retries=max_retries,
            timeout_seconds=timeout_seconds,
            steps_expected=steps_expected,
            updated_at=now,
        )
        for attempt in range(2):
            try:
                with self._write() as conn:
                    old = conn.execute(
                        self.dialect.lock(
                            select(schedules.c.cron, schedules.c.timezone).where(
                                schedules.c.name == name
                            )
                        )
                    ).first()
                    if old is None:
                        conn.execute(
                            insert(schedules).values(
                                name=name,
                                paused=False,
                                next_fire_at=next_fire_at,
                                created_at=now,
                                **values,
                            )
                        )
                    else:
                        changed = (old.cron, old.timezone) != (cron, timezone)
                        extra = {"next_fire_at": next_fire_at} if changed else {}
                        conn.execute(
                            update(schedules)
                            .where(schedules.c.name == name)
                            .values(**values, **extra)
                        )
                return
            except IntegrityError:
                if attempt:  # two processes created the name at once: update instead
                    raise

    def delete_schedule(self, name: str) -> bool:
        """Delete a schedule (its jobs stay); False when there is none of that name."""
        with self._write() as conn:
            return conn.execute(delete(schedules).where(schedules.c.name == name)).rowcount > 0

    def pause_schedule(self, name: str) -> bool:
        """Pause a schedule; False when there is none of that name."""
        with self._write() as conn:
            done = conn.execute(
                update(schedules)
                .where(schedules.c.name == name)
                .values(paused=True, updated_at=self.now())
            )
            return done.rowcount > 0

    def resume_schedule(self, name: str, *, cron: str, next_fire_at: float | None) -> bool:
        """Unpause a paused schedule from ``next_fire_at`` (ticks during the pause are skipped).

        Guarded by ``cron`` (the text ``next_fire_at`` was computed from) so a concurrent
        redefinition is not overwritten.  False when no paused schedule of that name and
        cron exists.
        """
        with self._write() as conn:
            done = conn.execute(
                update(schedules)
                .where(
                    schedules.c.name == name,
                    schedules.c.cron == cron,
                    schedules.c.paused == true(),
                )
                .values(paused=False, next_fire_at=next_fire_at, updated_at=self.now())
            )
            return done.rowcount > 0

    def list_schedules(self, name: str | None = None) -> Sequence[Row]:
        """Schedules by name, each with ``last_status``: the status of its latest job."""
        stmt = (
            select(schedules, jobs.c.status.label("last_status"))
            .select_from(schedules.outerjoin(jobs, jobs.c.id == schedules.c.last_job_id))
            .order_by(schedules.c.name)
        )
        if name is not None:
            stmt = stmt.where(schedules.c.name == name)
        with self._read() as conn:
            return conn.execute(stmt).all()

    def due_schedules(
        self,
        now: float,
        limit: int = 100,
        *,
        workflows: Sequence[str] | None = None,
        queues_: Sequence[str] | None = None,
    ) -> Sequence[Row]:
        """Unpaused schedules whose next tick is due: one read of ``ix_nbjobs_schedules_next``.

        ``workflows`` and ``queues_`` narrow it to the schedules a worker can run, so that
        a worker never fires a tick whose job no one here would claim.
        """
        stmt = select(*_DUE_COLUMNS).where(
            schedules.c.paused == false(), schedules.c.next_fire_at <= now
        )
        if workflows is not None:
            stmt = stmt.where(schedules.c.workflow.in_(list(workflows)))
        if queues_ is not None:
            stmt = stmt.where(schedules.c.queue.in_(list(queues_)))
        with self._read() as conn:
            return conn.execute(stmt.order_by(schedules.c.next_fire_at).limit(limit)).all()

    def fire_schedule(
        self,
        *,
        name: str,
        expected_next: float,
        ticks: Sequence[float],
        next_fire_at: float | None,
        job: dict[str, Any],
    ) -> list[str] | None:
        """Claim the due ticks of a schedule and enqueue one job per tick, atomically.

        Returns the ids of the ticks' jobs, or None when another worker claimed them first
        (or the schedule was paused, redefined or removed meanwhile).  ``job`` holds the
        fields every tick's job shares (workflow, input, queue, priority, ...).
        """
        now = self.now()
        with self._write() as conn:
            values: dict[str, Any] = dict(next_fire_at=next_fire_at, updated_at=now)
            if ticks:
                values["last_fire_at"] = ticks[-1]
            claimed = conn.execute(
                update(schedules)
                .where(
                    schedules.c.name == name,
                    schedules.c.next_fire_at == expected_next,
                    schedules.c.paused == false(),
                )
                .values(**values)
            )
            if claimed.rowcount != 1:
                return None
            if not ticks:
                return []
            # A job for one of these ticks may exist already (the schedule was recreated
            # under a clock that ran behind): it is the tick's run; never make a second.
            existing = dict(
                conn.execute(
                    select(jobs.c.tick_at, jobs.c.id).where(
                        jobs.c.schedule == name, jobs.c.tick_at.in_(list(ticks))
                    )
                ).all()
            )
            ids: list[str] = []
            rows: list[dict[str, Any]] = []
            for tick in ticks:
                if tick in existing:
                    ids.append(existing[tick])
                    continue
                job_id = new_id()
                ids.append(job_id)
                rows.append(
                    dict(
                        job,
                        id=job_id,
                        root_id=job_id,
                        status=Status.QUEUED.value,
                        run_at=tick,
                        schedule=name,
                        tick_at=tick,
                        created_at=now,
                        updated_at=now,
                    )
                )
            if rows:
                conn.execute(insert(jobs), rows)
            conn.execute(
                update(schedules).where(schedules.c.name == name).values(last_job_id=ids[-1])
            )
        return ids

    def fire_schedule_now(self, *, name: str, job: dict[str, Any]) -> str | None:
        """Enqueue one run of a schedule now, outside its cron ticks; returns the job's id.

        The schedule's next tick is left as it is; its last run becomes this job.  None
        when there is no schedule of that name.  The job carries the schedule's name and
        ``tick_at`` = now, so it shows in the schedule's history.
        """
        now = self.now()
        job_id = new_id()
        with self._write() as conn:
            found = conn.execute(
                update(schedules)
                .where(schedules.c.name == name)
                .values(last_fire_at=now, last_job_id=job_id, updated_at=now)
            )
            if found.rowcount != 1:
                return None
            conn.execute(
                insert(jobs).values(
                    dict(
                        job,
                        id=job_id,
                        root_id=job_id,
                        status=Status.QUEUED.value,
                        run_at=now,
                        schedule=name,
                        tick_at=now,
                        created_at=now,
                        updated_at=now,
                    )
                )
            )
        return job_id

    def schedule_jobs(self, name: str, *, limit: int = 100) -> Sequence[Row]:
        """A schedule's jobs, latest tick first (its history, for the dashboard)."""
        with self._read() as conn:
            return conn.execute(
                select(*JOB_SUMMARY)
                .where(jobs.c.schedule == name)
                .order_by(jobs.c.tick_at.desc())
                .limit(limit)
            ).all()
