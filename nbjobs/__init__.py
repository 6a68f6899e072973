"""nbjobs: durable, checkpointed workflows for notebooks and scripts; the database is the queue."""

from .app import App
from .errors import (
    ConfigurationError,
    DuplicateCheckpoint,
    FanOutError,
    JobCancelled,
    JobFailed,
    JobTimeout,
    NbjobsError,
    SerializationError,
    SignalTimeout,
    UnknownJob,
    WorkerLost,
)
from .handle import JobHandle, ResultTimeout
from .schema import Status
from .workflow import CallState

__version__ = "0.1.0"

__all__ = [
    "App",
    "CallState",
    "ConfigurationError",
    "DuplicateCheckpoint",
    "FanOutError",
    "JobCancelled",
    "JobFailed",
    "JobHandle",
    "JobTimeout",
    "NbjobsError",
    "ResultTimeout",
    "SerializationError",
    "SignalTimeout",
    "Status",
    "UnknownJob",
    "WorkerLost",
    "__version__",
]
