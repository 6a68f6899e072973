"""The only module that executes SQL: one short transaction per method, verb_noun names.

Every write a worker makes for a job it runs is *fenced* by the job's lease token: the
``WHERE lease_token = :token`` clause makes a write from a worker whose lease was taken
over (a paused "zombie") touch no row, and the caller learns it lost the job.  No
transaction is ever held open while user code runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import bindparam, delete, func, insert, literal, null, select, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.sql import Executable

from .. import dialects
from ..clock import Clock
from ..dialects.base import Prepared
from ..errors import ConfigurationError, UnknownJob
from ..schema import (
    SCHEMA_VERSION,
    TERMINAL,
    Status,
    attempts,
    checkpoints,
    jobs,
    logs,
    meta,
    metadata,
    new_id,
    new_token,
    queues,
    signals,
    workers,
)

log = logging.getLogger(__name__)

#: Columns a job handle and the dashboard show (inputs and results are loaded apart).
JOB_SUMMARY = tuple(c for c in jobs.c if c.name not in ("input", "result", "traceback"))


@dataclass
class ClaimedJob:
    """A job a worker now owns, with the lease token that fences its writes."""

    id: str
    workflow: str
    queue: str
    input: str | None
    attempt: int
    max_retries: int
    failures: int
    timeout_seconds: float | None
    steps_done: int
    lease_token: str
    root_id: str | None
    parent_id: str | None
    reclaims: int


def _claimed(row: Row) -> ClaimedJob:
    return ClaimedJob(
        id=row.id,
        workflow=row.workflow,
        queue=row.queue,
        input=row.input,
        attempt=row.attempts,
        max_retries=row.max_retries,
        failures=row.failures,
        timeout_seconds=row.timeout_seconds,
        steps_done=row.steps_done,
        lease_token=row.lease_token,
        root_id=row.root_id,
        parent_id=row.parent_id,
        reclaims=row.reclaims,
    )


_TERMINAL_VALUES = frozenset(s.value for s in TERMINAL)

#: "The caller does not know": the hook looks the job's parent up itself.
UNKNOWN: Any = object()

# Hot-path statements, built once with bind parameters (building a statement costs more
# than running it on SQLite).
_CLAIM_VALUES = dict(
    status=Status.RUNNING.value,
    lease_token=bindparam("c_token", None),
    lease_expires_at=bindparam("c_expires", None),
    worker_id=bindparam("c_worker", None),
    started_at=func.coalesce(jobs.c.started_at, bindparam("c_now", None)),
    claimed_at=bindparam("c_now", None),
    waiting_for=None,
    updated_at=bindparam("c_now", None),
)
_INSERT_JOB = insert(jobs)
_INSERT_CHECKPOINT = insert(checkpoints)
_FENCED = (jobs.c.id == bindparam("f_id"), jobs.c.lease_token == bindparam("f_token"))
_FENCE_STEP = (
    update(jobs)
    .where(*_FENCED)
    .values(updated_at=bindparam("f_now"), steps_done=jobs.c.steps_done + 1)
)
_FINISH = (
    update(jobs)
    .where(*_FENCED)
    .values(
        status=bindparam("f_status"),
        result=bindparam("f_result"),
        error=bindparam("f_error"),
        traceback=bindparam("f_traceback"),
        finished_at=bindparam("f_now"),
        updated_at=bindparam("f_now"),
        lease_token=None,
        lease_expires_at=None,
        failures=jobs.c.failures + bindparam("f_failed"),
    )
)
_FINISH_ATTEMPT = insert(attempts).from_select(
    [
        attempts.c.job_id,
        attempts.c.attempt,
        attempts.c.worker_id,
        attempts.c.outcome,
        attempts.c.started_at,
        attempts.c.finished_at,
        attempts.c.error,
        attempts.c.traceback,
    ],
    select(
        jobs.c.id,
        bindparam("a_attempt", None),
        jobs.c.worker_id,
        bindparam("a_outcome", None),
        func.coalesce(jobs.c.claimed_at, bindparam("a_now", None)),
        bindparam("a_now", None),
        bindparam("a_error", None),
        bindparam("a_traceback", None),
    ).where(jobs.c.id == bindparam("a_job", None)),
)


# What the reaper needs of a job whose worker was lost.
_LOST_COLUMNS = (
    jobs.c.id,
    jobs.c.lease_token,
    jobs.c.attempts,
    jobs.c.reclaims,
    jobs.c.cancel_requested,
)


T = TypeVar("T")


class _GroupedWork:
    """One thread's piece of a group commit."""

    __slots__ = ("done", "error", "result", "work")

    def __init__(self, work: Callable[[Connection], Any]) -> None:
        self.work = work
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a live process from a reused pid)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_alive(pid: int, pid_start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid_start is None or _process_start(pid) in (None, pid_start)


class CoreStore:
    """Connections, schema, submitting, claiming, running and the reaper."""

    def __init__(self, url: str, *, clock: Clock | None = None, **options: Any) -> None:
        self.dialect = dialects.for_url(url, **options)
        self.url = self.dialect.url
        self.safe_url = dialects.safe_url(self.url)
        self.clock = clock or Clock()
        self.engine = self.dialect.create_engine()
        self._write_options = self.dialect.write_options()
        self._local = threading.local()
        self._claim_plans: dict[tuple, Any] = {}
        self._prepared: dict[int, Prepared] = {}
        self._group: list[_GroupedWork] = []
        self._group_lock = threading.Lock()
        self._kept: weakref.WeakSet[Connection] = weakref.WeakSet()
        try:
            self.migrate()
            self.sync_clock()
        except OperationalError as exc:
            self.engine.dispose()
            raise ConfigurationError(
                f"cannot open the nbjobs database at {self.safe_url}: {exc.orig}"
            ) from exc
        except DBAPIError as exc:
            self.engine.dispose()
            raise ConfigurationError(
                f"the database at {self.safe_url} refused nbjobs: {exc.orig}"
            ) from exc

    def close(self) -> None:
        self._kept.clear()
        self.engine.dispose()
        self.dialect.close()

    def listen_ready(self, callback: Any) -> Any:
        """Push wake-ups (PostgreSQL LISTEN/NOTIFY): ``callback(queue)`` when a job
        becomes ready anywhere; returns a stop function, or None (polling only)."""
        return self.dialect.listen(callback)

    # -- transactions ------------------------------------------------------------------
    # On embedded databases each thread keeps its own two connections (one that reads,
    # one that writes), which saves a pool checkout per transaction on the hot path; and
    # writers of this process queue on the dialect's mutex instead of SQLite's sleeping
    # busy handler.  Server databases check connections out of the pool as usual.
    def _kept_connection(self, role: str) -> Connection:
        local = self._local
        conn = getattr(local, role, None)
        if conn is None or conn.closed:
            conn = self.engine.connect()
            if role == "writer" and self._write_options:
                conn.execution_options(**self._write_options)
            setattr(local, role, conn)
            self._kept.add(conn)
        return conn

    def _drop_kept(self, role: str) -> None:
        conn = getattr(self._local, role, None)
        if conn is not None:
            setattr(self._local, role, None)
            self._kept.discard(conn)
            try:
                conn.close()
            except Exception:
                pass

    @contextlib.contextmanager
    def _transaction(self, role: str) -> Iterator[Connection]:
        if not self.dialect.keep_connections:
            with self.engine.connect() as conn:
                if role == "writer" and self._write_options:
                    conn.execution_options(**self._write_options)
                with conn.begin():
                    yield conn
            return
        conn = self._kept_connection(role)
        try:
            with conn.begin():
                yield conn
        except DBAPIError:
            self._drop_kept(role)
            raise

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """A short write transaction (``BEGIN IMMEDIATE`` on SQLite)."""
        with self.dialect.write_lock, self._transaction("writer") as conn:
            yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._transaction("reader") as conn:
            yield conn

    def _grouped(self, work: Callable[[Connection], T]) -> T:
        """Run ``work(conn)`` in a write transaction shared with other threads (group commit).

        On SQLite, threads that want to write while another holds the write lock leave
        their work in a list; the next thread to get the lock runs every piece waiting
        in one transaction, so N concurrent finishes cost one commit instead of N.  A
        failing piece never takes the others down: the batch is re-run one by one.
        """
        if not self.dialect.group_commit:
            return self._retry_conflicts(work)
        request = _GroupedWork(work)
        with self._group_lock:
            self._group.append(request)
        with self.dialect.write_lock:
            if not request.done:
                with self._group_lock:
                    batch, self._group = self._group, []
                self._commit_group(batch)
        if request.error is not None:
            raise request.error
        return request.result

    def _retry_conflicts(self, work: Callable[[Connection], T]) -> T:
        """``work(conn)`` in a write transaction, run again when the server aborted it for
        a deadlock or a serialization conflict (it rolled back whole, so this is safe)."""
        for attempt in range(5):
            try:
                with self._write() as conn:
                    return work(conn)
            except DBAPIError as exc:
                if attempt == 4 or exc.connection_invalidated:
                    raise
                if not self.dialect.is_transient(exc):
                    raise
                log.info("write transaction aborted by a conflict; running it again: %s", exc.orig)
                time.sleep(0.005 * 2**attempt)
        raise AssertionError("unreachable")

    def _commit_group(self, batch: list[_GroupedWork]) -> None:
        try:
            with self._transaction("writer") as conn:
                for request in batch:
                    request.result = request.work(conn)
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:
                for request in batch:
                    try:
                        with self._transaction("writer") as conn:
                            request.result = request.work(conn)
                    except Exception as single:
                        request.error = single
        finally:
            for request in batch:
                request.done = True

    def now(self) -> float:
        return self.clock.now()

    def _run(self, conn: Connection, statement: Any, params: Any) -> Any:
        """Execute one of the module's hot-path statements, compiled once per store."""
        prepared = self._prepared.get(id(statement))
        if prepared is None:
            prepared = self._prepared[id(statement)] = Prepared(statement, self.engine.dialect)
        return prepared.execute(conn, params)

    # -- schema ------------------------------------------------------------------------
    def migrate(self) -> int:
        """Create the tables or migrate them forward; never destroys data."""
        with self._write() as conn, self.dialect.migration_lock(conn):
            metadata.create_all(conn, checkfirst=True)
            self.dialect.after_create(conn)
            version = conn.execute(
                select(meta.c.value).where(meta.c.key == "schema_version")
            ).scalar()
            if version is None:
                conn.execute(insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
                return SCHEMA_VERSION
            current = int(version)
            if current > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"the database at {self.safe_url} has nbjobs schema version {current}, "
                    f"newer than this nbjobs ({SCHEMA_VERSION}); upgrade nbjobs"
                )
            for target in range(current + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[target](conn)
                conn.execute(
                    update(meta).where(meta.c.key == "schema_version").values(value=str(target))
                )
            return SCHEMA_VERSION

    def sync_clock(self) -> None:
        """Correct the clock by the database server's offset (workers' clocks may differ)."""
        with self._read() as conn:
            server = self.dialect.server_time(conn)
        if server is not None and type(self.clock) is Clock:
            import time

            self.clock.offset_seconds = server - time.time()

    # -- submitting --------------------------------------------------------------------
    def enqueue_job(
        self,
        *,
        workflow: str,
        input: str,
        queue: str = "default",
        priority: int = 0,
        run_at: float | None = None,
        key: str | None = None,
        max_retries: int = 0,
        timeout_seconds: float | None = None,
        steps_expected: int | None = None,
        code_fingerprint: str | None = None,
        parent_id: str | None = None,
        root_id: str | None = None,
        fanout: str | None = None,
        fanout_index: int | None = None,
        schedule: str | None = None,
        tick_at: float | None = None,
    ) -> tuple[str, bool]:
        """Insert a queued job; returns (id, created).  A known ``key`` returns its job."""
        now = self.now()
        job_id = new_id()
        values = dict(
            id=job_id,
            workflow=workflow,
            queue=queue,
            status=Status.QUEUED.value,
            priority=priority,
            run_at=now if run_at is None else run_at,
            key=key,
            input=input,
            max_retries=max_retries,
            timeout_seconds=timeout_seconds,
            steps_expected=steps_expected,
            code_fingerprint=code_fingerprint,
            parent_id=parent_id,
            root_id=root_id or job_id,
            fanout=fanout,
            fanout_index=fanout_index,
            schedule=schedule,
            tick_at=tick_at,
            attempts=0,
            failures=0,
            reclaims=0,
            steps_done=0,
            cancel_requested=False,
            created_at=now,
            updated_at=now,
        )
        if key is None:
            with self._write() as conn:
                self._run(conn, _INSERT_JOB, values)
            return job_id, True
        try:
            with self._write() as conn:
                self._run(conn, _INSERT_JOB, values)
            return job_id, True
        except IntegrityError:
            with self._read() as conn:
                existing = conn.execute(select(jobs.c.id).where(jobs.c.key == key)).scalar()
            if existing is None:
                raise
            return existing, False

    def enqueue_running(
        self, *, worker_id: str, lease_seconds: float, **fields: Any
    ) -> tuple[ClaimedJob | None, str]:
        """Insert a job already claimed by the caller (``wf.run``); returns (claim, id).

        With a known idempotency key, the existing job is returned unclaimed (None).
        """
        job_id, created = self.enqueue_job(**fields)
        if not created:
            return None, job_id
        return self.claim_job(job_id, worker_id=worker_id, lease_seconds=lease_seconds), job_id

    # -- claiming ----------------------------------------------------------------------
    def _claim_plan(self, queue: str | None, workflows: tuple[str, ...], limit: int) -> Any:
        """The claim statement for one shape, built once (``queue`` None: one job by id)."""
        key = (queue, workflows, limit)
        plan = self._claim_plans.get(key)
        if plan is None:
            if queue is None:
                candidates = select(jobs.c.id).where(
                    jobs.c.id == bindparam("c_job", None), jobs.c.status == Status.QUEUED.value
                )
            else:
                candidates = self.dialect.claim_candidates(
                    queue, list(workflows), bindparam("c_now", None), limit
                )
            plan = self.dialect.claim_statement(candidates, _CLAIM_VALUES)
            if isinstance(plan, Executable):
                plan = Prepared(plan, self.engine.dialect)
            if len(self._claim_plans) > 256:
                self._claim_plans.clear()
            self._claim_plans[key] = plan
        return plan

    def _claim(
        self,
        conn: Connection,
        plan: Any,
        worker_id: str,
        lease_seconds: float,
        **params: Any,
    ) -> list[ClaimedJob]:
        """Run a claim plan and record an attempt row per claimed job, in ``conn``'s txn."""
        now = self.now()
        rows = self.dialect.claim(
            conn,
            plan,
            dict(
                params,
                c_now=now,
                c_token=new_token(),
                c_expires=now + lease_seconds,
                c_worker=worker_id,
            ),
        )
        if not rows:
            return []
        rows.sort(key=lambda r: (-r.priority, r.run_at or 0.0, r.id))
        claimed = [_claimed(r) for r in rows]
        return claimed

    def paused_queues(self) -> set[str]:
        with self._read() as conn:
            return set(conn.execute(select(queues.c.name).where(queues.c.paused)).scalars())

    def claim_jobs(
        self,
        *,
        worker_id: str,
        queue: str,
        workflows: Sequence[str],
        limit: int,
        lease_seconds: float,
    ) -> list[ClaimedJob]:
        """Claim up to ``limit`` ready jobs of ``queue`` whose workflow this worker knows."""
        if limit <= 0 or not workflows:
            return []
        plan = self._claim_plan(queue, tuple(workflows), min(limit, self.dialect.claim_batch))
        with self._write() as conn:
            return self._claim(conn, plan, worker_id, lease_seconds)

    def claim_job(self, job_id: str, *, worker_id: str, lease_seconds: float) -> ClaimedJob | None:
        """Claim one given job if it is queued (``wf.run`` and its inline retries)."""
        with self._write() as conn:
            claimed = self._claim(
                conn, self._claim_plan(None, (), 1), worker_id, lease_seconds, c_job=job_id
            )
        return claimed[0] if claimed else None

    # -- running -----------------------------------------------------------------------
    def load_checkpoints(self, job_id: str) -> dict[str, Row]:
        with self._read() as conn:
            rows = conn.execute(
                select(checkpoints)
                .where(checkpoints.c.job_id == job_id)
                .order_by(checkpoints.c.seq)
            )
            return {r.name: r for r in rows}

    def _fence(self, conn: Connection, job_id: str, token: str, **values: Any) -> bool:
        """Touch the job only while ``token`` still holds its lease; True when it does."""
        result = conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.lease_token == token)
            .values(updated_at=self.now(), **values)
        )
        return result.rowcount == 1

    def record_checkpoint(
        self,
        *,
        job_id: str,
        token: str,
        name: str,
        seq: int,
        value: str,
        args_hash: str | None,
        code_fingerprint: str | None,
        attempt: int,
        started_at: float,
        kind: str = "step",
    ) -> bool:
        """Persist a finished step; False (nothing written) when the lease was lost."""
        now = self.now()
        with self._write() as conn:
            fenced = self._run(conn, _FENCE_STEP, dict(f_id=job_id, f_token=token, f_now=now))
            if fenced.rowcount != 1:
                return False
            self._run(
                conn,
                _INSERT_CHECKPOINT,
                dict(
                    job_id=job_id,
                    name=name,
                    seq=seq,
                    kind=kind,
                    done=True,
                    value=value,
                    detail=None,
                    args_hash=args_hash,
                    code_fingerprint=code_fingerprint,
                    attempt=attempt,
                    started_at=started_at,
                    finished_at=now,
                ),
            )
        return True

    def set_progress(
        self, job_id: str, token: str, progress: float | None, message: str | None
    ) -> bool:
        with self._write() as conn:
            return self._fence(
                conn, job_id, token, progress=progress, message=(message or None) and message[:500]
            )

    def _finish_attempt(
        self,
        conn: Connection,
        job_id: str,
        attempt: int,
        outcome: str,
        error: str | None = None,
        traceback: str | None = None,
    ) -> None:
        """Write the ended attempt's row from the job row (its worker and start time)."""
        self._run(
            conn,
            _FINISH_ATTEMPT,
            dict(
                a_job=job_id,
                a_attempt=attempt,
                a_outcome=outcome,
                a_now=self.now(),
                a_error=error,
                a_traceback=traceback,
            ),
        )

    def finish_job(
        self,
        *,
        job_id: str,
        token: str,
        attempt: int,
        status: Status,
        result: str | None = None,
        error: str | None = None,
        traceback: str | None = None,
        outcome: str | None = None,
    ) -> bool:
        """Record a terminal status; False when the lease was lost (nothing written)."""
        accepted, _ = self.finish_and_claim(
            job_id=job_id,
            token=token,
            attempt=attempt,
            status=status,
            result=result,
            error=error,
            traceback=traceback,
            outcome=outcome,
        )
        return accepted

    def finish_and_claim(
        self,
        *,
        job_id: str,
        token: str,
        attempt: int,
        status: Status,
        result: str | None = None,
        error: str | None = None,
        traceback: str | None = None,
        outcome: str | None = None,
        claim: dict[str, Any] | None = None,
        parent_id: str | object | None = UNKNOWN,
    ) -> tuple[bool, ClaimedJob | None]:
        """Record a terminal status and, in the same transaction, claim the next job.

        ``claim`` (worker_id, queue, workflows, lease_seconds) lets a worker thread that
        just finished a job take the next one with one commit instead of two.  Returns
        (accepted, next job or None); nothing is written or claimed when the lease was lost.
        """
        return self._grouped(
            lambda conn: self._finish_and_claim(
                conn, job_id, token, attempt, status, result, error, traceback, outcome,
                claim, parent_id,
            )
        )  # fmt: skip

    def _finish_and_claim(
        self,
        conn: Connection,
        job_id: str,
        token: str,
        attempt: int,
        status: Status,
        result: str | None,
        error: str | None,
        traceback: str | None,
        outcome: str | None,
        claim: dict[str, Any] | None,
        parent_id: str | object | None,
    ) -> tuple[bool, ClaimedJob | None]:
        now = self.now()
        if True:
            fenced = self._run(
                conn,
                _FINISH,
                dict(
                    f_id=job_id,
                    f_token=token,
                    f_now=now,
                    f_status=status.value,
                    f_result=result,
                    f_error=error,
                    f_traceback=traceback,
                    f_failed=1 if status == Status.FAILED else 0,
                ),
            )
            if fenced.rowcount != 1:
                return False, None
            self._finish_attempt(conn, job_id, attempt, outcome or status.value, error, traceback)
            self._after_terminal(conn, job_id, parent_id)
            if claim is None:
                return True, None
            plan = self._claim_plan(claim["queue"], tuple(claim["workflows"]), 1)
            claimed = self._claim(conn, plan, claim["worker_id"], claim["lease_seconds"])
            return True, (claimed[0] if claimed else None)

    def retry_job_later(
        self,
        *,
        job_id: str,
        token: str,
        attempt: int,
        run_at: float,
        error: str,
        traceback: str | None,
        outcome: str = "failed",
    ) -> bool:
        """Put a failed attempt's job back in the queue to run at ``run_at``."""
        with self._write() as conn:
            if not self._fence(
                conn,
                job_id,
                token,
                status=Status.QUEUED.value,
                run_at=run_at,
                error=error,
                traceback=traceback,
                lease_token=None,
                lease_expires_at=None,
                failures=jobs.c.failures + 1,
            ):
                return False
            self._finish_attempt(conn, job_id, attempt, outcome, error, traceback)
        return True

    def release_job(self, *, job_id: str, token: str, attempt: int) -> bool:
        """Give a running job back to the queue untouched (graceful stop)."""
        with self._write() as conn:
            if not self._fence(
                conn,
                job_id,
                token,
                status=Status.QUEUED.value,
                run_at=self.now(),
                lease_token=None,
                lease_expires_at=None,
            ):
                return False
            self._finish_attempt(conn, job_id, attempt, "released")
        return True

    def job_flags(self, job_ids: Iterable[str]) -> dict[str, bool]:
        """``cancel_requested`` for the given jobs."""
        ids = list(job_ids)
        if not ids:
            return {}
        with self._read() as conn:
            rows = conn.execute(
                select(jobs.c.id, jobs.c.cancel_requested).where(jobs.c.id.in_(ids))
            )
            return {r.id: bool(r.cancel_requested) for r in rows}

    # -- workers, heartbeats and the reaper --------------------------------------------
    def register_worker(self, *, worker_id: str, queues_: Sequence[str], concurrency: int) -> None:
        now = self.now()
        pid = os.getpid()
        with self._write() as conn:
            conn.execute(
                insert(workers).values(
                    id=worker_id,
                    host=socket.gethostname(),
                    pid=pid,
                    pid_start=_process_start(pid),
                    queues=",".join(queues_),
                    concurrency=concurrency,
                    jobs_held=0,
                    started_at=now,
                    heartbeat_at=now,
                )
            )

    def stop_worker(self, worker_id: str) -> None:
        with self._write() as conn:
            conn.execute(
                update(workers)
                .where(workers.c.id == worker_id)
                .values(stopped_at=self.now(), jobs_held=0)
            )

    def heartbeat(
        self, *, worker_id: str, held: dict[str, str], lease_seconds: float
    ) -> tuple[set[str], set[str]]:
        """Extend the leases this worker still holds.

        ``held`` maps job id to lease token.  Returns (lost, cancel_requested): the jobs
        whose lease another worker took, and the jobs someone asked to cancel.
        """
        now = self.now()
        with self._write() as conn:
            conn.execute(
                update(workers)
                .where(workers.c.id == worker_id)
                .values(heartbeat_at=now, jobs_held=len(held))
            )
            if not held:
                return set(), set()
            conn.execute(
                update(jobs)
                .where(
                    jobs.c.id.in_(list(held)),
                    jobs.c.worker_id == worker_id,
                    jobs.c.status == Status.RUNNING.value,
                )
                .values(lease_expires_at=now + lease_seconds)
            )
            rows = conn.execute(
                select(jobs.c.id, jobs.c.lease_token, jobs.c.cancel_requested, jobs.c.status).where(
                    jobs.c.id.in_(list(held))
                )
            ).all()
        owned = {r.id for r in rows if r.lease_token == held[r.id]}
        cancel = {r.id for r in rows if r.cancel_requested and r.id in owned}
        # A job that finished since the caller looked is not lost, just done.
        finished = {r.id for r in rows if r.status in _TERMINAL_VALUES}
        return set(held) - owned - finished, cancel

    def _requeue_lost(
        self, conn: Connection, rows: list[Row], reason: str, max_reclaims: int
    ) -> int:
        """Put jobs of a dead or silent worker back in the queue (or fail poison ones)."""
        now = self.now()
        count = 0
        for r in rows:
            give_up = r.reclaims + 1 > max_reclaims
            error = (
                f"worker lost {r.reclaims + 1} times ({reason}); the job may crash its worker "
                f"- giving up after {max_reclaims} reclaims"
                if give_up
                else f"worker lost ({reason}); the job was put back in the queue"
            )
            values: dict[str, Any] = dict(
                lease_token=None,
                lease_expires_at=None,
                reclaims=jobs.c.reclaims + 1,
                updated_at=now,
            )
            if give_up:
                values.update(status=Status.FAILED.value, error=error, finished_at=now)
            elif r.cancel_requested:  # cancelled while its worker was gone: do not rerun
                values.update(status=Status.CANCELLED.value, error="cancelled", finished_at=now)
            else:
                values.update(status=Status.QUEUED.value, run_at=now)
            done = conn.execute(
                update(jobs)
                .where(jobs.c.id == r.id, jobs.c.lease_token == r.lease_token)
                .values(**values)
            )
            if done.rowcount:
                count += 1
                self._finish_attempt(conn, r.id, r.attempts, "lost", error)
                if give_up or r.cancel_requested:
                    self._after_terminal(conn, r.id)
        return count

    def reap_expired(self, *, max_reclaims: int, limit: int = 200) -> int:
        """Requeue running jobs whose lease expired (their worker stopped heartbeating)."""
        now = self.now()
        with self._write() as conn:
            rows = conn.execute(
                self.dialect.lock(
                    select(*_LOST_COLUMNS)
                    .where(jobs.c.status == Status.RUNNING.value, jobs.c.lease_expires_at < now)
                    .limit(limit),
                    skip_locked=True,  # a row someone holds is being finished or renewed
                )
            ).all()
            return self._requeue_lost(conn, rows, "heartbeat stopped", max_reclaims)

    def reclaim_dead_local_workers(self, *, max_reclaims: int) -> int:
        """Requeue jobs of workers on this host whose process is gone, without waiting."""
        host = socket.gethostname()
        with self._read() as conn:
            candidates = conn.execute(
                select(workers.c.id, workers.c.pid, workers.c.pid_start).where(
                    workers.c.host == host, workers.c.stopped_at.is_(None)
                )
            ).all()
        dead = [w.id for w in candidates if not process_alive(w.pid, w.pid_start)]
        if not dead:
            return 0
        with self._write() as conn:
            rows = conn.execute(
                self.dialect.lock(
                    select(*_LOST_COLUMNS).where(
                        jobs.c.status == Status.RUNNING.value, jobs.c.worker_id.in_(dead)
                    ),
                    skip_locked=True,
                )
            ).all()
            count = self._requeue_lost(conn, rows, "its process died", max_reclaims)
            conn.execute(
                update(workers).where(workers.c.id.in_(dead)).values(stopped_at=self.now())
            )
        if count:
            log.warning("reclaimed %d job(s) of dead worker process(es) %s", count, dead)
        return count

    def wake_due_jobs(self) -> int:
        """Move waiting jobs whose timer is due back to the queue."""
        now = self.now()
        due = (jobs.c.status == Status.WAITING.value, jobs.c.run_at <= now)
        with self._read() as conn:  # a cheap indexed look first: no write lock when idle
            if conn.execute(select(jobs.c.id).where(*due).limit(1)).first() is None:
                return 0
        with self._write() as conn:
            result = conn.execute(
                update(jobs).where(*due).values(status=Status.QUEUED.value, updated_at=now)
            )
            return result.rowcount

    def next_due_at(self, queue_names: Sequence[str]) -> float | None:
        """When the next delayed or sleeping job becomes ready (for an exact idle wait)."""
        with self._read() as conn:
            queued = conn.execute(
                select(func.min(jobs.c.run_at)).where(
                    jobs.c.status == Status.QUEUED.value, jobs.c.queue.in_(list(queue_names))
                )
            ).scalar()
            waiting = conn.execute(
                select(func.min(jobs.c.run_at)).where(jobs.c.status == Status.WAITING.value)
            ).scalar()
        due = [t for t in (queued, waiting) if t is not None]
        return min(due) if due else None

    def _after_terminal(
        self, conn: Connection, job_id: str, parent_id: str | object | None = UNKNOWN
    ) -> None:
        """Hook run in the transaction that makes a job terminal (fan-in lives here).

        ``parent_id`` is passed when the caller knows it (``None``: a top-level job, so
        nothing to decide and no query needed on the hot path).
        """

    # -- user actions ------------------------------------------------------------------
    def cancel_job(self, job_id: str) -> str:
        """Cancel a job: at once when queued or waiting, at its next step when running."""
        now = self.now()
        with self._write() as conn:
            row = conn.execute(
                self.dialect.lock(select(jobs.c.status).where(jobs.c.id == job_id))
            ).first()
            if row is None:
                raise UnknownJob(f"no job with id {job_id!r}")
            status = Status(row.status)
            if status in TERMINAL:
                return status.value
            if status in (Status.QUEUED, Status.WAITING):
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id)
                    .values(
                        status=Status.CANCELLED.value,
                        cancel_requested=True,
                        finished_at=now,
                        updated_at=now,
                        error="cancelled",
                    )
                )
                self._after_terminal(conn, job_id)
                return Status.CANCELLED.value
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(cancel_requested=True, updated_at=now)
            )
            return status.value

    def retry_job(self, job_id: str, from_checkpoint: str | None = None) -> None:
        """Queue a finished job again, keeping its checkpoints (or those before a step).

        Everything happens in one transaction, the ``_before_retry`` hook included (it
        reopens failed fan-outs so that only their unsuccessful children run again).
        """
        self._retry_conflicts(lambda conn: self._retry_job(conn, job_id, from_checkpoint))

    def _retry_job(self, conn: Connection, job_id: str, from_checkpoint: str | None) -> None:
        now = self.now()
        row = conn.execute(
            self.dialect.lock(select(jobs.c.status).where(jobs.c.id == job_id))
        ).first()
        if row is None:
            raise UnknownJob(f"no job with id {job_id!r}")
        status = Status(row.status)
        if from_checkpoint is None and status not in (Status.FAILED, Status.CANCELLED):
            raise ConfigurationError(
                f"job {job_id} is {status.value}; retry() takes a failed or cancelled job "
                "(use retry(from_checkpoint=...) to re-run a succeeded one from a step)"
            )
        if status not in TERMINAL:
            raise ConfigurationError(
                f"job {job_id} is {status.value}; wait for it to finish or cancel it first"
            )
        if from_checkpoint is not None:
            names = (
                conn.execute(
                    select(checkpoints.c.name, checkpoints.c.seq)
                    .where(checkpoints.c.job_id == job_id)
                    .order_by(checkpoints.c.seq)
                )
            ).all()
            seq = next((r.seq for r in names if r.name == from_checkpoint), None)
            if seq is None:
                raise ConfigurationError(
                    f"job {job_id} has no checkpoint {from_checkpoint!r}; it has "
                    f"{[r.name for r in names]}"
                )
            conn.execute(
                delete(checkpoints).where(checkpoints.c.job_id == job_id, checkpoints.c.seq >= seq)
            )
        self._before_retry(conn, job_id, status, from_checkpoint)
        kept = conn.execute(
            select(func.count()).where(checkpoints.c.job_id == job_id, checkpoints.c.done)
        ).scalar()
        self._reset_job(conn, job_id, now, fresh=False, steps_done=kept)

    def _before_retry(
        self, conn: Connection, job_id: str, status: Status, from_checkpoint: str | None
    ) -> None:
        """Hook run inside ``retry_job``'s transaction before the job is queued again."""

    def _reset_job(
        self, conn: Connection, job_id: str, now: float, *, fresh: bool, **values: Any
    ) -> None:
        """Queue a finished job again; ``fresh`` also drops its checkpoints (a re-run)."""
        if fresh:
            conn.execute(delete(checkpoints).where(checkpoints.c.job_id == job_id))
            values["steps_done"] = 0
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(
                status=Status.QUEUED.value,
                run_at=now,
                cancel_requested=False,
                result=None,
                finished_at=None,
                failures=0,
                reclaims=0,
                waiting_for=None,
                progress=None,
                message=None,
                updated_at=now,
                **values,
            )
        )

    # -- queries -----------------------------------------------------------------------
    def get_job(self, job_id: str, *, full: bool = False) -> Row:
        cols = list(jobs.c) if full else list(JOB_SUMMARY)
        with self._read() as conn:
            row = conn.execute(select(*cols).where(jobs.c.id == job_id)).first()
        if row is None:
            raise UnknownJob(f"no job with id {job_id!r}")
        return row

    def job_status(self, job_id: str) -> str:
        with self._read() as conn:
            status = conn.execute(select(jobs.c.status).where(jobs.c.id == job_id)).scalar()
        if status is None:
            raise UnknownJob(f"no job with id {job_id!r}")
        return status

    def job_outcome(self, job_id: str) -> Row | None:
        """status, result, error and traceback once the job is terminal, else None."""
        with self._read() as conn:
            row = conn.execute(
                select(jobs.c.status, jobs.c.result, jobs.c.error, jobs.c.traceback).where(
                    jobs.c.id == job_id
                )
            ).first()
        if row is None:
            raise UnknownJob(f"no job with id {job_id!r}")
        return row if row.status in {s.value for s in TERMINAL} else None

    def list_jobs(
        self,
        *,
        status: str | Sequence[str] | None = None,
        workflow: str | None = None,
        queue: str | None = None,
        parent_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
        newest_first: bool = True,
    ) -> list[Row]:
        stmt = select(*JOB_SUMMARY)
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            stmt = stmt.where(jobs.c.status.in_([str(s) for s in statuses]))
        if workflow is not None:
            stmt = stmt.where(jobs.c.workflow == workflow)
        if queue is not None:
            stmt = stmt.where(jobs.c.queue == queue)
        if parent_id is not None:
            stmt = stmt.where(jobs.c.parent_id == parent_id)
        order = jobs.c.created_at.desc() if newest_first else jobs.c.created_at
        stmt = stmt.order_by(order, jobs.c.id.desc() if newest_first else jobs.c.id)
        with self._read() as conn:
            return conn.execute(stmt.limit(limit).offset(offset)).all()

    def expected_steps(self, workflow: str) -> int | None:
        """Steps the last successful run of ``workflow`` made (for progress bars)."""
        with self._read() as conn:
            return conn.execute(
                select(jobs.c.steps_done)
                .where(jobs.c.workflow == workflow, jobs.c.status == Status.SUCCEEDED.value)
                .order_by(jobs.c.created_at.desc())
                .limit(1)
            ).scalar()

    def job_progress(self, job_id: str) -> float | None:
        """Finished steps over expected ones, a step's own report, or None if unknown."""
        row = self.get_job(job_id)
        if row.status == Status.SUCCEEDED.value:
            return 1.0
        if row.progress is not None and row.status == Status.RUNNING.value:
            return row.progress
        expected = row.steps_expected or self.expected_steps(row.workflow)
        if not expected:
            return None
        return min(1.0, row.steps_done / expected)

    def job_checkpoints(self, job_id: str) -> list[Row]:
        with self._read() as conn:
            return conn.execute(
                select(checkpoints)
                .where(checkpoints.c.job_id == job_id)
                .order_by(checkpoints.c.seq)
            ).all()

    def job_attempts(self, job_id: str) -> list[Row]:
        """Ended attempts, then the running one (read from the job row) if any."""
        ended = select(
            attempts.c.job_id,
            attempts.c.attempt,
            attempts.c.worker_id,
            attempts.c.outcome,
            attempts.c.started_at,
            attempts.c.finished_at,
            attempts.c.error,
            attempts.c.traceback,
        ).where(attempts.c.job_id == job_id)
        running = select(
            jobs.c.id,
            jobs.c.attempts,
            jobs.c.worker_id,
            literal(Status.RUNNING.value),
            jobs.c.claimed_at,
            null(),
            null(),
            null(),
        ).where(jobs.c.id == job_id, jobs.c.status == Status.RUNNING.value)
        with self._read() as conn:
            rows = conn.execute(ended.union_all(running)).all()
        return sorted(rows, key=lambda r: r.attempt)

    def count_jobs(self, *, status: str | None = None) -> int:
        stmt = select(func.count()).select_from(jobs)
        if status is not None:
            stmt = stmt.where(jobs.c.status == status)
        with self._read() as conn:
            return conn.execute(stmt).scalar() or 0

    def status_counts(self) -> dict[str, int]:
        with self._read() as conn:
            rows = conn.execute(select(jobs.c.status, func.count()).group_by(jobs.c.status))
            return {s: n for s, n in rows}

    def list_workers(self, *, alive_within: float | None = None) -> list[Row]:
        stmt = select(workers).order_by(workers.c.started_at)
        if alive_within is not None:
            stmt = stmt.where(
                workers.c.stopped_at.is_(None), workers.c.heartbeat_at >= self.now() - alive_within
            )
        with self._read() as conn:
            return conn.execute(stmt).all()

    # -- queues ------------------------------------------------------------------------
    def set_queue_paused(self, name: str, paused: bool) -> None:
        now = self.now()
        with self._write() as conn:
            done = conn.execute(
                update(queues).where(queues.c.name == name).values(paused=paused, updated_at=now)
            )
            if not done.rowcount:
                conn.execute(insert(queues).values(name=name, paused=paused, updated_at=now))

    # -- logs --------------------------------------------------------------------------
    def append_logs(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            with self._write() as conn:
                conn.execute(insert(logs), [dict(r, id=new_id()) for r in rows])

    def job_logs(self, job_id: str) -> list[Row]:
        with self._read() as conn:
            return conn.execute(
                select(logs).where(logs.c.job_id == job_id).order_by(logs.c.id)
            ).all()

    def job_signals(self, job_id: str) -> list[Row]:
        with self._read() as conn:
            return conn.execute(
                select(signals).where(signals.c.job_id == job_id).order_by(signals.c.id)
            ).all()


# Forward migrations: MIGRATIONS[n] takes a database from version n-1 to n.
MIGRATIONS: dict[int, Any] = {}
