"""The nbjobs exception hierarchy.

Every public exception derives from :class:`NbjobsError`, so ``except nbjobs.NbjobsError``
catches all of them.  Control-flow signals the runtime uses internally (suspending a
workflow, a lost lease) derive from :class:`BaseException` instead, so that a user's
``except Exception`` inside a workflow can never swallow them.
"""

from __future__ import annotations

#: How nbjobs' own failure texts begin, so that ``h.result()`` raises the matching
#: :class:`JobFailed` subclass.
TIMEOUT_ERROR_PREFIX = "JobTimeout: "
WORKER_LOST_PREFIX = "worker lost "


class NbjobsError(Exception):
    """Base class of every error nbjobs raises."""


class ConfigurationError(NbjobsError):
    """A bad URL, option, cron expression or timezone; raised where it is given."""


class SerializationError(NbjobsError):
    """A value cannot be stored with the app's serializer."""


class ArtifactError(NbjobsError):
    """An artifact (a value stored out of the row) is missing, corrupt or unreadable; the
    message names its URI (and the job and step, where the caller knows them)."""


class DuplicateCheckpoint(NbjobsError):
    """A checkpoint name was used twice within one run of a workflow."""


class JobFailed(NbjobsError):
    """The job ended in failure; ``.error`` and ``.traceback`` hold the remote text."""

    def __init__(self, job_id: str, error: str | None, traceback: str | None = None) -> None:
        self.job_id = job_id
        self.error = error or "failed"
        self.traceback = traceback
        message = f"job {job_id} failed: {self.error}"
        if traceback:
            message += f"\n\nremote traceback:\n{traceback}"
        super().__init__(message)


class StepTimeout(NbjobsError, TimeoutError):
    """A step ran longer than the ``timeout`` of its ``@nbjobs.step`` options."""


class JobCancelled(NbjobsError):
    """The job was cancelled before it finished."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id} was cancelled")


class JobTimeout(JobFailed):
    """The job ran past its ``timeout`` and was failed (``h.result()`` raises it)."""


class FanOutError(NbjobsError):
    """A fan-out's strategy decided failure; ``.outcomes`` holds every child's outcome."""

    def __init__(self, message: str, outcomes: list) -> None:
        self.outcomes = outcomes
        super().__init__(message)


class SignalTimeout(NbjobsError):
    """``cs.wait_signal`` reached its timeout with no signal."""


class UnknownJob(NbjobsError):
    """No job has the given id."""


class ResultTimeout(NbjobsError, TimeoutError):
    """``h.result(timeout=...)`` returned before the job finished."""


class DatabaseLost(NbjobsError):
    """The App's database went away under it (its SQLite file was deleted or replaced):
    every further use of the App raises this; open a new App."""


class WorkerLost(JobFailed):
    """The job's worker died or went silent more than ``max_reclaims`` times, so the job
    was failed rather than looped (``h.result()`` raises it)."""


class CellError(NbjobsError):
    """A cell of a notebook job failed or timed out (``app.notebook``): the message names
    the cell (its number and the start of its source) and the kernel's error; the
    kernel's traceback is attached as a note, so it is in the attempt's traceback."""


class _ControlFlow(BaseException):
    """Base of the runtime's internal signals; never seen by users."""


class _Suspend(_ControlFlow):
    """The workflow is waiting (children, a timer, a signal) and gives up its slot."""


class _LeaseLost(_ControlFlow):
    """Another worker owns this job now; this worker's writes are refused."""


class _Cancelled(_ControlFlow):
    """Cancellation was requested; the workflow stops at this step boundary."""


class _StoreUnavailable(_ControlFlow):
    """The database failed under a run (disk full, connection lost): not the workflow's
    failure, so a user's ``except Exception`` must not swallow it and it costs no retry."""

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause
        super().__init__(str(cause))
