"""Durable waits: timers, signals and fan-out/fan-in (suspend without holding a slot)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import App
    from .execution import Execution
    from .workflow import CallState


class Waits:
    """The waiting half of the durable-execution model."""

    def __init__(self, app: App) -> None:
        self.app = app

    def sleep(self, x: Execution, cs: CallState, name: str, wake_at: float) -> None:
        raise NotImplementedError

    def wait_signal(self, x: Execution, cs: CallState, name: str, timeout: float | None) -> Any:
        raise NotImplementedError

    def send_signal(self, job_id: str, name: str, payload: Any) -> None:
        raise NotImplementedError

    def fan_out(self, x: Execution, cs: CallState, name: str, specs: list, strategy: Any) -> list:
        raise NotImplementedError
