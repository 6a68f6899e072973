"""The runtime context: everything the engine needs of an App, and nothing more.

The worker, the executions, the call states and the scheduler receive a :class:`Runtime`
rather than the :class:`~nbjobs.App`: the store, the codec, the clock, the workflow
registry, the settings, the outcome hooks, the tracing, a job-finished notifier, a wake-up for this
process's worker, and a maker of job handles (for the hooks).
The App builds one and hands it down; nothing below reaches back up.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ..clock import Clock
from ..codec import Codec
from ..errors import SerializationError
from ..options import Options
from ..store import Store
from ..validation import check_time
from .hooks import Hooks
from .registry import Definition, Registry
from .tracing import Tracing


@dataclasses.dataclass(frozen=True)
class Settings:
    """The App's timing and retry options, checked by the App before they get here."""

    heartbeat_seconds: float = 2.0
    stale_after_seconds: float = 15.0
    max_reclaims: int = 3
    poll_seconds: float = 1.0
    retry_backoff_seconds: float = 1.0
    retry_backoff_max_seconds: float = 300.0
    retention_seconds: float | None = None
    #: The retries of a workflow that gives none (``App(retries=...)``).
    retries: int = 0

    def backoff_seconds(self, failures: int) -> float:
        """The delay before the retry after ``failures`` failed attempts.

        Exponential from ``retry_backoff_seconds``, capped at
        ``retry_backoff_max_seconds``, with jitter (between half and all of it), so that
        jobs that failed together do not all retry at the same moment.
        """
        base, cap = self.retry_backoff_seconds, self.retry_backoff_max_seconds
        delay = min(cap, base * 2 ** max(0, failures - 1))
        return delay * (0.5 + random.random() / 2)


class Finished:
    """Tells waiters in this process that some job finished here (a generation counter
    under a condition), so that ``h.result()`` wakes at once instead of polling."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self.generation = 0

    def notify(self) -> None:
        with self._condition:
            self.generation += 1
            self._condition.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        """Wait up to ``timeout`` s unless a job finished since generation ``seen``."""
        with self._condition:
            if self.generation == seen:
                self._condition.wait(timeout)


class Runtime:
    """The context the engine runs in (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        codec: Codec,
        clock: Clock,
        settings: Settings,
        registry: Registry | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.store = store
        self.codec = codec
        self.clock = clock
        self.settings = settings
        self.registry = registry or Registry()
        #: OpenTelemetry spans, when on (see :mod:`nbjobs.runtime.tracing`).
        self.tracing = tracing or Tracing()
        #: The outcome hooks of this process (``app.on``), run by its worker.
        self.hooks = Hooks()
        #: job id -> the handle a hook receives; set by the App (the engine never
        #: imports the handle facade).
        self.make_handle: Callable[[str], Any] = lambda job_id: job_id
        self.finished = Finished()
        self._wake: Callable[[], None] | None = None

    def on_wake(self, wake: Callable[[], None] | None) -> None:
        """Set (or clear) what :meth:`wake` calls: this process's worker's wake-up."""
        self._wake = wake

    def wake(self) -> None:
        """Wake this process's worker, if it runs: new work may be ready."""
        if self._wake is not None:
            self._wake()

    def job_fields(
        self, definition: Definition, args: tuple, kwargs: dict, options: Options
    ) -> dict[str, Any]:
        """The row of a new job of ``definition`` (a submit, a run, a fan-out child)."""
        definition.check_arguments(args, kwargs)
        opts = definition.defaults.merged(options)
        run_at = None
        if opts.run_at is not None:
            run_at = check_time("run_at", opts.run_at)
        elif opts.delay:
            run_at = self.clock.now() + opts.delay
        expires_at = None
        if isinstance(opts.expires, datetime):
            expires_at = check_time("expires", opts.expires)
        elif opts.expires is not None:
            expires_at = self.clock.now() + opts.expires
        return dict(
            workflow=definition.name,
            input=self.encode_input(definition.name, args, kwargs),
            queue=opts.queue or "default",
            priority=opts.priority or 0,
            run_at=run_at,
            key=opts.key,
            max_retries=self.retries(opts),
            timeout_seconds=opts.timeout,
            steps_expected=opts.steps,
            code_fingerprint=definition.fingerprint,
            partition_key=opts.partition,
            expires_at=expires_at,
        )

    def retries(self, options: Options) -> int:
        """The retries ``options`` allow: their own, else the App's default."""
        return self.settings.retries if options.retries is None else options.retries

    def encode_input(self, workflow: str, args: tuple, kwargs: dict) -> str:
        try:
            return self.codec.dumps_input(args, kwargs)
        except SerializationError as exc:
            raise SerializationError(
                f"cannot submit {workflow!r}: an argument cannot be stored: {exc}"
            ) from None
