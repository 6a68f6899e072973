"""The only package that executes SQL: one short transaction per method, verb_noun names.

:class:`Store` is assembled from one mixin per concern, each in its own module, over
:class:`~nbjobs.store.core.CoreStore` (connections, schema, the job life cycle).
"""

from .core import ClaimedJob, CoreStore, process_alive
from .history import HistoryQueries
from .retention import RetentionQueries
from .schedules import ScheduleQueries
from .views import ViewQueries
from .waits import WaitQueries


class Store(
    WaitQueries, ScheduleQueries, ViewQueries, HistoryQueries, RetentionQueries, CoreStore
):
    """All reads and writes of the nbjobs tables for one database."""


__all__ = ["ClaimedJob", "Store", "process_alive"]
