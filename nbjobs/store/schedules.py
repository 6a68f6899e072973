"""Cron schedules and their ticks."""

from __future__ import annotations

from .core import CoreStore


class ScheduleQueries(CoreStore):
    """Cron schedules and their ticks."""
