"""``nbjobs.current()``: the call state of the notebook job a kernel runs for.

In a notebook executed as a job (``app.notebook``), ``cs = nbjobs.current()`` returns a
:class:`KernelCallState`: ``cs.checkpoint(name, fn, *args)`` is a durable step of that
job, so a retry or a crash recovery, which re-executes the notebook from the top,
gets the stored value back instead of calling ``fn`` again.  The kernel talks to its
worker over the run's private channel (:mod:`nbjobs.runtime.notebook_bridge`): the
worker takes the step's name and records it under the job's lease, while values are
encoded here, with the worker's codec settings, so a DataFrame goes straight from the
kernel to the artifact store.

Anywhere else (a notebook opened in Jupyter, a script) ``nbjobs.current()`` returns a
:class:`LocalCallState` that runs each step directly, so the same notebook works
interactively.

The worker's silent set-up request leaves the bridge's address and key in a small
module of the kernel; the first ``nbjobs.current()`` connects, so a notebook that never
asks for its job imports nothing of nbjobs.
"""

from __future__ import annotations

import inspect
import logging
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError, DuplicateCheckpoint, NbjobsError, SerializationError
from .validation import check_name, check_step_function, check_time

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from .codec import Codec

log = logging.getLogger(__name__)

_job: KernelCallState | None = None
_local: LocalCallState | None = None


class JobStopped(BaseException):
    """The job this kernel runs for stopped (cancelled, timed out, or taken over by
    another worker): the cell ends here.  A ``BaseException``, so that a cell's
    ``except Exception`` does not swallow it."""


def current() -> KernelCallState | LocalCallState:
    """The call state of the notebook job this kernel runs for, or a local stand-in
    that runs steps directly when the notebook runs outside a job."""
    global _local
    job = _job or _attach()
    if job is not None:
        return job
    if _local is None:
        _local = LocalCallState()
    return _local


def _check_step(name: str, fn: Any) -> None:
    check_step_function(name, fn)
    check_name("checkpoint name", name)


def _not_awaitable(name: str, value: Any) -> Any:
    if inspect.isawaitable(value):
        if inspect.iscoroutine(value):
            value.close()
        raise ConfigurationError(
            f"checkpoint {name!r} returned an awaitable; in a notebook, make the step a "
            "plain function (run async code with asyncio inside it)"
        )
    return value


_WAITS = (
    "durable waits (sleep, wait_signal, fan_out) are not available in notebook jobs: "
    "submit the waiting part as a workflow of its own"
)


class LocalCallState:
    """``nbjobs.current()`` outside a job: steps run directly, nothing is stored."""

    job_id: str | None = None
    attempt = 0

    def __init__(self) -> None:
        self.input: dict[str, Any] = {"args": [], "kwargs": {}}

    def __repr__(self) -> str:
        return "<nbjobs local call state: not in a job, steps run directly>"

    def checkpoint(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` and return its value (outside a job nothing is
        stored, and a cell run again runs its steps again)."""
        _check_step(name, fn)
        return _not_awaitable(name, fn(*args, **kwargs))

    def progress(self, value: float | str) -> None:
        """Outside a job progress goes nowhere."""

    def sleep(self, name: str, seconds: float) -> None:
        """Outside a job: a plain sleep."""
        check_name("sleep name", name)
        time.sleep(max(0.0, float(seconds)))

    def sleep_until(self, name: str, when: datetime | float) -> None:
        check_name("sleep name", name)
        time.sleep(max(0.0, check_time("sleep_until", when) - time.time()))

    def wait_signal(self, name: str, timeout: float | None = None) -> Any:
        raise ConfigurationError("wait_signal needs a job: " + _WAITS)

    def fan_out(self, name: str, specs: list, strategy: Any = None) -> list:
        raise ConfigurationError("fan_out needs a job: " + _WAITS)


class KernelCallState:
    """``nbjobs.current()`` in the kernel of a notebook job (see the module docstring)."""

    def __init__(self, conn: Connection, hello: dict[str, Any]) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._settings = hello["codec"]
        self._codec: Codec | None = None
        self.job_id: str = hello["job_id"]
        self.attempt: int = hello["attempt"]
        self.workflow: str = hello["workflow"]
        self.parameters: dict[str, Any] = hello["parameters"]
        self.input: dict[str, Any] = {"args": [], "kwargs": dict(self.parameters)}

    def __repr__(self) -> str:
        return f"<nbjobs call state of job {self.job_id} ({self.workflow}), attempt {self.attempt}>"

    @property
    def codec(self) -> Codec:
        """The worker's codec settings, made here on first use."""
        if self._codec is None:
            from .artifacts.store import ArtifactStore
            from .codec import Codec

            s = self._settings
            store = None
            if s["artifacts"] is not None:
                a = s["artifacts"]
                store = ArtifactStore(
                    a["url"], fsync=a["fsync"], cache_dir=a["cache_dir"], **a["options"]
                )
            self._codec = Codec(
                s["serializer"],
                max_payload_bytes=s["max_payload_bytes"],
                artifacts=store,
                inline_bytes=s["inline_bytes"],
            )
        return self._codec

    def _call(self, *request: Any) -> Any:
        with self._lock:
            try:
                self._conn.send(request)
                answer = self._conn.recv()
            except (EOFError, OSError) as exc:
                raise JobStopped(f"the worker running job {self.job_id} is gone: {exc}") from None
        if answer[0] == "ok":
            return answer[1]
        if answer[0] == "stopped":
            raise JobStopped(f"job {self.job_id}: {answer[1]}")
        kind, message = answer[1], answer[2]
        if kind == "DuplicateCheckpoint":
            raise DuplicateCheckpoint(message)
        if kind == "ConfigurationError":
            raise ConfigurationError(message)
        if kind == "SerializationError":
            raise SerializationError(message)
        raise NbjobsError(message)

    def _where(self, what: str) -> str:
        return f"job {self.job_id} ({self.workflow}), {what}"

    def checkpoint(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` once per job and persist its result.

        On a replay (a retry, a crash recovery: the notebook runs again from the top)
        the stored value is returned and ``fn`` is not called.  The value returned is
        the stored one in both cases, as in a workflow.
        """
        from .codec import digest

        _check_step(name, fn)
        codec = self.codec
        try:
            args_hash: str | None = digest(codec.dumps([list(args), kwargs], check_keys=False))
        except (SerializationError, RecursionError):
            args_hash = None
        replayed, text = self._call("begin", name, args_hash)
        if replayed:
            where = self._where(
                f"checkpoint {name!r} (h.retry(from_checkpoint={name!r}) computes it again)"
            )
            return codec.loads(text, where=where)
        value = _not_awaitable(name, fn(*args, **kwargs))
        try:
            text, stored = codec.dumps_as_stored(value)
        except SerializationError as exc:
            raise SerializationError(
                f"checkpoint {name!r} returned a value nbjobs cannot store: {exc}"
            ) from None
        self._call("record", name, text, args_hash)
        return stored

    def progress(self, value: float | str) -> None:
        """Report progress inside a long cell: a fraction in [0, 1] or a message."""
        if not isinstance(value, str):
            value = min(1.0, max(0.0, float(value)))
        self._call("progress", value)

    def sleep(self, name: str, seconds: float) -> None:
        raise ConfigurationError(_WAITS)

    def sleep_until(self, name: str, when: datetime | float) -> None:
        raise ConfigurationError(_WAITS)

    def wait_signal(self, name: str, timeout: float | None = None) -> Any:
        raise ConfigurationError(_WAITS)

    def fan_out(self, name: str, specs: list, strategy: Any = None) -> list:
        raise ConfigurationError(_WAITS)

    def _send_result(self, value: Any) -> None:
        try:
            text = self.codec.dumps(value)
        except SerializationError as exc:
            raise SerializationError(f"the notebook's result cannot be stored: {exc}") from None
        self._call("result", text)


# -- the kernel's end of the worker's set-up ----------------------------------------------
#: The module the worker's silent set-up request makes in the kernel, holding the
#: bridge's address and key: nothing is imported until a cell asks for the job.
BRIDGE_MODULE = "_nbjobs_bridge"


def _attach() -> KernelCallState | None:
    """Connect to the run's bridge, once, if the worker set one up in this kernel."""
    global _job
    bridge = sys.modules.get(BRIDGE_MODULE)
    if bridge is None:
        return None
    from multiprocessing.connection import Client

    host, port = bridge.address
    conn = Client((host, port), authkey=bytes.fromhex(bridge.key))
    conn.send(("hello",))
    answer = conn.recv()
    _job = KernelCallState(conn, answer[1])
    return _job


def _publish_result(value: Any) -> None:
    """Send the notebook's result (the runner calls this after the last cell)."""
    job = _job or _attach()
    if job is not None:
        job._send_result(value)
