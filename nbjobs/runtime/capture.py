"""Per-job capture of ``print`` and ``logging`` output.

A notebook kernel sends a background thread's output to whichever cell ran last, which is
never where anyone looks.  While a job runs, its thread (or its asyncio task, and any
``asyncio.to_thread`` it starts) carries a :class:`JobOutput` in a context variable:

* ``sys.stdout`` and ``sys.stderr`` are replaced, once, by a proxy that sends a write to the
  current job's buffer when there is one and to the original stream otherwise, so output
  of code not running in a job passes through untouched;
* a log record factory (chained to the previous one, so no handler is added and
  ``logging.basicConfig`` and the last-resort handler keep working) copies each record
  made in a job's context into its buffer.  A ``StreamHandler`` that writes to the proxy
  from inside a job is not written twice.

Buffers are flushed into ``nbjobs_logs`` in small batches (and before the job's outcome is
recorded, so ``h.result(); h.logs()`` sees everything) and are bounded per attempt.
Output of ``wf.run`` (executed in the calling thread, which the user is watching) is
stored and also shown.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from ..clock import Clock
    from ..store import ClaimedJob, Store

log = logging.getLogger(__name__)

#: Characters kept per attempt; the rest is counted and reported as truncated.
MAX_CHARS_PER_ATTEMPT = 200_000
#: A buffer is written to the database when it holds this much, or after this long.
FLUSH_CHARS = 8_192
FLUSH_SECONDS = 0.5

_current: contextvars.ContextVar[JobOutput | None] = contextvars.ContextVar(
    "nbjobs_job_output", default=None
)
_install_lock = threading.Lock()
_flushing = threading.local()
_STREAM_EMIT = logging.StreamHandler.emit.__code__
_formatter = logging.Formatter()


class JobOutput:
    """The bounded output buffer of one attempt of one job."""

    def __init__(self, store: Store, clock: Clock, job: ClaimedJob, *, tee: bool = False) -> None:
        self.store = store
        self.clock = clock
        self.job_id = job.id
        self.attempt = job.attempt
        self.tee = tee
        self.kept = 0
        self.dropped = 0
        self._pending: list[dict[str, Any]] = []
        self._pending_chars = 0
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()

    def add(self, stream: str, text: str) -> None:
        if not text:
            return
        with self._lock:
            room = MAX_CHARS_PER_ATTEMPT - self.kept
            if room <= 0:
                self.dropped += len(text)
                return
            if len(text) > room:
                self.dropped += len(text) - room
                text = text[:room]
            self.kept += len(text)
            pending = self._pending
            if pending and pending[-1]["stream"] == stream:
                pending[-1]["text"] += text  # one row per run of writes to a stream
            else:
                pending.append(
                    dict(
                        job_id=self.job_id,
                        attempt=self.attempt,
                        at=self.clock.now(),
                        stream=stream,
                        text=text,
                    )
                )
            self._pending_chars += len(text)
            due = (
                self._pending_chars >= FLUSH_CHARS
                or time.monotonic() - self._last_flush >= FLUSH_SECONDS
            )
        if due:
            self.flush()

    def flush(self, *, final: bool = False) -> None:
        """Write the pending output (and, at the end, the truncation note)."""
        with self._lock:
            rows, self._pending, self._pending_chars = self._pending, [], 0
            self._last_flush = time.monotonic()
            if final and self.dropped:
                rows.append(
                    dict(
                        job_id=self.job_id,
                        attempt=self.attempt,
                        at=self.clock.now(),
                        stream="nbjobs",
                        text=f"\n[nbjobs: {self.dropped} more characters of output were "
                        f"dropped; the limit is {MAX_CHARS_PER_ATTEMPT} per attempt]\n",
                    )
                )
                self.dropped = 0
        if not rows:
            return
        _flushing.active = True
        try:
            self._store(rows)
        finally:
            _flushing.active = False

    def _store(self, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows``; when the batch is refused, each row alone, so that one row
        the database cannot take (too long for a MySQL ``TEXT``, say) loses only itself."""
        try:
            self.store.append_logs(rows)
            return
        except Exception:
            if len(rows) == 1:
                log.warning("could not store the output of job %s", self.job_id, exc_info=True)
                return
        for row in rows:
            try:
                self.store.append_logs([row])
            except Exception as exc:
                log.warning(
                    "could not store %d characters of the %s output of job %s: %s",
                    len(row["text"]),
                    row["stream"],
                    self.job_id,
                    exc,
                )


def _capturing() -> JobOutput | None:
    """The current job's buffer, unless this thread is storing output right now."""
    if getattr(_flushing, "active", False):
        return None
    return _current.get()


class _StreamProxy:
    """Stands in for ``sys.stdout``/``sys.stderr``: job output to its job, the rest through."""

    def __init__(self, original: TextIO, name: str) -> None:
        self._nbjobs_original = original
        self._nbjobs_name = name

    def write(self, text: str) -> int:
        output = _capturing()
        if output is None:
            return self._nbjobs_original.write(text)
        if sys._getframe(1).f_code is _STREAM_EMIT:
            return len(text)  # a log line the record factory has captured already
        output.add(self._nbjobs_name, text)
        if output.tee:
            return self._nbjobs_original.write(text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._nbjobs_original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nbjobs_original, name)


def _install_streams() -> None:
    """Put the proxies in place; again if something (pytest, a kernel) replaced them."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _StreamProxy):
            proxy = _StreamProxy(stream, name)
            setattr(sys, name, proxy)
            _rebind_handlers(stream, proxy)


def _rebind_handlers(stream: TextIO, proxy: _StreamProxy) -> None:
    """Point console log handlers made before the proxy (``basicConfig``) at the proxy.

    Outside jobs they write exactly as before; inside a job their line is not shown in
    the console, because the record factory has already stored it in the job's log.
    """
    loggers = [logging.getLogger()] + [
        lg
        for lg in list(logging.Logger.manager.loggerDict.values())
        if isinstance(lg, logging.Logger)
    ]
    for logger in loggers:
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler and handler.stream is stream:
                handler.setStream(proxy)


def _install_record_factory() -> None:
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_nbjobs_capture", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        output = _capturing()
        if output is not None:
            try:
                text = f"{record.levelname} {record.name}: {record.getMessage()}\n"
                if record.exc_info:
                    text += _formatter.formatException(record.exc_info) + "\n"
            except Exception:
                text = f"{record.levelname} {record.name}: {record.msg!r}\n"
            output.add("log", text)
        return record

    factory._nbjobs_capture = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def install() -> None:
    """Install the stream proxies and the record factory (idempotent, cheap)."""
    if (
        isinstance(sys.stdout, _StreamProxy)
        and isinstance(sys.stderr, _StreamProxy)
        and getattr(logging.getLogRecordFactory(), "_nbjobs_capture", False)
    ):
        return
    with _install_lock:
        _install_streams()
        _install_record_factory()


@contextlib.contextmanager
def job_output(store: Store, clock: Clock, job: ClaimedJob, *, tee: bool) -> Iterator[JobOutput]:
    """Route this context's output to ``job``'s buffer while the block runs; ``tee``
    shows it as well (``wf.run``, whose caller watches)."""
    install()
    output = JobOutput(store, clock, job, tee=tee)
    token = _current.set(output)
    try:
        yield output
    finally:
        _current.reset(token)
        output.flush(final=True)


def log_outside(
    logger: logging.Logger, level: int, msg: str, *args: Any, in_job: bool = False
) -> None:
    """Log a line about the current job to the process's handlers (the worker's log).

    A record made in a job's context goes only to that job's captured output, so a
    worker's own lines about the job (failures, retries, replay warnings) are made
    outside it, in an empty context; ``in_job`` copies the line into the job's output
    too (for warnings about the run itself; failures are in its attempts already).
    """
    output = _capturing() if in_job else None
    contextvars.Context().run(logger.log, level, msg, *args)
    if output is not None and logger.isEnabledFor(level):
        output.add("log", f"{logging.getLevelName(level)} {logger.name}: {msg % args}\n")


def current_output() -> JobOutput | None:
    """The output buffer of the job running in this context, if any (a notebook run
    adds its cells' outputs to it)."""
    return _current.get()


def flush() -> None:
    """Store the current job's output now, truncation note included: the outcome is
    recorded next, and whoever waits for it must find every line already stored."""
    output = _current.get()
    if output is not None:
        output.flush(final=True)
