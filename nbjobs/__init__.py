"""nbjobs: durable, checkpointed workflows for notebooks and scripts; the database is the queue."""

from .app import App
from .artifacts.artifact import Artifact
from .artifacts.types import File, register_type
from .errors import (
    ArtifactError,
    CellError,
    ConfigurationError,
    DatabaseLost,
    DuplicateCheckpoint,
    FanOutError,
    JobCancelled,
    JobFailed,
    JobTimeout,
    NbjobsError,
    ResultTimeout,
    SerializationError,
    SignalTimeout,
    StepTimeout,
    UnknownJob,
    WorkerLost,
)
from .group import JobGroup
from .handle import JobHandle
from .jobs import Status
from .kernel import current
from .runtime.callstate import CallState
from .steps import Cache, step
from .strategies import CollectAll, FailFast, Outcome, Threshold

__version__ = "0.1.0"

__all__ = [
    "App",
    "Artifact",
    "ArtifactError",
    "Cache",
    "CallState",
    "CellError",
    "CollectAll",
    "ConfigurationError",
    "DatabaseLost",
    "DuplicateCheckpoint",
    "FailFast",
    "FanOutError",
    "File",
    "JobCancelled",
    "JobFailed",
    "JobGroup",
    "JobHandle",
    "JobTimeout",
    "NbjobsError",
    "Outcome",
    "ResultTimeout",
    "SerializationError",
    "SignalTimeout",
    "Status",
    "StepTimeout",
    "Threshold",
    "UnknownJob",
    "WorkerLost",
    "__version__",
    "current",
    "register_type",
    "step",
]
