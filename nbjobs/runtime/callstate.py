"""The call state a workflow run gets: replay-or-run steps, and durable waits.

``cs.checkpoint`` returns a stored step result on replay, or runs the step once and
stores its result before returning it.  The durable waits (``cs.sleep``,
``cs.wait_signal``, ``cs.fan_out``) are steps too, numbered by the same counter: the
first time a run reaches one, the wait is recorded and the job parked as ``waiting`` in
one transaction, and the run stops by raising the internal ``_Suspend`` (the worker slot
is free at once).  When the timer is due, the signal arrives or the fan-in is decided,
the job is queued again and *replayed*: its finished steps return their stored values,
and the wait now returns what it waited for.

The call state owns the run's step names and numbers; the :class:`Execution` it is
given owns the lease and writes the steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import json
import logging
import math
import threading
import time
import types
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..caching import (
    fingerprint_or_version,
    key_part,
    step_key,
    unwrap_step,
)
from ..codec import digest
from ..errors import (
    ArtifactError,
    ConfigurationError,
    DuplicateCheckpoint,
    FanOutError,
    SerializationError,
    SignalTimeout,
    StepTimeout,
    _Suspend,
)
from ..options import Spec
from ..schema import cached_detail
from ..steps import Cache, StepOptions, step_options
from ..store.waits import CANCELLED, LOST, SUSPENDED, TIMEOUT, WaitResult
from ..strategies import FailFast, Outcome, Strategy, strategy_from_detail
from ..validation import check_name, check_number, check_step_function, check_time
from . import capture

if TYPE_CHECKING:
    from sqlalchemy.engine import Row

    from .execution import Execution

log = logging.getLogger(__name__)

#: How often a sync step's timed wait looks whether the run must stop (cancel, lost
#: lease, job timeout) before its own timeout.
_STOP_POLL_SECONDS = 0.25


class CallState:
    """The handle a workflow run gets: durable steps, durable waits, progress, identity.

    ``job_id``, ``attempt`` and ``input`` (``{"args": [...], "kwargs": {...}}``) describe
    the run.  Everything durable goes through ``checkpoint`` and the waits.
    """

    def __init__(self, execution: Execution, args: tuple, kwargs: dict, last_seq: int = 0) -> None:
        self._execution = execution
        self._runtime = execution.runtime
        self.job_id: str = execution.job.id
        self.attempt: int = execution.job.attempt
        self.input: dict[str, Any] = {"args": list(args), "kwargs": dict(kwargs)}
        #: The step names this run used, to tell a replay that diverged.
        self.names: set[str] = set()
        #: The number of the last step (checkpoint or wait) recorded for the job.
        self._seq = last_seq
        #: How often this run waited for each signal name (the n-th wait is a step).
        self._signal_waits: dict[str, int] = {}
        #: Cached steps that missed: step name -> the key their result is saved under.
        self._cache_keys: dict[str, str] = {}
        #: What a cached step function's keys share in this run, by function: the
        #: function and its ``Cache`` (kept alive, so an id is never reused), its
        #: fingerprint as a key part and its ttl in seconds.  A loop of cached steps
        #: hashes its function's code once, not at every step.
        self._cached_functions: dict[int, tuple[Any, Cache, bytes, float | None]] = {}

    # -- steps: names and numbers ------------------------------------------------------
    def _claim_name(self, name: str, what: str) -> Row | None:
        """Take ``name`` for this run; return its stored step, if an earlier attempt
        recorded it."""
        check_name(what, name)
        if name in self.names:
            raise DuplicateCheckpoint(
                f"{what} {name!r} is used twice in one run of job {self.job_id}; give each "
                "step, sleep and fan-out its own name (e.g. f'download-{i}')"
            )
        self.names.add(name)
        self._execution.check()
        return self._execution.stored.get(name)

    def _next_seq(self, stored: Row | None = None) -> int:
        """The number of a new step (or the stored one of a step replayed)."""
        if stored is not None:
            return stored.seq
        self._seq += 1
        return self._seq

    # -- checkpoints, shared by the sync and async checkpoint --------------------------
    def _begin_step(
        self, name: str, fn: Any, args: tuple, kwargs: dict
    ) -> tuple[bool, Any, str | None]:
        """(replayed, value, args_hash): the stored value on replay."""
        check_step_function(name, fn)
        stored = self._claim_name(name, "checkpoint name")
        args_text = self._args_text(args, kwargs)
        args_hash = None if args_text is None else digest(args_text)
        if stored is None:
            cache = self._cache_option(fn)
            if cache is not None:
                hit, value = self._from_cache(name, fn, args, kwargs, args_text, args_hash, cache)
                if hit:
                    if self._execution.trace is not None:
                        # A step served from the cache is traced too, marked as such.
                        with self._execution.trace.step(name, cached=True):
                            pass
                    return True, value, args_hash
            return False, None, args_hash
        self._warn_replay(name, stored, args_hash)
        where = self._where(
            f"checkpoint {name!r} (h.retry(from_checkpoint={name!r}) computes it again)"
        )
        return True, self._runtime.codec.loads(stored.value, where=where), args_hash

    def _warn_replay(self, name: str, stored: Row, args_hash: str | None) -> None:
        """Warn when a replayed step was called with other arguments, or its workflow's
        code changed, since the step was stored (its stored value is used anyway)."""
        if stored.args_hash and args_hash and stored.args_hash != args_hash:
            capture.log_outside(
                log,
                logging.WARNING,
                "job %s (%s) replays checkpoint %r with different arguments than its first "
                "run; the stored result is returned",
                self.job_id,
                self._execution.workflow.name,
                name,
                in_job=True,
            )
        fingerprint = self._execution.workflow.fingerprint
        if stored.code_fingerprint and stored.code_fingerprint != fingerprint:
            self._execution.warn_changed_code(name)

    def _args_text(self, args: tuple, kwargs: dict) -> str | None:
        """The arguments as hashed: artifacts by their content digest, never written."""
        try:
            return self._runtime.codec.dumps([list(args), kwargs], check_keys=False)
        except (SerializationError, RecursionError):
            return None

    # -- the cross-run step cache (see nbjobs.caching) ---------------------------------
    def _cache_option(self, fn: Any) -> Cache | None:
        """The step's own ``cache=``, else its workflow's, else None."""
        options = step_options(unwrap_step(fn, (), {})[0])
        if options is not None and options.cache is not None:
            return options.cache
        return getattr(self._execution.workflow, "cache", None)

    def _key_constants(self, fn: Any, cache: Cache) -> tuple[bytes, float | None]:
        """The step function's fingerprint (or ``version``) as a key part, and the
        cache's ttl in seconds: computed once per run and function."""
        known = self._cached_functions.get(id(fn))
        if known is None or known[0] is not fn or known[1] is not cache:
            fingerprint = key_part(fingerprint_or_version(fn, cache.version))
            known = self._cached_functions[id(fn)] = (fn, cache, fingerprint, cache.ttl_seconds())
        return known[2], known[3]

    def _from_cache(
        self,
        name: str,
        fn: Any,
        args: tuple,
        kwargs: dict,
        args_text: str | None,
        args_hash: str | None,
        cache: Cache,
    ) -> tuple[bool, Any]:
        """(True, value) when an earlier job's result of this step is reused: its stored
        text is recorded as this job's checkpoint, marked with where it came from.  On a
        miss the key is kept, so that ``_record`` saves the result under it."""
        real = fn
        if not isinstance(fn, types.FunctionType):  # a plain function is its own step
            real, args, kwargs = unwrap_step(fn, args, kwargs)
            if real is not fn:
                args_text = self._args_text(args, kwargs)
        if args_text is None:
            log.debug("checkpoint %r: arguments with no stored form are never cached", name)
            return False, None
        fingerprint, ttl = self._key_constants(real, cache)
        key = step_key(self._execution.workflow.name, name, fingerprint, args_text)
        runtime = self._runtime
        now = runtime.store.now()
        fresh_after = None if ttl is None else now - ttl
        tried, row = self._execution.reuse_step(
            name, self._seq + 1, key, fresh_after, args_hash, now
        )
        if tried:
            if row is None:
                self._cache_keys[name] = key
                return False, None
            self._seq += 1
            # Recorded already: a value that cannot be loaded fails the step, as a replay.
            # (``where`` is only built for that error: a hit is as cheap as it can be.)
            try:
                return True, runtime.codec.loads_again(row.value)
            except ArtifactError as exc:
                where = self._where(f"checkpoint {name!r}, reused ({row.detail})")
                raise ArtifactError(f"{where}: {exc}") from exc
        with self._execution.writing():
            entry = runtime.store.find_cached_step(key, fresh_after)
        # A job never reuses its own entry: h.retry(from_checkpoint=...) recomputes.
        if entry is None or entry.job_id == self.job_id:
            self._cache_keys[name] = key
            return False, None
        where = self._where(f"checkpoint {name!r}, cached from job {entry.job_id}")
        try:
            value = runtime.codec.loads(entry.value, where=where)
        except ArtifactError as exc:
            log.warning("%s cannot be loaded (%s); the step runs again", where, exc)
            self._cache_keys[name] = key
            return False, None
        self._execution.record_step(
            name,
            self._next_seq(),
            entry.value,
            args_hash,
            now,
            detail=cached_detail(entry.job_id),
        )
        return True, value

    def _record(self, name: str, value: Any, args_hash: str | None, started: float) -> Any:
        """Store a finished step under the next number; returns the value as a replay
        returns it.  Artifacts in it are written (complete) before the step commits."""
        try:
            text, stored = self._runtime.codec.dumps_as_stored(value)
        except SerializationError as exc:
            raise SerializationError(
                f"checkpoint {name!r} returned a value nbjobs cannot store: {exc}"
            ) from None
        self._execution.record_step(name, self._next_seq(), text, args_hash, started)
        key = self._cache_keys.pop(name, None)
        if key is not None:
            with self._execution.writing():
                self._runtime.store.save_cached_step(
                    key=key,
                    workflow=self._execution.workflow.name,
                    step=name,
                    job_id=self.job_id,
                    value=text,
                    created_at=self._runtime.store.now(),
                )
        return stored

    def _where(self, what: str) -> str:
        """Names a stored value of this job in an ArtifactError."""
        return f"job {self.job_id} ({self._execution.workflow.name}), {what}"

    # -- running a step: its tries, timeouts and backoff (see nbjobs.steps) -----------
    def _run_step(self, name: str, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """Call ``fn`` as step ``name`` under its ``@nbjobs.step`` options: up to
        ``1 + retries`` tries in this attempt, each within ``timeout``, with a jittered
        backoff between them; a plain function is simply called."""
        options = step_options(fn)
        if options is None or (options.retries == 0 and options.timeout is None):
            return fn(*args, **kwargs)
        failed = 0
        while True:
            started = self._runtime.store.now()
            try:
                if options.timeout is None:
                    value = fn(*args, **kwargs)
                else:
                    value = self._call_in_thread(name, fn, args, kwargs, options.timeout)
            except Exception as exc:
                failed += 1
                delay = self._failed_try(name, options, failed, exc, started)
                if delay is None:
                    raise
                execution = self._execution
                self._runtime.clock.wait(execution.stopping, delay)
                execution.check()
                continue
            if failed:
                self._execution.record_try(name, failed + 1, "succeeded", None, started)
            return value

    def _call_in_thread(
        self, name: str, fn: Callable[..., Any], args: tuple, kwargs: dict, timeout: float
    ) -> Any:
        """Call a sync step in a thread of its own and wait at most ``timeout`` s.

        Python cannot stop a thread, so a call over its timeout is *abandoned*: this
        run goes on (the step fails with ``StepTimeout``), and the call keeps running in
        its daemon thread until it returns by itself; what it returns or raises then is
        dropped, and what it prints may still reach this attempt's logs (it is buffered
        with the job's output, which is not flushed for it once the attempt ended).  The
        wait also ends when the run must stop (cancel, lost lease, the job's own timeout).
        """
        outcome: list[tuple[bool, Any]] = []
        finished = threading.Event()

        def call() -> None:
            try:
                outcome.append((True, fn(*args, **kwargs)))
            except BaseException as exc:  # handed to the waiting run, which raises it
                outcome.append((False, exc))
            finally:
                finished.set()

        context = contextvars.copy_context()  # the step's output goes to the job's logs
        thread = threading.Thread(
            target=context.run, args=(call,), name=f"nbjobs-step-{name}"[:60], daemon=True
        )
        deadline = time.monotonic() + timeout  # a fake clock must not stretch it
        thread.start()
        while not finished.wait(min(_STOP_POLL_SECONDS, max(0.0, deadline - time.monotonic()))):
            self._execution.check()
            if time.monotonic() >= deadline:
                capture.log_outside(
                    log,
                    logging.WARNING,
                    "job %s: step %r ran past its timeout of %g s; its call is abandoned "
                    "and keeps running in thread %s until it returns",
                    self.job_id,
                    name,
                    timeout,
                    thread.name,
                    in_job=True,
                )
                raise StepTimeout(
                    f"step {name!r} ran past its timeout of {timeout:g} s (the call was "
                    "abandoned: it goes on in its thread until it returns, its result "
                    "dropped)"
                )
        ok, value = outcome[0]
        if ok:
            return value
        raise value

    def _failed_try(
        self, name: str, options: StepOptions, failed: int, exc: Exception, started: float
    ) -> float | None:
        """Record try number ``failed`` of step ``name``, which raised ``exc``; returns
        the pause before the next try, or None when the step fails now."""
        error = f"{type(exc).__name__}: {exc}"
        outcome = "timeout" if isinstance(exc, StepTimeout) else "failed"
        self._execution.record_try(name, failed, outcome, error, started)
        total = options.retries + 1
        if failed >= total or not options.should_retry(exc):
            return None
        delay = options.backoff_seconds(failed, self._runtime.settings.retry_backoff_max_seconds)
        capture.log_outside(
            log,
            logging.WARNING,
            "job %s: step %r try %d of %d failed: %s; trying again in %.2f s",
            self.job_id,
            name,
            failed,
            total,
            error.splitlines()[0][:300] if error else "",
            delay,
            in_job=True,
        )
        return delay

    # -- public ------------------------------------------------------------------------
    def checkpoint(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` once per job and persist its result.

        On a replay (retry, crash recovery, resume) the stored result is returned and
        ``fn`` is not called.  The value returned is the stored one in both cases (JSON
        turns tuples into lists), so a run behaves the same on replay.  ``name`` and
        ``fn`` are positional-only, so the step may take keyword arguments of those names.
        """
        replayed, value, args_hash = self._begin_step(name, fn, args, kwargs)
        if replayed:
            return value
        if self._execution.trace is not None:
            with self._execution.trace.step(name):
                return self._run_and_record(name, fn, args, kwargs, args_hash)
        return self._run_and_record(name, fn, args, kwargs, args_hash)

    def _run_and_record(
        self, name: str, fn: Callable[..., Any], args: tuple, kwargs: dict, args_hash: str | None
    ) -> Any:
        """Run a sync checkpoint's function (with its step options) and store its result."""
        started = self._runtime.store.now()
        value = self._run_step(name, fn, args, kwargs)
        if inspect.isawaitable(value):
            if inspect.iscoroutine(value):
                value.close()  # never awaited: close it rather than leak a warning
            raise ConfigurationError(
                f"checkpoint {name!r} returned an awaitable in a sync workflow; make the "
                "workflow `async def` and `await cs.checkpoint(...)`"
            )
        return self._record(name, value, args_hash, started)

    def progress(self, value: float | str) -> None:
        """Report progress inside a long step: a fraction in [0, 1] or a message."""
        if isinstance(value, str):
            self._execution.report_progress(None, value)
        else:
            self._execution.report_progress(min(1.0, max(0.0, float(value))), None)

    def sleep(self, name: str, seconds: float) -> None:
        """Durably wait ``seconds`` without holding a worker slot."""
        self._sleep(name, self._runtime.store.now() + float(seconds))

    def sleep_until(self, name: str, when: datetime | float) -> None:
        """Durably wait until ``when`` (an aware datetime or epoch seconds; a naive
        datetime fails the run) without holding a worker slot."""
        self._sleep(name, check_time("sleep_until", when))

    def wait_signal(self, name: str, timeout: float | None = None) -> Any:
        """Wait for ``h.signal(name, payload)``; returns the payload (FIFO, once each)."""
        check_name("signal name", name)
        check_number("timeout", timeout, 0, optional=True)
        # The n-th wait for a name in a run is its own step (fixed by call order).
        self._signal_waits[name] = count = self._signal_waits.get(name, 0) + 1
        step = f"signal:{name}" if count == 1 else f"signal:{name}#{count}"
        with self._traced_wait("signal", step), self._execution.writing():
            stored = self._begin_wait(step, "signal wait")
            if stored is not None and stored.done:
                if _detail(stored).get("timed_out"):
                    raise SignalTimeout(f"no signal {name!r} arrived within {timeout} s")
                return self._runtime.codec.loads(
                    stored.value, where=self._where(f"signal {name!r}")
                )
            if stored is not None:
                deadline = _detail(stored).get("deadline")
            else:
                deadline = None if timeout is None else self._runtime.store.now() + timeout
            result = self._settle(
                self._runtime.store.take_signal(
                    **self._wait_fields(stored),
                    checkpoint=step,
                    name=name,
                    deadline=deadline,
                    exists_=stored is not None,
                )
            )
        if result.state == TIMEOUT:
            raise SignalTimeout(f"no signal {name!r} arrived within {timeout} s")
        return self._runtime.codec.loads(result.value, where=self._where(f"signal {name!r}"))

    def fan_out(self, name: str, specs: list[Spec], strategy: Any = None) -> list:
        """Start child runs and wait for them without holding a slot; see the contract."""
        strategy = FailFast() if strategy is None else strategy
        if not isinstance(strategy, Strategy):
            raise ConfigurationError(
                f"strategy must be FailFast(), CollectAll() or Threshold(n), got {strategy!r}"
            )
        specs = list(specs)
        for spec in specs:
            if not isinstance(spec, Spec):
                raise ConfigurationError(
                    f"fan_out takes workflow specs (child.spec(...)), got {spec!r}"
                )
        with self._traced_wait("fan_out", name), self._execution.writing():
            stored = self._begin_wait(name, "fan-out name")
            if stored is not None and stored.done:
                return self._outcomes(name, stored.value, _detail(stored))
            detail = _detail(stored) or dict(strategy.to_detail(), count=len(specs))
            if stored is None and not specs:
                return _judge(name, [], strategy)
            children = None if stored is not None else [self._child(s) for s in specs]
            result = self._settle(
                self._runtime.store.begin_fanout(
                    **self._wait_fields(stored),
                    root_id=self._execution.job.root_id,
                    name=name,
                    detail=detail,
                    children=children,
                )
            )
        return self._outcomes(name, result.value, detail)

    # -- durable waits -----------------------------------------------------------------
    def _sleep(self, name: str, wake_at: float) -> None:
        with self._traced_wait("sleep", name), self._execution.writing():
            stored = self._begin_wait(name, "sleep name")
            if stored is not None:
                if stored.done:
                    return
                wake_at = _detail(stored).get("wake_at", wake_at)  # the first run's time
            if not math.isfinite(wake_at):
                raise ConfigurationError(f"sleep {name!r}: the wake-up time must be finite")
            self._settle(
                self._runtime.store.begin_sleep(
                    **self._wait_fields(stored),
                    name=name,
                    wake_at=wake_at,
                    exists_=stored is not None,
                )
            )

    def _traced_wait(self, kind: str, name: str) -> contextlib.AbstractContextManager[Any]:
        """A durable wait's span (nothing without tracing)."""
        trace = self._execution.trace
        return contextlib.nullcontext() if trace is None else trace.wait(kind, name)

    def _begin_wait(self, name: str, what: str) -> Row | None:
        stored = self._claim_name(name, what)
        self._execution.flush_steps()  # the wait's own write adds to the job row's count of steps
        return stored

    def _wait_fields(self, stored: Row | None) -> dict[str, Any]:
        """The fields every wait writes: the job, its lease, the step's number and code."""
        execution = self._execution
        return dict(
            job_id=execution.job.id,
            token=execution.token,
            attempt=execution.job.attempt,
            seq=self._next_seq(stored),
            code_fingerprint=execution.workflow.fingerprint,
        )

    def _settle(self, result: WaitResult) -> WaitResult:
        """Turn the store's answer into control flow: suspend, stop, or go on."""
        if result.state == SUSPENDED:
            self._execution.settling = True  # the suspension released the lease
            raise _Suspend()
        if result.state == LOST:
            raise self._execution.lease_lost()
        if result.state == CANCELLED:
            raise self._execution.cancelled()
        return result

    def _child(self, spec: Spec) -> dict[str, Any]:
        """A fan-out child's row; children get deterministic keys from the store."""
        definition = self._runtime.registry.get(spec.workflow)
        fields = self._runtime.job_fields(definition, spec.args, spec.kwargs, spec.options)
        fields.pop("key", None)
        if self._execution.trace is not None:  # the child continues this attempt's trace
            fields["trace_context"] = self._execution.trace.carrier()
        return fields

    def _outcomes(self, name: str, text: str | None, detail: dict[str, Any]) -> list[Outcome]:
        loads = self._runtime.codec.loads
        outcomes = [
            Outcome(
                status=o["status"],
                value=loads(
                    o["result"], where=self._where(f"fan-out {name!r}, child {o.get('job_id')}")
                )
                if o["status"] == "succeeded"
                else None,
                error=o.get("error"),
                job_id=o.get("job_id"),
            )
            for o in json.loads(text or "[]")
        ]
        return _judge(name, outcomes, strategy_from_detail(detail))


def _detail(stored: Row | None) -> dict[str, Any]:
    return json.loads(stored.detail) if stored is not None and stored.detail else {}


def _judge(name: str, outcomes: list[Outcome], strategy: Strategy) -> list[Outcome]:
    """The outcomes, or ``FanOutError`` when ``strategy`` says the fan-out failed."""
    if not strategy.failed(outcomes):
        return outcomes
    bad = [o for o in outcomes if not o.ok]
    first = next((o for o in bad if o.status == "failed"), bad[0] if bad else None)
    message = (
        f"fan-out {name!r} failed under {strategy!r}: {len(bad)} of {len(outcomes)} "
        "children did not succeed"
    )
    if first is not None:
        message += f" (first: {first.status}: {first.error})"
    raise FanOutError(message, outcomes)


class AsyncCallState(CallState):
    """The call state of an ``async def`` workflow: its durable calls are awaited."""

    async def checkpoint(
        self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Any:
        replayed, value, args_hash = await self._begin_step_async(name, fn, args, kwargs)
        if replayed:
            return value
        if self._execution.trace is not None:
            with self._execution.trace.step(name):
                return await self._run_and_record_async(name, fn, args, kwargs, args_hash)
        return await self._run_and_record_async(name, fn, args, kwargs, args_hash)

    async def _run_and_record_async(
        self, name: str, fn: Callable[..., Any], args: tuple, kwargs: dict, args_hash: str | None
    ) -> Any:
        started = self._runtime.store.now()
        value = await self._run_step(name, fn, args, kwargs)
        # In a thread: writing an artifact (a DataFrame, say) must not block the loop.
        return await asyncio.to_thread(self._record, name, value, args_hash, started)

    async def _begin_step_async(
        self, name: str, fn: Any, args: tuple, kwargs: dict
    ) -> tuple[bool, Any, str | None]:
        """``_begin_step``, in a thread when a cached step reads the database (the
        loop runs other jobs meanwhile)."""
        if callable(fn) and self._cache_option(fn) is not None:
            return await asyncio.to_thread(self._begin_step, name, fn, args, kwargs)
        return self._begin_step(name, fn, args, kwargs)

    async def _run_step(self, name: str, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """The async twin of :meth:`CallState._run_step`: a try over its timeout is
        cancelled (a sync step's thread is abandoned, as in a sync workflow)."""
        options = step_options(fn)
        if options is None or (options.retries == 0 and options.timeout is None):
            return await _call(fn, args, kwargs)
        failed = 0
        while True:
            started = self._runtime.store.now()
            try:
                if options.timeout is None:
                    value = await _call(fn, args, kwargs)
                else:
                    value = await _call_within(name, fn, args, kwargs, options.timeout)
            except Exception as exc:
                failed += 1
                delay = await asyncio.to_thread(
                    self._failed_try, name, options, failed, exc, started
                )
                if delay is None:
                    raise
                await asyncio.sleep(delay)  # a cancel of the run cancels the pause too
                self._execution.check()
                continue
            if failed:
                await asyncio.to_thread(
                    self._execution.record_try, name, failed + 1, "succeeded", None, started
                )
            return value

    async def sleep(self, name: str, seconds: float) -> None:  # type: ignore[override]
        await asyncio.to_thread(super().sleep, name, seconds)

    async def sleep_until(self, name: str, when: datetime | float) -> None:  # type: ignore[override]
        await asyncio.to_thread(super().sleep_until, name, when)

    async def wait_signal(self, name: str, timeout: float | None = None) -> Any:
        return await asyncio.to_thread(super().wait_signal, name, timeout)

    async def fan_out(self, name: str, specs: list[Spec], strategy: Any = None) -> list:  # type: ignore[override]
        return await asyncio.to_thread(super().fan_out, name, specs, strategy)


async def _call(fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """Call a step from an async workflow: a coroutine function on the loop, a sync
    function in a thread (so that it does not block the loop)."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args, **kwargs)
    value = await asyncio.to_thread(fn, *args, **kwargs)
    if inspect.isawaitable(value):
        value = await value
    return value


async def _call_within(
    name: str, fn: Callable[..., Any], args: tuple, kwargs: dict, timeout: float
) -> Any:
    """``_call`` within ``timeout`` s, else ``StepTimeout``; the try is cancelled (a
    coroutine gets ``CancelledError``; a sync function's thread is abandoned).  Written
    with ``asyncio.wait`` rather than ``wait_for`` so that a ``TimeoutError`` the step
    raises itself is not taken for its timeout (``asyncio.timeout`` needs Python 3.11)."""
    task = asyncio.ensure_future(_call(fn, args, kwargs))
    try:
        done, _pending = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task in done:
        return task.result()
    task.cancel()
    # Whatever the abandoned try raises later is dropped, not reported as never retrieved.
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    raise StepTimeout(f"step {name!r} ran past its timeout of {timeout:g} s (it was cancelled)")
