"""Workflows and their call state: replay-or-run lives here.

A :class:`Workflow` is what ``@app.workflow`` returns: it submits, runs and describes
runs of one function.  A :class:`CallState` is handed to every run; its ``checkpoint``
returns a stored step result on replay, or runs the step once and stores its result
before returning it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import inspect
import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import capture
from .codec import digest
from .errors import ConfigurationError, DuplicateCheckpoint, SerializationError
from .schema import RESERVED_KEY_PREFIX
from .validation import check_name as _check_name
from .validation import check_number, check_time

if TYPE_CHECKING:
    from .app import App
    from .execution import Execution
    from .handle import JobHandle

log = logging.getLogger(__name__)


def fingerprint(fn: Callable[..., Any]) -> str:
    """A fingerprint of a function's code: its source, or its bytecode when none."""
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        source = repr((code.co_code, code.co_consts)) if code else repr(fn)
    return hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Options:
    """Per-submission options; ``None`` means "the workflow's default"."""

    priority: int | None = None
    queue: str | None = None
    delay: float | None = None
    run_at: float | datetime | None = None
    key: str | None = None
    retries: int | None = None
    timeout: float | None = None
    steps: int | None = None

    @classmethod
    def build(cls, **options: Any) -> Options:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ConfigurationError(
                f"unknown option(s) {', '.join(unknown)}; options are {', '.join(sorted(names))}"
            )
        opts = cls(**options)
        opts.validate()
        return opts

    def validate(self) -> None:
        check_number("priority", self.priority, integer=True, int32=True, optional=True)
        check_number("delay", self.delay, 0, optional=True)
        check_number("retries", self.retries, 0, integer=True, int32=True, optional=True)
        check_number("timeout", self.timeout, 0.001, optional=True)
        check_number("steps", self.steps, 1, integer=True, int32=True, optional=True)
        if self.queue is not None:
            _check_name("queue", self.queue)
        if self.key is not None:
            _check_name("key", self.key)
            if self.key.startswith(RESERVED_KEY_PREFIX):
                raise ConfigurationError(
                    f"keys starting with {RESERVED_KEY_PREFIX!r} are reserved for nbjobs' own "
                    f"jobs (a fan-out's children), got {self.key!r}"
                )
        if self.delay is not None and self.run_at is not None:
            raise ConfigurationError("give delay or run_at, not both")
        if self.run_at is not None:
            check_time("run_at", self.run_at)

    def merged(self, other: Options) -> Options:
        """These options overridden by the non-None values of ``other``."""
        changes = {name: value for name, value in vars(other).items() if value is not None}
        # A plain submit overrides nothing: skip the copy (it is on every submit's path).
        return dataclasses.replace(self, **changes) if changes else self


@dataclasses.dataclass(frozen=True)
class Spec:
    """A description of one child run, for ``cs.fan_out``."""

    workflow: str
    args: tuple
    kwargs: dict
    options: Options


class _Submitter:
    """What ``Workflow`` and ``wf.options(...)`` share: submit, run and spec."""

    workflow: Workflow
    _options: Options

    def submit(self, *args: Any, **kwargs: Any) -> JobHandle:
        """Queue a run; returns its :class:`~nbjobs.JobHandle` at once."""
        return self.workflow.app._submit(self.workflow, args, kwargs, self._options)

    async def submit_async(self, *args: Any, **kwargs: Any) -> JobHandle:
        """``submit`` for async code: the database write runs off the event loop."""
        return await asyncio.to_thread(self.submit, *args, **kwargs)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Run durably in the calling thread and return the result (raises JobFailed)."""
        return self.workflow.app._run_inline(self.workflow, args, kwargs, self._options)

    def spec(self, *args: Any, **kwargs: Any) -> Spec:
        """Describe a child run for ``cs.fan_out`` (nothing is queued yet)."""
        return Spec(self.workflow.name, args, kwargs, self._options)


class Workflow(_Submitter):
    """A registered workflow: ``submit``, ``options(...)``, ``spec`` and ``run``."""

    def __init__(self, app: App, fn: Callable[..., Any], name: str, defaults: Options) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        #: The bare qualname a module-qualified default name also answers to (jobs of a
        #: script's ``__main__`` and of older nbjobs), when no other workflow claims it.
        self.alias: str | None = None
        self.defaults = defaults
        self.is_async = inspect.iscoroutinefunction(fn)
        self.fingerprint = fingerprint(fn)
        self.workflow = self
        self._options = Options()
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def options(self, **options: Any) -> BoundWorkflow:
        """This workflow with options for one submission (priority, queue, delay, key...).

        ``run_at`` is a timezone-aware datetime or epoch seconds (a naive datetime is
        refused); numbers must be finite; a queue name has no comma.
        """
        return BoundWorkflow(self, Options.build(**options))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"workflow {self.name!r} is not called directly: use {self.name}.submit(...) to "
            f"queue it or {self.name}.run(...) to run it durably here"
        )

    def __repr__(self) -> str:
        kind = "async workflow" if self.is_async else "workflow"
        return f"<nbjobs {kind} {self.name!r}>"


class BoundWorkflow(_Submitter):
    """A workflow with per-submission options; from ``wf.options(...)``."""

    def __init__(self, workflow: Workflow, options: Options) -> None:
        self.workflow = workflow
        self._options = options

    def options(self, **options: Any) -> BoundWorkflow:
        return BoundWorkflow(self.workflow, self._options.merged(Options.build(**options)))


class CallState:
    """The handle a workflow run gets: durable steps, progress and identity.

    ``job_id``, ``attempt`` and ``input`` (``{"args": [...], "kwargs": {...}}``) describe
    the run.  Everything durable goes through ``checkpoint``.
    """

    def __init__(self, execution: Execution, args: tuple, kwargs: dict) -> None:
        self._x = execution
        self.job_id: str = execution.job.id
        self.attempt: int = execution.job.attempt
        self.input: dict[str, Any] = {"args": list(args), "kwargs": dict(kwargs)}
        self._seen: set[str] = set()

    # -- the step protocol, shared by the sync and async checkpoint --------------------
    def _begin_step(
        self, name: str, fn: Any, args: tuple, kwargs: dict
    ) -> tuple[bool, Any, str | None]:
        """(replayed, value, args_hash): the stored value on replay."""
        _check_name("checkpoint name", name)
        if not callable(fn):
            raise ConfigurationError(
                f"checkpoint {name!r}: pass the function and its arguments, not its result: "
                f"cs.checkpoint({name!r}, fetch, 1) rather than cs.checkpoint({name!r}, "
                f"fetch(1)) (got a {type(fn).__name__})"
            )
        if name in self._seen:
            raise DuplicateCheckpoint(
                f"checkpoint {name!r} is used twice in one run of job {self.job_id}; "
                "give each step its own name (e.g. f'download-{i}')"
            )
        self._seen.add(name)
        self._x.check()
        args_hash = self._args_hash(args, kwargs)
        stored = self._x.stored.get(name)
        if stored is None:
            return False, None, args_hash
        if stored.args_hash and args_hash and stored.args_hash != args_hash:
            capture.log_outside(
                log,
                logging.WARNING,
                "job %s (%s) replays checkpoint %r with different arguments than its first "
                "run; the stored result is returned",
                self.job_id,
                self._x.workflow.name,
                name,
                in_job=True,
            )
        if stored.code_fingerprint and stored.code_fingerprint != self._x.workflow.fingerprint:
            self._x.warn_changed_code(name)
        return True, self._x.app.codec.loads(stored.value), args_hash

    def _args_hash(self, args: tuple, kwargs: dict) -> str | None:
        try:
            return digest(self._x.app.codec.dumps([list(args), kwargs], check_keys=False))
        except (SerializationError, RecursionError):
            return None

    def _encode(self, name: str, value: Any) -> str:
        try:
            return self._x.app.codec.dumps(value)
        except SerializationError as exc:
            raise SerializationError(
                f"checkpoint {name!r} returned a value nbjobs cannot store: {exc}"
            ) from None

    def _end_step(self, name: str, value: Any, args_hash: str | None, started: float) -> Any:
        text = self._encode(name, value)
        self._x.record_step(name, text, args_hash, started)
        return self._x.app.codec.loads(text)

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
        started = self._x.app.store.now()
        value = fn(*args, **kwargs)
        if inspect.isawaitable(value):
            if inspect.iscoroutine(value):
                value.close()  # never awaited: close it rather than leak a warning
            raise ConfigurationError(
                f"checkpoint {name!r} returned an awaitable in a sync workflow; make the "
                "workflow `async def` and `await cs.checkpoint(...)`"
            )
        return self._end_step(name, value, args_hash, started)

    def progress(self, value: float | str) -> None:
        """Report progress inside a long step: a fraction in [0, 1] or a message."""
        if isinstance(value, str):
            self._x.report_progress(None, value)
        else:
            self._x.report_progress(min(1.0, max(0.0, float(value))), None)

    def sleep(self, name: str, seconds: float) -> None:
        """Durably wait ``seconds`` without holding a worker slot."""
        self._x.durable_sleep(self, name, self._x.app.store.now() + float(seconds))

    def sleep_until(self, name: str, when: datetime | float) -> None:
        """Durably wait until ``when`` (an aware datetime or epoch seconds; a naive
        datetime fails the run) without holding a worker slot."""
        self._x.durable_sleep(self, name, check_time("sleep_until", when))

    def wait_signal(self, name: str, timeout: float | None = None) -> Any:
        """Wait for ``h.signal(name, payload)``; returns the payload (FIFO, once each)."""
        return self._x.durable_wait_signal(self, name, timeout)

    def fan_out(self, name: str, specs: list[Spec], strategy: Any = None) -> list:
        """Start child runs and wait for them without holding a slot; see the contract."""
        return self._x.durable_fan_out(self, name, specs, strategy)


class AsyncCallState(CallState):
    """The call state of an ``async def`` workflow: its durable calls are awaited."""

    async def checkpoint(
        self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Any:  # type: ignore[override]
        replayed, value, args_hash = self._begin_step(name, fn, args, kwargs)
        if replayed:
            return value
        started = self._x.app.store.now()
        if inspect.iscoroutinefunction(fn):
            value = await fn(*args, **kwargs)
        else:
            value = await asyncio.to_thread(fn, *args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
        text = self._encode(name, value)
        await asyncio.to_thread(self._x.record_step, name, text, args_hash, started)
        return self._x.app.codec.loads(text)

    async def sleep(self, name: str, seconds: float) -> None:  # type: ignore[override]
        await asyncio.to_thread(super().sleep, name, seconds)

    async def sleep_until(self, name: str, when: datetime | float) -> None:  # type: ignore[override]
        await asyncio.to_thread(super().sleep_until, name, when)

    async def wait_signal(self, name: str, timeout: float | None = None) -> Any:  # type: ignore[override]
        return await asyncio.to_thread(super().wait_signal, name, timeout)

    async def fan_out(self, name: str, specs: list[Spec], strategy: Any = None) -> list:  # type: ignore[override]
        return await asyncio.to_thread(super().fan_out, name, specs, strategy)
