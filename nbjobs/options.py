"""Per-submission options and fan-out child specs: plain values, checked once.

``Options`` is what ``@app.workflow(...)`` takes as a workflow's defaults and
``wf.options(...)`` as one submission's overrides; ``Spec`` describes one child of a
fan-out.  Both are validated where they are made, so the engine below never sees a bad
value.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from .errors import ConfigurationError
from .schema import RESERVED_KEY_PREFIX
from .validation import check_name, check_number, check_time


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
    #: Flow control: the partition a ``partition_concurrency`` limit counts the job in,
    #: and the seconds (or the aware datetime) after which a job not started yet is
    #: cancelled as ``expired``.
    partition: str | None = None
    expires: float | datetime | None = None

    @classmethod
    def build(cls, **options: Any) -> Options:
        names = {f.name for f in dataclasses.fields(cls)}
        code = sorted({"retry_on", "give_up_on"} & set(options))
        if code:
            raise ConfigurationError(
                f"{' and '.join(code)} cannot be set per submission: exception classes are "
                "code, not stored with a job; give them to @app.workflow(...)"
            )
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
            check_name("queue", self.queue)
        if self.key is not None:
            check_name("key", self.key)
            if self.key.startswith(RESERVED_KEY_PREFIX):
                raise ConfigurationError(
                    f"keys starting with {RESERVED_KEY_PREFIX!r} are reserved for nbjobs' own "
                    f"jobs (a fan-out's children), got {self.key!r}"
                )
        if self.delay is not None and self.run_at is not None:
            raise ConfigurationError("give delay or run_at, not both")
        if self.run_at is not None:
            check_time("run_at", self.run_at)
        if self.partition is not None:
            check_name("partition", self.partition)
        if isinstance(self.expires, datetime):
            check_time("expires", self.expires)
        else:
            check_number("expires", self.expires, positive=True, optional=True)

    def merged(self, other: Options) -> Options:
        """These options overridden by the non-None values of ``other``."""
        changes = {name: value for name, value in vars(other).items() if value is not None}
        # A plain submit overrides nothing: skip the copy (it is on every submit's path).
        return dataclasses.replace(self, **changes) if changes else self


@dataclasses.dataclass(frozen=True)
class Spec:
    """A description of one run, for ``cs.fan_out`` and ``app.submit_many``."""

    workflow: str
    args: tuple
    kwargs: dict
    options: Options
