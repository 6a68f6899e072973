"""Time, from one injectable source.

Everything in nbjobs that asks "what time is it" or "wait this long" goes through a
:class:`Clock`, so tests of delays, backoff, heartbeats and cron swap in a
:class:`FakeClock` instead of sleeping.  Times are float seconds since the epoch (UTC).
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone


class Clock:
    """Wall-clock time, optionally corrected by the database server's offset."""

    def __init__(self) -> None:
        self.offset_seconds = 0.0

    def now(self) -> float:
        return time.time() + self.offset_seconds

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait until ``event`` is set or ``seconds`` pass; True when the event was set."""
        return event.wait(max(0.0, seconds))


class FakeClock(Clock):
    """A clock that moves only when told to; waits return at once after time advances."""

    def __init__(self, start: float | datetime = 1_700_000_000.0) -> None:
        super().__init__()
        self._now = start.timestamp() if isinstance(start, datetime) else float(start)
        self._changed = threading.Condition()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        with self._changed:
            self._now += seconds
            self._changed.notify_all()

    def set(self, when: float | datetime) -> None:
        with self._changed:
            self._now = when.timestamp() if isinstance(when, datetime) else float(when)
            self._changed.notify_all()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        # Real time still passes a little so that worker loops do not spin.
        return event.wait(min(max(0.0, seconds), 0.05))


def to_datetime(epoch: float | None) -> datetime | None:
    """Seconds since the epoch as an aware UTC datetime (None stays None)."""
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=timezone.utc)
