"""What a valid number, name or time is, said once for every public argument.

Each check raises :class:`~nbjobs.ConfigurationError` where the value is given, naming the
argument, so that a mistake never reaches the database or the worker loop.  Numbers must
be finite: ``nan`` passes every ``<`` and ``<=`` test as False, so a NaN heartbeat turned
the reaper off and a NaN ``run_at`` left a job queued forever.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from .errors import ConfigurationError

#: What every database's INTEGER column holds.
INT32_LIMIT = 2**31

# Longest names the columns hold (queue names live in a narrower column).
_NAME_LIMITS = {"queue": 100, "key": 255}


def check_number(
    what: str,
    value: Any,
    minimum: float | None = None,
    *,
    positive: bool = False,
    integer: bool = False,
    int32: bool = False,
    optional: bool = False,
) -> Any:
    """``value`` if it is a finite number within the bounds, else ConfigurationError.

    ``positive``: strictly above 0; ``minimum``: at least this; ``int32``: fits a database
    INTEGER; ``optional``: None is allowed (and returned).  A bool is never a number here.
    """
    if value is None and optional:
        return None
    kind = "an integer" if integer else "a number"
    if positive:
        kind = "a positive integer" if integer else "a positive number"
    expected = kind if minimum is None else f"{kind} >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise ConfigurationError(f"{what} must be {expected}, got {value!r}")
    if not math.isfinite(value):
        raise ConfigurationError(f"{what} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ConfigurationError(f"{what} must be {expected}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigurationError(f"{what} must be >= {minimum}, got {value!r}")
    if int32 and not -INT32_LIMIT <= value < INT32_LIMIT:
        raise ConfigurationError(f"{what} must be < 2**31, got {value!r}")
    return value


def check_time(what: str, value: Any) -> float:
    """A point in time as epoch seconds: a timezone-aware datetime or finite epoch seconds.

    A naive datetime is refused rather than guessed: ``datetime.now()`` is local time,
    and taking it as UTC (or as local time on a worker in another zone) runs a job hours
    early or late without a word.
    """
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ConfigurationError(
                f"{what} must be a timezone-aware datetime, got the naive {value!r}; "
                "e.g. datetime.now(timezone.utc) or datetime(..., tzinfo=timezone.utc)"
            )
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(
            f"{what} must be a datetime (timezone-aware) or epoch seconds, got {value!r}"
        )
    return float(check_number(what, value))


def check_name(what: str, name: object) -> str:
    """A non-empty name the database stores as given; queue names have no comma (lists
    of queues are written comma-separated: ``--queues a,b``, the worker registry)."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"{what} must be a non-empty string, got {name!r}")
    limit = _NAME_LIMITS.get(what, 200)
    if len(name) > limit:
        raise ConfigurationError(f"{what} is longer than {limit} characters: {name[:40]!r}...")
    # PostgreSQL text cannot hold NUL, and no database stores a lone surrogate.
    if "\x00" in name or (not name.isascii() and not _utf8(name)):
        raise ConfigurationError(f"{what} must not contain NUL or lone surrogates: {name!r}")
    if what == "queue" and "," in name:
        raise ConfigurationError(
            f"queue must not contain a comma (lists of queues are comma-separated): {name!r}"
        )
    return name


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#: The units a rate may be given in, as seconds.
_RATE_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}


def check_rate(what: str, rate: object) -> tuple[int, float] | None:
    """A rate such as ``"100/minute"`` as (starts, window seconds); None stays None.

    The count is a positive integer and the unit one of s (second), minute (m, min) or
    hour (h); anything else is refused where it is given, never guessed.
    """
    if rate is None:
        return None
    text = rate.strip().lower() if isinstance(rate, str) else None
    count, _, unit = (text or "").partition("/")
    unit = unit.strip()
    if unit.endswith("s") and unit[:-1] in _RATE_UNITS:
        unit = unit[:-1]
    seconds = _RATE_UNITS.get(unit)
    if text is None or seconds is None or not count.strip().isdigit() or int(count) <= 0:
        raise ConfigurationError(
            f'{what} must be a string "N/s", "N/minute" or "N/hour" with N a positive '
            f"integer, got {rate!r}"
        )
    number = int(count)
    check_number(what, number, 1, integer=True, int32=True)
    return number, seconds


def check_step_function(name: str, fn: object) -> None:
    """``cs.checkpoint(name, fn, ...)`` takes the step's function, not its result (the
    mistake ``cs.checkpoint("x", fetch(1))`` would run the step outside the checkpoint)."""
    if not callable(fn):
        check_name("checkpoint name", name)
        raise ConfigurationError(
            f"checkpoint {name!r}: pass the function and its arguments, not its result: "
            f"cs.checkpoint({name!r}, fetch, 1) rather than cs.checkpoint({name!r}, "
            f"fetch(1)) (got a {type(fn).__name__})"
        )
