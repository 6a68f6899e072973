"""Cron expressions and timezones: croniter behind one small surface.

Only this module imports croniter (its maintenance has been uncertain), so replacing it
touches one file.  :func:`parse` validates an expression and a timezone once and returns a
:class:`Cron` that answers the only questions schedules ask: the next tick after a time, the
ticks in a window, and the latest tick at or before a time.  Times are float epoch seconds.

Expressions have five fields (minute hour day month weekday), an optional sixth for seconds
and an optional seventh for the year, in croniter's order: ``"*/10 * * * * *"`` is every ten
seconds.  The aliases ``@yearly``/``@annually``, ``@monthly``, ``@weekly``, ``@daily``/
``@midnight`` and ``@hourly`` are accepted.

Daylight-saving time: ticks are matched against the wall clock of the schedule's timezone.
When clocks go forward, a tick inside the skipped hour fires at the first instant after it
(croniter's behaviour, so no run is lost).  When clocks go back, a fixed-time schedule
(``30 2 * * *``) fires only at the first of the two 02:30s (no double run); a schedule whose
hour field is a wildcard (``0 * * * *``, ``*/20 * * * *``) keeps firing through the repeated
hour, since those wall times are distinct real instants (the rule of Vixie cron).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import datetime, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

from .errors import ConfigurationError

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

# Forward steps :meth:`Cron.latest` takes before it jumps back from the far end instead.
_WALK = 64
# Repeated wall times skipped in a row at most: a two-hour repeat at one tick a second.
_MAX_SKIPPED = 7300


def check_timezone(name: object) -> ZoneInfo:
    """The IANA timezone called ``name`` (or a ``ZoneInfo`` made from such a name)."""
    if isinstance(name, ZoneInfo):
        name = name.key
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(
            f"timezone must be an IANA name such as 'Europe/Berlin' or 'UTC', got {name!r}"
        )
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigurationError(
            f"unknown timezone {name!r}; use an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from None


@dataclass(frozen=True)
class Cron:
    """A validated cron expression in a timezone.  Build it with :func:`parse`."""

    expression: str  # as given, whitespace normalized (aliases kept)
    timezone: str
    zone: ZoneInfo = field(repr=False, compare=False)
    fields: str = field(repr=False, compare=False)  # aliases expanded, what croniter gets
    # A wildcard hour field: the repeated hour after clocks go back fires again.
    hourly: bool = field(repr=False, compare=False)

    def _local(self, epoch: float) -> datetime:
        return datetime.fromtimestamp(epoch, self.zone)

    def _second_occurrence(self, when: datetime) -> bool:
        """True for the later of two equal wall times when clocks go back (fold=1)."""
        if when.fold != 1:
            return False
        first = when.replace(fold=0)
        # In a gap both folds map elsewhere; only a real repeat round-trips.
        return first.utcoffset() != when.utcoffset() and self._local(first.timestamp()).replace(
            tzinfo=None
        ) == first.replace(tzinfo=None)

    def _step(self, epoch: float, backwards: bool) -> float | None:
        it = croniter(self.fields, self._local(epoch))
        for _ in range(_MAX_SKIPPED):
            try:
                when = it.get_prev(datetime) if backwards else it.get_next(datetime)
            except CroniterBadDateError:
                return None  # no tick within croniter's search window (e.g. a past year)
            if self.hourly or not self._second_occurrence(when):
                ts = when.timestamp()
                if (ts < epoch) if backwards else (ts > epoch):
                    return ts
        raise ConfigurationError(  # pragma: no cover - croniter misbehaving
            f"cron expression {self.expression!r} in {self.timezone}: no consistent tick "
            f"{'before' if backwards else 'after'} {epoch}"
        )

    def next_after(self, epoch: float) -> float | None:
        """The first tick strictly after ``epoch``, or None when there is none."""
        return self._step(epoch, backwards=False)

    def ticks(self, since: float, until: float, limit: int) -> list[float]:
        """Up to ``limit`` ticks ``t`` with ``since <= t <= until``, oldest first.

        ``since`` is itself taken as a tick (it is a schedule's stored next fire).
        """
        out: list[float] = []
        t: float | None = since
        while t is not None and t <= until and len(out) < limit:
            out.append(t)
            t = self.next_after(t)
        return out

    def latest(self, since: float, until: float) -> float:
        """The last tick ``t`` with ``since <= t <= until``; ``since`` is a tick <= until.

        A short walk forward covers the usual case (one or a few missed ticks); a long
        backlog (a per-second schedule after a day offline) jumps back from ``until``.
        """
        t = since
        for _ in range(_WALK):
            following = self.next_after(t)
            if following is None or following > until:
                return t
            t = following
        back = self._step(until + 0.001, backwards=True)
        if back is not None and back > until:
            back = self._step(back, backwards=True)
        return back if back is not None and back >= t else t


def parse(expression: str, timezone_name: str | ZoneInfo = "UTC") -> Cron:
    """Validate ``expression`` in a timezone; raises ``ConfigurationError`` naming the problem.

    Results are cached, so workers may call this on every tick.
    """
    if not isinstance(expression, str) or not expression.strip():
        raise ConfigurationError(f"cron expression must be a non-empty string, got {expression!r}")
    zone = check_timezone(timezone_name)
    return _parse(" ".join(expression.split()), zone.key)


@functools.lru_cache(maxsize=512)
def _parse(text: str, timezone_name: str) -> Cron:
    zone = ZoneInfo(timezone_name)
    fields = ALIASES.get(text.lower(), text)
    if fields.startswith("@"):
        raise ConfigurationError(
            f"bad cron expression {text!r}: unknown alias; use one of {', '.join(ALIASES)}"
        )
    parts = fields.split()
    if len(parts) not in (5, 6, 7):
        raise ConfigurationError(
            f"bad cron expression {text!r}: expected 5 fields (minute hour day month "
            f"weekday), optionally a 6th for seconds and a 7th for the year; got {len(parts)}"
        )
    try:
        croniter(fields, datetime(2000, 1, 1, tzinfo=timezone.utc))
    except CroniterError as exc:
        raise ConfigurationError(f"bad cron expression {text!r}: {exc}") from None
    except (ValueError, TypeError, KeyError, IndexError) as exc:  # croniter's parser leaks these
        raise ConfigurationError(f"bad cron expression {text!r}: {exc}") from None
    return Cron(
        expression=text,
        timezone=zone.key,
        zone=zone,
        fields=fields,
        hourly=parts[1].startswith("*"),
    )
