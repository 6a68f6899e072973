"""Cron schedules stored in the database; each tick fired exactly once across workers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import App
    from .worker import Worker


class Schedules:
    """Defines schedules and fires their due ticks from the workers' monitor threads."""

    def __init__(self, app: App) -> None:
        self.app = app

    def define(self, name: str, workflow: Any, **options: Any) -> dict[str, Any]:
        raise NotImplementedError

    def remove(self, name: str) -> None:
        raise NotImplementedError

    def set_paused(self, name: str, paused: bool) -> None:
        raise NotImplementedError

    def list(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def tick(self, worker: Worker) -> None:
        """Fire due ticks (called by every worker's monitor; exactly once per tick)."""
