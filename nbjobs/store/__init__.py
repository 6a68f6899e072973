"""The only package that executes SQL: one short transaction per method, verb_noun names.

:class:`Store` is assembled from one class per concern, each in its own module:

* ``transactions``: connections, transactions, group commit, retry of conflicts;
* ``migrations``: the schema's creation and upgrades;
* ``core``: ``CoreStore``, the engine, the clock and the statements all parts share;
* ``jobs``: submit, claim, checkpoints and progress (the hot path);
* ``limits``: flow-control limits, stored and counted; ``limited_claim``: the claim
  under them; ``holds``: what holds queued jobs back;
* ``finish``: the ends of an attempt (success, failure, retry later, release);
* ``cancel``: the user's cancel and retry;
* ``groups``: groups of jobs submitted at once (sweeps), read and acted on as one;
* ``waits``: timers and signals; ``fanout``: fan-out and fan-in;
* ``workers``: the worker registry, heartbeats, the reaper, timers, paused queues;
* ``queries``: reads of single jobs and simple listings;
* ``schedules``: cron schedules and their ticks;
* ``counts``, ``views`` and ``history``: the dashboard's and the notebooks' reads;
* ``metrics``: the reads behind ``/metrics``;
* ``retention``: purging old history;
* ``cache``: entries of the cross-run step cache;
* ``tries``: the tries of steps with retries (the failed ones and the one that succeeded);
* ``hooks``: the outcomes whose hooks have not run, and the leases on running them;
* ``notebooks``: the executed notebook of each attempt of a notebook job.

The composition is explicit: a class inherits from the classes whose methods it calls
(``JobQueries`` from ``LimitedClaims``, ``CountQueries`` from ``HoldQueries``, both
from ``LimitQueries``; ``FinishQueries`` from ``JobQueries`` and ``FanoutQueries``; ``FanoutQueries`` from
``WaitQueries``; ``GroupQueries`` from ``CancelQueries``; ``ViewQueries`` and ``MetricQueries`` from ``CountQueries``; all of them from ``CoreStore``),
and no method is defined twice, so the order of the bases below changes nothing.  The
one exception is the group-commit hook ``Transactions._run_group``, which
``FinishQueries`` replaces without ``super()`` (``tests/test_layers.py`` checks it all).
"""

from .cache import CacheQueries
from .finish import FinishQueries
from .groups import GroupQueries
from .history import HistoryQueries
from .hooks import HookQueries
from .jobs import ClaimedJob
from .metrics import MetricQueries
from .notebooks import NotebookQueries
from .queries import JobReads
from .retention import RetentionQueries
from .schedules import ScheduleQueries
from .tries import TryQueries
from .views import ViewQueries
from .workers import WorkerQueries, process_alive


class Store(
    FinishQueries,
    GroupQueries,
    WorkerQueries,
    ScheduleQueries,
    JobReads,
    ViewQueries,
    HistoryQueries,
    RetentionQueries,
    MetricQueries,
    HookQueries,
    CacheQueries,
    NotebookQueries,
    TryQueries,
):
    """All reads and writes of the nbjobs tables for one database."""


__all__ = ["ClaimedJob", "Store", "process_alive"]
