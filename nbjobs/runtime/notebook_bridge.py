"""How a notebook's kernel reaches the job it runs for: a local, authenticated channel.

The kernel is another process, so ``nbjobs.current()`` in a cell cannot hold the
run's :class:`~nbjobs.runtime.callstate.CallState`.  Instead the worker opens a
:class:`Bridge` for each run: a TCP socket on 127.0.0.1 that only a peer holding the
run's random key can use (the handshake of :mod:`multiprocessing.connection`, an HMAC
challenge both ways).  The runner hands the address and key to the kernel in a silent
set-up request that the executed notebook never shows, and the kernel's call state
(:mod:`nbjobs.kernel`) sends its steps here:

* ``begin(name, args_hash)``: the step's name is taken in the run's call state (a name
  used twice is a :class:`~nbjobs.DuplicateCheckpoint`, a cancelled or lost run stops
  here), and the stored value's text comes back on a replay;
* ``record(name, text, args_hash)``: a new step's text, encoded in the kernel by the
  same codec settings (artifacts, such as DataFrames, are written by the kernel to the
  shared artifact store), is recorded by the run's execution, fenced by its lease;
* ``progress(value)``, and the result: ``result(text)``, encoded in the kernel, or
  ``result_value(value)``, a plain JSON-like value sent without importing nbjobs.

So every write still goes through the worker's execution, under its lease, and the
kernel needs no database connection (DuckDB, a single-process database, works too).
"""

from __future__ import annotations

import contextvars
import logging
import secrets
import socket
import threading
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge
from typing import TYPE_CHECKING, Any

from ..errors import (
    DuplicateCheckpoint,
    NbjobsError,
    _Cancelled,
    _LeaseLost,
    _StoreUnavailable,
)

if TYPE_CHECKING:
    from .callstate import CallState

log = logging.getLogger(__name__)

#: How often the serving thread looks whether the run is over.
POLL_SECONDS = 0.2


def codec_settings(codec: Any) -> dict[str, Any]:
    """What the kernel needs to encode and decode values as the worker does."""
    store = codec.artifacts
    artifacts = None
    if store is not None:
        artifacts = {
            "url": store.url,
            "fsync": store.fsync,
            "cache_dir": store.cache_dir,
            "options": dict(store._options),
        }
    return {
        "serializer": codec.serializer,
        "max_payload_bytes": codec.max_payload_bytes,
        "inline_bytes": codec.inline_bytes,
        "artifacts": artifacts,
    }


class Bridge:
    """Serves the kernel of one notebook run (see the module docstring)."""

    def __init__(self, cs: CallState, parameters: dict[str, Any]) -> None:
        self.cs = cs
        self.execution = cs._execution
        self.authkey = secrets.token_bytes(32)
        #: The control-flow signal or programming error a kernel request met: the run
        #: raises it rather than the cell's error (a lost lease is not a cell failure).
        self.fatal: BaseException | None = None
        #: The stored text of the notebook's result, once the kernel sent it; or the
        #: value itself (``has_value``), when it is plain JSON-like data.
        self.result: str | None = None
        self.value: Any = None
        self.has_value = False
        self.hello = {
            "job_id": cs.job_id,
            "attempt": cs.attempt,
            "parameters": dict(parameters),
            "workflow": self.execution.workflow.name,
            "codec": codec_settings(self.execution.runtime.codec),
        }
        self._started: dict[str, float] = {}
        self._stop = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(POLL_SECONDS)
        self.address: tuple[str, int] = self._server.getsockname()[:2]
        # The job's output capture follows the serving thread (warnings about replays).
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run,
            args=(self._serve,),
            name=f"nbjobs-notebook-bridge-{cs.job_id}",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5 * POLL_SECONDS + 1)
        self._server.close()

    # -- serving -----------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(None)
            conn = Connection(sock.detach())
            try:
                deliver_challenge(conn, self.authkey)
                answer_challenge(conn, self.authkey)
            except Exception:
                log.warning("job %s: refused a connection without the run's key", self.cs.job_id)
                conn.close()
                continue
            try:
                self._session(conn)
            finally:
                conn.close()

    def _session(self, conn: Connection) -> None:
        while not self._stop.is_set():
            try:
                if not conn.poll(POLL_SECONDS):
                    continue
                request = conn.recv()
            except (EOFError, OSError):
                return
            conn.send(self._answer(request))

    def _answer(self, request: Any) -> tuple:
        op, args = request[0], request[1:]
        try:
            if op == "hello":
                return ("ok", self.hello)
            if op == "begin":
                return ("ok", self._begin(*args))
            if op == "record":
                self._record(*args)
                return ("ok", None)
            if op == "progress":
                self.cs.progress(args[0])
                return ("ok", None)
            if op == "result":
                self.result = args[0]
                return ("ok", None)
            if op == "result_value":
                self.value, self.has_value = args[0], True
                return ("ok", None)
            return ("error", "NbjobsError", f"unknown request {op!r}")
        except (_LeaseLost, _Cancelled, _StoreUnavailable) as exc:
            self.fatal = exc
            why = {
                _LeaseLost: "this worker no longer holds the job (lost lease or timeout)",
                _Cancelled: "the job was cancelled",
                _StoreUnavailable: "the database failed under the run",
            }[type(exc)]
            return ("stopped", why)
        except DuplicateCheckpoint as exc:
            self.fatal = exc
            return ("error", "DuplicateCheckpoint", str(exc))
        except NbjobsError as exc:
            return ("error", type(exc).__name__, str(exc))
        except Exception as exc:
            log.warning("job %s: a kernel request failed", self.cs.job_id, exc_info=True)
            return ("error", "NbjobsError", f"{type(exc).__name__}: {exc}")

    # -- steps -------------------------------------------------------------------------
    def _begin(self, name: str, args_hash: str | None) -> tuple[bool, str | None]:
        """Take ``name`` for the run: (True, the stored text) on a replay, else
        (False, None)."""
        cs = self.cs
        stored = cs._claim_name(name, "checkpoint name")
        if stored is None:
            self._started[name] = self.execution.runtime.store.now()
            return False, None
        cs._warn_replay(name, stored, args_hash)
        return True, stored.value

    def _record(self, name: str, text: str, args_hash: str | None) -> None:
        if name not in self._started or name in self.execution.stored:
            raise NbjobsError(f"checkpoint {name!r} was not begun by this run")
        started = self._started.pop(name)
        self.execution.check()
        self.execution.record_step(name, self.cs._next_seq(), text, args_hash, started)
