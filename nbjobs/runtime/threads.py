"""Threads the engine runs on: a pool of daemon threads, a private event loop, and
the exit hook that stops workers when the interpreter ends.

Both are daemons, so a step still running when a script ends does not hold the process,
and the loop is the engine's own: nbjobs never runs on, or blocks, the caller's loop (a
notebook kernel's is already running).
"""

from __future__ import annotations

import asyncio
import logging
import queue as queue_module
import threading
import weakref
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)


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
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()  # its self-pipe sockets too: nothing left to the collector

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


#: How long running jobs get at interpreter exit (a script that ends, or Ctrl-C).
EXIT_GRACE_SECONDS = 30.0


class Stoppable(Protocol):
    id: str

    @property
    def alive(self) -> bool: ...

    def stop(self, timeout: float) -> None: ...


_live: weakref.WeakSet[Stoppable] = weakref.WeakSet()
_exit_hook = threading.Lock()
_exit_hook_installed = False


def stop_at_exit(worker: Stoppable) -> None:
    """Stop ``worker`` when the interpreter exits (a script's end, its first Ctrl-C).

    A threading exit hook (run before the interpreter joins its threads), never a signal
    handler: this also runs in a notebook kernel, which owns SIGINT.  The hook waits up
    to ``EXIT_GRACE_SECONDS`` for the running jobs and says so; a second Ctrl-C gives
    them back to the queue at once.  The job threads are daemons, so a step still
    running after that does not hold the process.
    """
    global _exit_hook_installed
    _live.add(worker)
    with _exit_hook:
        if _exit_hook_installed:
            return
        try:
            threading._register_atexit(_stop_live)  # type: ignore[attr-defined]
        except (AttributeError, RuntimeError):
            return  # no hook API here, or the interpreter is exiting already
        _exit_hook_installed = True


def forget_at_exit(worker: Stoppable) -> None:
    """``worker`` stopped by other means: nothing to do for it at exit."""
    _live.discard(worker)


def _stop_live() -> None:
    for worker in list(_live):
        if worker.alive:
            try:
                worker.stop(EXIT_GRACE_SECONDS)
            except BaseException:
                log.exception("could not stop worker %s at exit", worker.id)
