"""One attempt of one claimed job: run the workflow, then record what happened.

An :class:`Execution` is created for each claim (by a worker or by ``wf.run``).  It owns
the lease token, so every write it makes is fenced; it is where the cancel, timeout and
lost-lease flags set by the worker's monitor are checked at each step boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import traceback as tb
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import InterfaceError, OperationalError

from ..errors import (
    TIMEOUT_ERROR_PREFIX,
    DatabaseLost,
    FanOutError,
    SerializationError,
    _Cancelled,
    _LeaseLost,
    _StoreUnavailable,
    _Suspend,
)
from ..jobs import Status
from ..steps import should_retry
from ..store import ClaimedJob
from ..store.core import storable_text
from . import capture
from .callstate import AsyncCallState, CallState

if TYPE_CHECKING:
    from .context import Runtime
    from .registry import Definition

log = logging.getLogger(__name__)
#: Guards the lazy ``Execution.stopping`` events (a monitor thread may set one as
#: the run makes it).
_STOPPING_LOCK = threading.Lock()

#: A step this soon after the last write of its job's row leaves the row alone (where the
#: database allows it; see ``Execution.record_step``): progress bars and the dashboard's
#: change feed see a run of short steps at most this late.
TOUCH_SECONDS = 0.1

#: Database errors that say the store is unavailable (disk full, connection lost, server
#: gone, the SQLite file deleted), not that the workflow is wrong: a run that meets one
#: gives its job back.
STORE_ERRORS = (OperationalError, InterfaceError, DatabaseLost)


@contextlib.contextmanager
def store_failures() -> Iterator[None]:
    """Raise a store failure met inside a run as ``_StoreUnavailable``, which user code's
    ``except Exception`` does not catch and which costs the job no retry."""
    try:
        yield
    except STORE_ERRORS as exc:
        raise _StoreUnavailable(exc) from exc


class Execution:
    """Runs one attempt of a job and records its outcome under the job's lease."""

    def __init__(
        self, runtime: Runtime, job: ClaimedJob, workflow: Definition, *, inline: bool = False
    ) -> None:
        self.runtime = runtime
        self.job = job
        self.workflow = workflow
        #: Run by ``wf.run`` in the caller's thread: its output is shown as well as stored.
        self.inline = inline
        self.stored: dict[str, Any] = {}
        #: The names this run used (its CallState's), to tell a replay that diverged.
        self.used: set[str] = set()
        self.cancel_requested = False
        self.lost = False
        self.timed_out = False
        self.started = runtime.store.now()
        self.deadline = (
            self.started + job.timeout_seconds if job.timeout_seconds is not None else None
        )
        self.task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.done = threading.Event()
        #: True once this run writes its own outcome (or its suspension): from then on a
        #: heartbeat that finds the lease gone sees the run's own release, not a takeover.
        self.settling = False
        #: See ``stopping``: made on first use, since most runs never wait on it.
        self._stopping: threading.Event | None = None
        self._stop_requested = False
        #: Finished steps the job row does not count yet, and when this run last wrote
        #: that count (see ``record_step``).
        self._uncounted = 0
        self._touched_at = float("-inf")
        self._warned_code = False
        #: Set by a worker: records this job's success itself and sets ``next_job``, the
        #: job this thread runs next (claimed in the same transaction, or prefetched).
        self.chain: Callable[[Execution, str], None] | None = None
        self.next_job: ClaimedJob | None = None
        #: The success is left to a later shared commit (see ``Worker._record_chained``).
        self.deferred = False
        #: The attempt's span (``runtime/tracing.py``); None while tracing is off.
        self.trace = runtime.tracing.attempt(job, workflow.name)

    @property
    def token(self) -> str:
        return self.job.lease_token

    @property
    def stopping(self) -> threading.Event:
        """Set when the run must stop (cancel, lost lease, timeout): a step's backoff
        between two tries waits on it, so that it ends at once."""
        with _STOPPING_LOCK:
            if self._stopping is None:
                self._stopping = threading.Event()
                if self._stop_requested:
                    self._stopping.set()
            return self._stopping

    def _stop(self) -> None:
        with _STOPPING_LOCK:
            self._stop_requested = True
            event = self._stopping
        if event is not None:
            event.set()

    # -- flags the worker's monitor sets ----------------------------------------------
    def request_cancel(self) -> None:
        self.cancel_requested = True
        self._stop()
        self._cancel_task()

    def mark_lost(self) -> None:
        self.lost = True
        self._stop()
        self._cancel_task()

    def expire(self) -> None:
        """The timeout passed: fail (or retry) the job now and stop the run."""
        if self.timed_out or self.done.is_set():
            return
        self.timed_out = True
        limit = self.job.timeout_seconds
        error = f"{TIMEOUT_ERROR_PREFIX}timed out after {limit:g} s"
        self._record_failure(error, None, "timeout", retryable=True)
        self.lost = True  # the outcome is written; whatever the run does next is refused
        self._stop()
        self._cancel_task()

    def _cancel_task(self) -> None:
        if self.task is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)

    def check(self) -> None:
        """Raise at a step boundary when the run must stop."""
        if self.lost:
            raise _LeaseLost()
        if self.cancel_requested:
            raise _Cancelled()

    def lease_lost(self) -> _LeaseLost:
        """A write was refused because another worker holds the job now: every later
        write of this run is refused too.  Returns the signal to raise."""
        self.lost = True
        self._stop()
        return _LeaseLost()

    def cancelled(self) -> _Cancelled:
        """The store found a cancel request: the run stops.  Returns the signal to raise."""
        self.cancel_requested = True
        self._stop()
        return _Cancelled()

    def writing(self) -> contextlib.AbstractContextManager[None]:
        """Where a durable call writes: a store failure stops the run (see
        ``store_failures``)."""
        return store_failures()

    # -- what CallState calls ----------------------------------------------------------
    def record_step(
        self,
        name: str,
        seq: int,
        text: str,
        args_hash: str | None,
        started: float,
        detail: str | None = None,
    ) -> None:
        """Store a finished step, fenced by the lease.

        Where the database allows (``defers_touches``), a step less than
        ``TOUCH_SECONDS`` after the last write of the job row leaves that row alone: the
        row is written by the next slower step or, at the latest, before the run's
        outcome or a durable wait (``flush_steps``).  A short step then costs one row.
        """
        store = self.runtime.store
        self._uncounted += 1
        now = store.now()
        touch = not store.defers_touches or now - self._touched_at >= TOUCH_SECONDS
        with store_failures():
            accepted = store.record_checkpoint(
                job_id=self.job.id,
                token=self.token,
                name=name,
                seq=seq,
                value=text,
                args_hash=args_hash,
                code_fingerprint=self.workflow.fingerprint,
                attempt=self.job.attempt,
                started_at=started,
                count=self._uncounted if touch else None,
                detail=detail,
            )
        if not accepted:
            raise self.lease_lost()
        if touch:
            self._uncounted = 0
            self._touched_at = now

    def reuse_step(
        self,
        name: str,
        seq: int,
        key: str,
        fresh_after: float | None,
        args_hash: str | None,
        started: float,
    ) -> tuple[bool, Any]:
        """A cache hit in one statement, where the store can and the job row needs no
        touch now (see ``record_step``): (tried, row).  ``tried`` False: the caller
        reads the entry and records the step itself.  ``row`` (``value``, ``detail``)
        None: no fresh entry (or the lease is lost, which the step's own write tells)."""
        store = self.runtime.store
        # ``started`` is now: a hit reads the clock once.
        if not store.hits_in_one_statement or started - self._touched_at >= TOUCH_SECONDS:
            return False, None
        job = self.job
        try:  # store_failures(), written out: a hit is as cheap as it can be
            row = store.record_cached_checkpoint(
                key=key,
                fresh_after=fresh_after,
                job_id=job.id,
                token=job.lease_token,
                name=name,
                seq=seq,
                args_hash=args_hash,
                code_fingerprint=self.workflow.fingerprint,
                attempt=job.attempt,
                started_at=started,
            )
        except STORE_ERRORS as exc:
            raise _StoreUnavailable(exc) from exc
        if row is not None:
            self._uncounted += 1
        return True, row

    def record_try(
        self, step: str, try_number: int, outcome: str, error: str | None, started: float
    ) -> None:
        """Record one try of a step with retries (see ``schema.step_tries``), fenced by
        the lease like a checkpoint."""
        with store_failures():
            accepted = self.runtime.store.record_step_try(
                job_id=self.job.id,
                token=self.token,
                attempt=self.job.attempt,
                step=step,
                try_number=try_number,
                outcome=outcome,
                error=error,
                started_at=started,
            )
        if not accepted:
            raise self.lease_lost()

    def flush_steps(self) -> None:
        """Add to the job row the steps that short steps left out of its count."""
        if self._uncounted and not self.lost:
            added, self._uncounted = self._uncounted, 0
            self._touched_at = self.runtime.store.now()
            with store_failures():
                counted = self.runtime.store.count_steps(self.job.id, self.token, added)
            if not counted:
                self.lost = True

    def report_progress(self, fraction: float | None, message: str | None) -> None:
        self.check()
        with store_failures():
            accepted = self.runtime.store.set_progress(self.job.id, self.token, fraction, message)
        if not accepted:
            raise self.lease_lost()

    def warn_changed_code(self, step: str) -> None:
        if not self._warned_code:
            self._warned_code = True
            capture.log_outside(
                log,
                logging.WARNING,
                "job %s of workflow %r replays step %r recorded by different code; the "
                "workflow was edited since (resume, retry(from_checkpoint=...) or cancel)",
                self.job.id,
                self.workflow.name,
                step,
                in_job=True,
            )

    def _warn_unreplayed(self) -> None:
        """Warn when a replay finished without reaching a checkpoint an earlier attempt
        stored: the run took another path (a step name, or a branch, that depends on the
        time, randomness or outside state read outside a checkpoint), so the side effects
        of the steps it took instead may have happened twice."""
        missed = [r for name, r in self.stored.items() if name not in self.used]
        if not missed:
            return
        first = missed[0]
        more = f" (and {len(missed) - 1} more)" if len(missed) > 1 else ""
        capture.log_outside(
            log,
            logging.WARNING,
            "job %s of workflow %r: checkpoint %r stored by attempt %s was not replayed by "
            "attempt %s%s; the run took another path, so a step name or branch depends on "
            "something read outside a checkpoint (time, randomness, outside state)",
            self.job.id,
            self.workflow.name,
            first.name,
            first.attempt,
            self.job.attempt,
            more,
            in_job=True,
        )

    # -- running -----------------------------------------------------------------------
    def _output(self) -> contextlib.AbstractContextManager[capture.JobOutput]:
        """Capture what the run prints and logs into the job's logs."""
        runtime = self.runtime
        return capture.job_output(runtime.store, runtime.clock, self.job, tee=self.inline)

    def _traced(self) -> contextlib.AbstractContextManager[Any]:
        """The attempt's span, current while the workflow runs (nothing without tracing)."""
        return contextlib.nullcontext() if self.trace is None else self.trace

    def _outcome(self, outcome: str, error: BaseException | str | None = None) -> None:
        """Tell the attempt's span how the attempt ended."""
        if self.trace is not None:
            self.trace.outcome(outcome, error)

    def _prepare(self) -> tuple[CallState, tuple, dict]:
        args, kwargs = self._decode_input()
        # A first attempt that has made no step has nothing to replay: skip the query.
        last_seq = 0
        if self.job.attempt > 1 or self.job.steps_done > 0:
            with store_failures():
                self.stored = self.runtime.store.load_checkpoints(self.job.id)
            last_seq = max((r.seq for r in self.stored.values()), default=0)
            # A run that died left its last short steps uncounted: the first write of
            # the count makes it good.
            done = sum(1 for r in self.stored.values() if r.done)
            self._uncounted = done - self.job.steps_done
        cls = AsyncCallState if self.workflow.is_async else CallState
        cs = cls(self, args, kwargs, last_seq)
        self.used = cs.names
        return cs, args, kwargs

    def _decode_input(self) -> tuple[tuple, dict]:
        """The stored arguments; a row that cannot be decoded fails its job (no retry)."""
        try:
            where = f"job {self.job.id} ({self.workflow.name}), its input"
            payload = self.runtime.codec.loads(self.job.input, where=where) or {}
        except SerializationError as exc:
            raise SerializationError(f"the job's stored input cannot be decoded: {exc}") from None
        args, kwargs = (
            (payload.get("args", []), payload.get("kwargs", {}))
            if isinstance(payload, dict)
            else (None, None)
        )
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise SerializationError(
                "the job's stored input is not {'args': [...], 'kwargs': {...}}: "
                f"{str(self.job.input)[:60]!r}"
            )
        return tuple(args), kwargs

    def run_sync(self) -> None:
        """Run the workflow in this thread and record the outcome."""
        try:
            with self._output(), self._traced():
                try:
                    cs, args, kwargs = self._prepare()
                    value = self.workflow.fn(cs, *args, **kwargs)
                except BaseException as exc:
                    self._record_exception(exc)
                else:
                    self._record_success(value)
        finally:
            self.done.set()

    async def run_async(self) -> None:
        """Run an ``async def`` workflow on the worker's own loop and record the outcome."""
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        try:
            with self._output(), self._traced():
                try:
                    cs, args, kwargs = await asyncio.to_thread(self._prepare)
                    if self.lost or self.cancel_requested:
                        self.check()
                    value = await self.workflow.fn(cs, *args, **kwargs)
                except asyncio.CancelledError:
                    # Our own cancel (cancel request, lost lease, timeout) or the loop stopping.
                    cancelled = self.cancel_requested and not self.lost
                    exc = _Cancelled() if cancelled else _LeaseLost()
                    await asyncio.to_thread(self._record_exception, exc)
                except BaseException as exc:
                    await asyncio.to_thread(self._record_exception, exc)
                else:
                    await asyncio.to_thread(self._record_success, value)
        finally:
            self.done.set()

    # -- recording outcomes ------------------------------------------------------------
    def _record_success(self, value: Any) -> None:
        self.settling = True
        if self.stored:
            self._warn_unreplayed()
        capture.flush()  # the output is stored before the outcome a waiter reads
        try:
            with store_failures():
                self.flush_steps()
                try:
                    text = self.runtime.codec.dumps(value)
                except SerializationError as exc:
                    message = f"SerializationError: the workflow's result cannot be stored: {exc}"
                    self._record_failure(message, None, "failed", retryable=False)
                    return
                if self.lost:
                    return
                self._outcome("succeeded")
                if self.chain is not None:
                    self.chain(self, text)
                else:
                    self.commit_success(text)
        except _StoreUnavailable as exc:
            self._give_back(exc)

    def commit_success(self, text: str, claim: dict[str, Any] | None = None) -> list[ClaimedJob]:
        """Commit the success now, claiming in the same transaction the jobs ``claim``
        asks for (see ``FinishQueries.finish_and_claim``); returns them."""
        accepted, claimed = self.runtime.store.finish_and_claim(
            job_id=self.job.id,
            token=self.token,
            attempt=self.job.attempt,
            status=Status.SUCCEEDED,
            result=text,
            claim=claim,
            parent_id=self.job.parent_id,
        )
        self.note_write(accepted)
        return claimed

    def _record_exception(self, exc: BaseException) -> None:
        self.settling = True
        capture.flush()
        if isinstance(exc, _Suspend):
            self._outcome("suspended")
            return  # the suspension was recorded in the transaction that raised it
        try:
            self.flush_steps()
        except _StoreUnavailable as failed:
            exc = failed
        if isinstance(exc, _LeaseLost) or self.lost:
            self._outcome("lost")
            capture.log_outside(
                log,
                logging.WARNING,
                "job %s: this worker no longer holds its lease; its writes are refused",
                self.job.id,
            )
            return
        if isinstance(exc, _Cancelled):
            self._outcome("cancelled")
            self.note_write(
                self.runtime.store.finish_job(
                    job_id=self.job.id,
                    token=self.token,
                    attempt=self.job.attempt,
                    status=Status.CANCELLED,
                    error="cancelled",
                )
            )
            return
        if isinstance(exc, _StoreUnavailable):
            self._give_back(exc)
            return
        if not isinstance(exc, Exception):
            # KeyboardInterrupt, SystemExit: give the job back rather than fail it.
            self._outcome("released")
            self.runtime.store.release_job(
                job_id=self.job.id, token=self.token, attempt=self.job.attempt
            )
            raise exc
        text = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
        # Escaped here already, so that log lines show what the database stores.
        error = storable_text(f"{type(exc).__name__}: {exc}") or type(exc).__name__
        # None would change on a replay: a value that cannot be stored, a fan-out whose
        # children's outcomes are recorded (h.retry() re-runs the failed children), and
        # a programming error (a step name used twice, a bad option: NEVER_RETRIED).
        # Past those, the workflow's retry_on / give_up_on decide.
        retryable = not isinstance(exc, (SerializationError, FanOutError)) and should_retry(
            exc, self.workflow.retry_on, self.workflow.give_up_on
        )
        self._record_failure(error, text, "failed", retryable=retryable, exc=exc)

    def _record_failure(
        self,
        error: str,
        text: str | None,
        outcome: str,
        *,
        retryable: bool,
        exc: BaseException | None = None,
    ) -> None:
        """Retry the job later, or fail it; either way one line in the worker's log
        (``exc``, the exception that failed the run, goes on the attempt's span)."""
        again = retryable and self.job.failures < self.job.max_retries
        self._outcome("retrying" if again else "failed", error if exc is None else exc)
        if again:
            delay = self.runtime.settings.backoff_seconds(self.job.failures + 1)
            run_at = self.runtime.store.now() + delay
            self._write_failure(
                lambda error, text: self.runtime.store.retry_job_later(
                    job_id=self.job.id,
                    token=self.token,
                    attempt=self.job.attempt,
                    run_at=run_at,
                    error=error,
                    traceback=text,
                    outcome=outcome,
                ),
                error,
                text,
            )
            capture.log_outside(
                log,
                logging.WARNING,
                "job %s (%s) failed: %s; retrying in %.2f s (retry %d of %d)",
                self.job.id,
                self.workflow.name,
                _first_line(error),
                delay,
                self.job.failures + 1,
                self.job.max_retries,
            )
            return
        self._fail(error, text, outcome)
        if not self.lost:
            tries = self.job.failures + 1
            capture.log_outside(
                log,
                logging.ERROR,
                "job %s (%s) failed for good after %d attempt%s: %s",
                self.job.id,
                self.workflow.name,
                tries,
                "" if tries == 1 else "s",
                _first_line(error),
            )

    def _fail(self, error: str, text: str | None, outcome: str = "failed") -> None:
        self._write_failure(
            lambda error, text: self.runtime.store.finish_job(
                job_id=self.job.id,
                token=self.token,
                attempt=self.job.attempt,
                status=Status.FAILED,
                error=error,
                traceback=text,
                outcome=outcome,
            ),
            error,
            text,
        )

    def _write_failure(
        self, write: Callable[[str, str | None], bool], error: str, text: str | None
    ) -> None:
        """Record a failure with ``write(error, traceback)``; never lose the error.

        The store escapes what no database can hold (see ``storable_text``), but a text
        can still be refused (too long for a MySQL ``TEXT``, no room left on the disk):
        then the start of the error is recorded with a note instead of the traceback,
        and only when even that fails is the store unavailable (the job is given back).
        """
        try:
            self.note_write(write(error, text))
            return
        except Exception as exc:
            refused = type(exc).__name__
            log.warning(
                "job %s: storing a shortened copy of its error, which was refused: %s",
                self.job.id,
                _first_line(exc),
            )
        note = f" [nbjobs: the full error ({len(error):,} characters) and its traceback "
        note += f"could not be stored: {refused}]"
        try:
            with store_failures():
                self.note_write(write(error[:1000] + note, None))
        except _StoreUnavailable as failed:
            self._give_back(failed)

    def _give_back(self, failure: _StoreUnavailable) -> None:
        """The database failed under the run: not the workflow's failure.  Give the job
        back to the queue, to run again after a backoff that grows with its attempts,
        without counting a retry; when even that write fails, the job's lease expires
        and a reaper takes it back."""
        delay = self.runtime.settings.backoff_seconds(self.job.attempt)
        error = f"{type(failure.cause).__name__}: {_first_line(failure.cause)}"
        self._outcome("released")
        log.warning(
            "job %s: the database failed during the run (%s); the job runs again in "
            "%.2f s, without counting a retry",
            self.job.id,
            error,
            delay,
        )
        try:
            self.note_write(
                self.runtime.store.release_job(
                    job_id=self.job.id,
                    token=self.token,
                    attempt=self.job.attempt,
                    run_at=self.runtime.store.now() + delay,
                    error=f"the database failed during the run: {error}",
                )
            )
        except Exception:
            log.warning(
                "job %s: could not give the job back either; it runs again once its lease expires",
                self.job.id,
                exc_info=True,
            )

    def note_write(self, accepted: bool) -> None:
        if not accepted:
            self.lost = True
            log.warning("job %s: the outcome was refused; another worker owns the job", self.job.id)


def _first_line(error: BaseException | str, limit: int = 300) -> str:
    """The first line of an error (a database error's own message), bounded, so that a
    worker's log line and an attempt row stay one line."""
    text = error if isinstance(error, str) else str(getattr(error, "orig", None) or error)
    lines = text.strip().splitlines()
    if not lines:
        return "" if isinstance(error, str) else type(error).__name__
    line = lines[0]
    return line if len(line) <= limit else line[:limit] + "..."
