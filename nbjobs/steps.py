"""Options of a step function: ``@nbjobs.step(retries=, backoff=, timeout=, cache=)``.

The decorator only records a :class:`StepOptions` on the function (and returns the
function itself, so it still runs directly outside a job); ``cs.checkpoint`` reads them
with :func:`step_options` when the function is used as a step.  Keeping the options on
the function, not in a registry, means a notebook cell that redefines the function
redefines its options too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from .errors import ConfigurationError

F = TypeVar("F", bound=Callable[..., Any])

_ATTRIBUTE = "__nbjobs_step__"


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


def step(
    fn: F | None = None,
    *,
    retries: int = 0,
    backoff: float = 1.0,
    timeout: float | None = None,
    cache: bool | Cache | None = None,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    give_up_on: type[BaseException] | tuple[type[BaseException], ...] = (),
) -> Any:
    """Give a step function its options; use as ``@nbjobs.step`` or ``@nbjobs.step(...)``."""
    options = StepOptions(
        retries=retries,
        backoff=backoff,
        timeout=timeout,
        cache=as_cache(cache),
        retry_on=_classes("retry_on", retry_on),
        give_up_on=_classes("give_up_on", give_up_on),
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


def _classes(
    what: str, value: type[BaseException] | tuple[type[BaseException], ...]
) -> tuple[type[BaseException], ...]:
    classes = value if isinstance(value, tuple) else (value,)
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise ConfigurationError(f"{what}= takes exception classes, got {cls!r}")
    return classes
