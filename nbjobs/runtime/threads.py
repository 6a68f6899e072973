"""Threads the engine runs on: a pool of daemon threads, and a private event loop.

Both are daemons, so a step still running when a script ends does not hold the process,
and the loop is the engine's own: nbjobs never runs on, or blocks, the caller's loop (a
notebook kernel's is already running).
"""

from __future__ import annotations

import asyncio
import queue as queue_module
import threading
from collections.abc import Callable


class DaemonPool:
    """A fixed set of daemon threads running submitted calls in order.

    ``ThreadPoolExecutor``'s threads hold the interpreter at exit until their call
    returns, so a long step would keep a script (and its second Ctrl-C) waiting after
    the worker released its job; these do not.
    """

    def __init__(self, size: int, prefix: str) -> None:
        self._calls: queue_module.SimpleQueue = queue_module.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"{prefix}_{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            fn, args = call
            fn(*args)

    def submit(self, fn: Callable[..., None], *args: object) -> None:
        self._calls.put((fn, args))

    def shutdown(self) -> None:
        """Drop the calls not started; each thread ends after its current call."""
        while True:
            try:
                self._calls.get_nowait()
            except queue_module.Empty:
                break
        for _ in self._threads:
            self._calls.put(None)


class LoopThread:
    """A private asyncio loop in its own thread, for ``async def`` workflows."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
