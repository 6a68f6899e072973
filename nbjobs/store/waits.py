"""Timers, signals and fan-out/fan-in."""

from __future__ import annotations

from .core import CoreStore


class WaitQueries(CoreStore):
    """Timers, signals and fan-out/fan-in."""
