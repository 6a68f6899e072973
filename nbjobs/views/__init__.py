"""The live Panel dashboard: ``app.dashboard()``, ``panel serve nbjobs/dashboard.py``.

Importing this package imports Panel; ``import nbjobs`` never does.  The views read an
App's store and never import the App: :mod:`nbjobs.dashboard` builds one from a URL.
"""

from .dashboard import Dashboard
from .detail import FanOutTree, JobDetail
from .groups import Groups
from .jobs import JobsTable
from .overview import Counters, Overview, QueueDepths, Throughput, Workers
from .schedules import Schedules

__all__ = [
    "Counters",
    "Dashboard",
    "FanOutTree",
    "Groups",
    "JobDetail",
    "JobsTable",
    "Overview",
    "QueueDepths",
    "Schedules",
    "Throughput",
    "Workers",
]
