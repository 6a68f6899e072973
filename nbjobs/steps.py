"""Options of a step function: ``@nbjobs.step(retries=, backoff=, timeout=, cache=)``.

The decorator only records a :class:`StepOptions` on the function (and returns the
function itself, so it still runs directly outside a job); ``cs.checkpoint`` reads them
with :func:`step_options` when the function is used as a step.  Keeping the options on
the function, not in a registry, means a notebook cell that redefines the function
redefines its options too.

The retry rule (:func:`should_retry`) is shared with workflows
(``@app.workflow(retry_on=, give_up_on=)``): an exception is retried when it is an
instance of ``retry_on``, is not an instance of ``give_up_on``, and is not a programming
error nbjobs itself raises (:data:`NEVER_RETRIED`), which the same code would raise again.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from .errors import ConfigurationError, DuplicateCheckpoint
from .validation import check_number

F = TypeVar("F", bound=Callable[..., Any])

_ATTRIBUTE = "__nbjobs_step__"

#: Errors that say the code is wrong, not that the moment was bad: a step name used twice
#: in one run, a bad option or a misused ``cs`` call.  The same code raises them again on
#: every try, so neither a step nor a workflow retries them, whatever ``retry_on`` says.
NEVER_RETRIED: tuple[type[BaseException], ...] = (DuplicateCheckpoint, ConfigurationError)

ExceptionClasses = type[BaseException] | tuple[type[BaseException], ...]


@dataclass(frozen=True)
class Cache:
    """Reuse a step's result across jobs.

    ``ttl``: how old (seconds or a ``timedelta``) a stored result may be to be reused;
    ``None`` for no limit.  ``version``: used instead of the fingerprint of the step
    function's code, to say by hand when a result stops being valid.
    """

    ttl: float | timedelta | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        ttl = self.ttl
        if ttl is not None and (
            isinstance(ttl, bool)
            or not isinstance(ttl, (int, float, timedelta))
            or not (self.ttl_seconds() or 0) > 0
            or not math.isfinite(self.ttl_seconds() or 0)
        ):
            raise ConfigurationError(
                f"Cache(ttl=...) takes positive seconds or a timedelta, or None, got {ttl!r}"
            )
        if self.version is not None and (not isinstance(self.version, str) or not self.version):
            raise ConfigurationError(
                f"Cache(version=...) takes a non-empty string, got {self.version!r}"
            )

    def ttl_seconds(self) -> float | None:
        if isinstance(self.ttl, timedelta):
            return self.ttl.total_seconds()
        return None if self.ttl is None else float(self.ttl)


@dataclass(frozen=True)
class StepOptions:
    """The options of one step function (see :func:`step`)."""

    retries: int = 0
    backoff: float = 1.0
    timeout: float | None = None
    cache: Cache | None = None
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    give_up_on: tuple[type[BaseException], ...] = ()

    def backoff_seconds(self, failed_tries: int, cap: float) -> float:
        """The pause before the next try after ``failed_tries`` failed ones: ``backoff``
        doubled each try, at most ``cap``, jittered to between half and all of it (so
        that steps that failed together do not all try again at the same moment)."""
        return jittered(self.backoff, failed_tries, cap)

    def should_retry(self, exc: BaseException) -> bool:
        """Whether a try that raised ``exc`` may be followed by another (tries left
        aside)."""
        return should_retry(exc, self.retry_on, self.give_up_on)


def jittered(base: float, failures: int, cap: float) -> float:
    """``base * 2 ** (failures - 1)``, at most ``cap``, times a factor in [0.5, 1]."""
    if base <= 0:
        return 0.0
    delay = min(cap, base * 2 ** min(max(0, failures - 1), 64))
    return delay * (0.5 + random.random() / 2)


def should_retry(
    exc: BaseException,
    retry_on: tuple[type[BaseException], ...],
    give_up_on: tuple[type[BaseException], ...],
) -> bool:
    """``exc`` matches ``retry_on``, not ``give_up_on``, and is no programming error."""
    if isinstance(exc, NEVER_RETRIED + give_up_on):
        return False
    return isinstance(exc, retry_on)


def step(
    fn: F | None = None,
    *,
    retries: int = 0,
    backoff: float = 1.0,
    timeout: float | None = None,
    cache: bool | Cache | None = None,
    retry_on: ExceptionClasses = Exception,
    give_up_on: ExceptionClasses = (),
) -> Any:
    """Give a step function its options; use as ``@nbjobs.step`` or ``@nbjobs.step(...)``.

    ``retries``: further tries of the step inside the same attempt of the job (an int
    >= 0); ``backoff``: seconds before the first of them, doubled each try and jittered
    (see :meth:`StepOptions.backoff_seconds`; 0 for none); ``timeout``: seconds one try
    may run before it fails with :class:`~nbjobs.StepTimeout` (a positive number, or
    None); ``retry_on`` / ``give_up_on``: the exception classes that are tried again /
    that fail the step at once.  Options are checked here: a bad one raises
    :class:`~nbjobs.ConfigurationError` at decoration, not in a worker.
    """
    if fn is not None and not callable(fn):
        raise ConfigurationError(
            f"@nbjobs.step needs a function, got {fn!r} (options are keywords: "
            "@nbjobs.step(retries=3))"
        )
    check_number("step retries", retries, 0, integer=True, int32=True)
    check_number("step backoff", backoff, 0)
    check_number("step timeout", timeout, positive=True, optional=True)
    options = StepOptions(
        retries=retries,
        backoff=float(backoff),
        timeout=None if timeout is None else float(timeout),
        cache=as_cache(cache),
        retry_on=exception_classes("retry_on", retry_on),
        give_up_on=exception_classes("give_up_on", give_up_on),
    )

    def mark(func: F) -> F:
        if not callable(func):
            raise ConfigurationError(f"@nbjobs.step needs a function, got {func!r}")
        setattr(func, _ATTRIBUTE, options)
        return func

    return mark if fn is None else mark(fn)


def step_options(fn: Any) -> StepOptions | None:
    """The options ``@nbjobs.step`` gave ``fn``, or ``None``."""
    options = getattr(fn, _ATTRIBUTE, None)
    return options if isinstance(options, StepOptions) else None


def as_cache(cache: bool | Cache | None) -> Cache | None:
    """``True`` -> ``Cache()``; ``False``/``None`` -> ``None``; a ``Cache`` as it is."""
    if cache is True:
        return Cache()
    if cache is None or cache is False:
        return None
    if isinstance(cache, Cache):
        return cache
    raise ConfigurationError(f"cache= takes True, False or nbjobs.Cache(...), got {cache!r}")


def exception_classes(what: str, value: Any) -> tuple[type[BaseException], ...]:
    """An exception class, or a tuple or list of them, as a tuple; else
    ConfigurationError naming ``what``.  Only ``Exception`` subclasses: a run is never
    retried on ``KeyboardInterrupt`` or ``SystemExit``, which stop it instead."""
    classes = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            raise ConfigurationError(
                f"{what}= takes exception classes (subclasses of Exception), got {cls!r}"
            )
    return classes
