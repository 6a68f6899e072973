"""The only package that executes SQL: one short transaction per method, verb_noun names.

:class:`Store` is assembled from one mixin per concern, each in its own module, over
:class:`~nbjobs.store.core.CoreStore` (connections, transactions, the schema):

* ``jobs``: enqueue, claim, checkpoint, finish, cancel and retry (the hot path);
* ``workers``: the worker registry, heartbeats, the reaper, timers, paused queues;
* ``queries``: reads of single jobs and simple listings;
* ``waits``: timers, signals and fan-out/fan-in;
* ``schedules``: cron schedules and their ticks;
* ``views`` and ``history``: the dashboard's and the notebooks' read-only queries;
* ``retention``: purging old history.
"""

from .core import CoreStore
from .history import HistoryQueries
from .jobs import ClaimedJob, JobQueries
from .queries import JobReads
from .retention import RetentionQueries
from .schedules import ScheduleQueries
from .views import ViewQueries
from .waits import WaitQueries
from .workers import WorkerQueries, process_alive


class Store(
    WaitQueries,
    ScheduleQueries,
    ViewQueries,
    HistoryQueries,
    RetentionQueries,
    JobQueries,
    WorkerQueries,
    JobReads,
    CoreStore,
):
    """All reads and writes of the nbjobs tables for one database."""


__all__ = ["ClaimedJob", "Store", "process_alive"]
