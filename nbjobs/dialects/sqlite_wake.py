"""SQLite wake-ups: an idle worker notices the commits of other processes.

SQLite pushes nothing to other processes, so a job submitted from a notebook waited for
the worker processes' poll (``poll_seconds``, 1 s by default) to start.  But
``PRAGMA data_version`` tells a connection, in a few microseconds and without reading
any table, whether another connection (of any process) committed since it last asked.
An idle worker's watch thread asks every ``FIRST_PAUSE``; the longer nothing changes,
the less often it asks, up to every ``LAST_PAUSE``, so an idle kernel costs a few
wake-ups a second.  After a change it reads whether a job is ready in one of the
worker's queues, of a workflow it runs (a read: the claim's write lock is not taken for
nothing) and, if one is, calls back: the worker claims.

The order matters, as in the MariaDB sentinel: a watch that starts (the worker went
idle) reads the version first and then looks for ready jobs, so a commit is either seen
by that look or changes the version after it.  The poll stays as the fallback.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Engine, bindparam, exists, select
from sqlalchemy.engine import Connection

from ..schema import QUEUED_SQL, jobs
from ..schema import queues as queue_table

log = logging.getLogger(__name__)

#: The watch's first pause between two looks at the version (seconds) ...
FIRST_PAUSE = 0.005
#: ... growing by this factor at each look that finds nothing new ...
GROWTH = 1.1
#: ... up to this pause (reached after about half a second of quiet).
LAST_PAUSE = 0.05


class ChangeWatch:
    """An idle worker's wake-up thread on SQLite (see the module's docstring).

    ``callback(queue)`` runs in the thread when ``queue`` has a job ready; ``idle`` is
    the worker's event, set while a claim left slots empty; ``queues()`` and
    ``workflows()`` what it claims.
    """

    def __init__(
        self,
        engine: Engine,
        ready_time: Any,
        callback: Callable[[str], None],
        idle: threading.Event,
        queues: Callable[[], Sequence[str]],
        workflows: Callable[[], Sequence[str]],
        gone: Callable[[], bool],
    ) -> None:
        self.engine = engine
        self.callback = callback
        self.idle = idle
        self.queues = queues
        self.workflows = workflows
        self.gone = gone
        self._ready = (
            select(jobs.c.queue)
            .where(
                jobs.c.status == QUEUED_SQL,
                jobs.c.queue.in_(bindparam("w_queues", expanding=True)),
                jobs.c.workflow.in_(bindparam("w_workflows", expanding=True)),
                ready_time <= bindparam("w_now"),
                ~exists().where(queue_table.c.name == jobs.c.queue, queue_table.c.paused),
            )
            .limit(1)
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nbjobs-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.idle.set()  # out of its wait for the worker to be idle
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set() and not self.gone():
            try:
                self._watch()
            except Exception:  # a lost file, a full disk: try again in a moment
                log.debug("SQLite wake-up watch failed", exc_info=True)
                self._stop.wait(1.0)

    def _watch(self) -> None:
        # One connection for the thread's life: a new one, made in the moment after the
        # file was deleted and before the checkpointer noticed, would make a new file.
        with self.engine.connect() as conn:
            driver: Any = conn.connection.driver_connection
            version: int | None = None  # None: the worker was busy; look afresh
            pause = FIRST_PAUSE
            while not self._stop.is_set() and not self.gone():
                if not self.idle.is_set():
                    version = None
                    self.idle.wait(0.5)
                    continue
                if version is not None:
                    self._stop.wait(pause)
                latest = driver.execute("PRAGMA data_version").fetchone()[0]
                if latest == version:
                    pause = min(pause * GROWTH, LAST_PAUSE)
                    continue
                version, pause = latest, FIRST_PAUSE
                queue = self._queue_ready(conn)
                if queue is not None and not self._stop.is_set():
                    self.callback(queue)

    def _queue_ready(self, conn: Connection) -> str | None:
        """A queue of the worker's with a job ready (not paused) of a workflow it runs,
        or None."""
        names, workflows = list(self.queues()), list(self.workflows())
        if not names or not workflows:
            return None
        params = {"w_queues": names, "w_workflows": workflows, "w_now": time.time()}
        try:
            found = conn.execute(self._ready, params)
            return found.scalar()
        finally:
            conn.rollback()  # no snapshot held: the next version read sees new commits
