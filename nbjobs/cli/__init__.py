"""The nbjobs command: run workers and the dashboard, and operate jobs, queues and schedules.

``nbjobs worker``, ``dashboard``, ``demo`` and ``migrate`` run things; ``nbjobs jobs``,
``queues``, ``schedules``, ``signal`` and ``workers`` are the operator's command line, on
``--url`` or the ``NBJOBS_URL`` environment variable.  Every listing prints a table for
people, or JSON for scripts with ``--json`` (times as ISO-8601 strings, in UTC).  Bulk
forms (``nbjobs jobs cancel|retry`` given filters instead of job ids) ask for
confirmation, naming the count; ``--yes`` skips the question, and without a terminal to
ask on and without ``--yes`` they refuse.

Exit codes, for scripts:

* ``0``: done;
* ``1``: the operation failed: an unknown job or schedule, a job that cannot be retried,
  a confirmation answered no;
* ``2``: a usage or configuration error: a bad option or argument, invalid JSON, a bad
  or unreachable database URL, a bulk action without ``--yes`` and no terminal.

Errors are one line on stderr, ``nbjobs: error: ...``, never a traceback.

This is a script entry point, not a notebook path: here (and only here) nbjobs installs
SIGINT/SIGTERM handlers, to stop a worker process gracefully.  Nothing here is imported
by ``import nbjobs``: click is loaded only when the command runs.
"""

from __future__ import annotations

from .common import printable
from .main import cli, main
from .serve import IMPORT_WARN_SECONDS, load_app

__all__ = ["IMPORT_WARN_SECONDS", "cli", "load_app", "main", "printable"]
