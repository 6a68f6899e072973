"""OpenTelemetry tracing of jobs: a span per submit, per attempt and per step.

A job's trace context (the fields of the configured propagator, W3C ``traceparent``
and ``tracestate`` by default, as JSON) is stored in its row at submit
(``nbjobs_jobs.trace_context``), from a ``submit {workflow}`` span made there; each
attempt's ``run {workflow}`` span continues it, wherever the attempt runs, so retries
and the runs after a durable wait are in the submit's trace.  A fan-out child's context
is its parent's attempt span, so a workflow tree is one trace.  Inside an attempt, each
checkpoint that runs gets a ``step {name}`` span (a replayed one, which does not run,
gets none) and each durable wait a ``sleep``/``signal``/``fan_out {name}`` span; the
attempt's and the step's spans are current while user code runs, so spans user code
makes (an HTTP client's, a database driver's) nest under them.

When is tracing on?  ``App(tracing=...)``:

* ``None`` (the default): on once OpenTelemetry's API is imported and a tracer provider
  is set (``trace.set_tracer_provider(...)``, or ``opentelemetry-instrument``), as with
  libraries instrumented natively.  The test reads ``sys.modules`` and never imports
  OpenTelemetry itself, so an application that does not use it pays nothing: no import,
  and one dictionary look-up per submit and per attempt.  A provider set after the App
  was made counts within ``CHECK_SECONDS`` (at the next submit or attempt after it).
* ``True``: on, and OpenTelemetry must be installed (``pip install nbjobs[tracing]``);
  with no provider set, its spans go to OpenTelemetry's no-op provider.
* ``False``: off, whatever is configured.
* a ``TracerProvider``: on, with that provider rather than the global one (as
  OpenTelemetry's instrumentors take ``tracer_provider=``).

With tracing off, every hook in the engine is one ``is None`` test.  With the
OpenTelemetry SDK's provider, nbjobs makes its spans itself, the same spans at a
fraction of the SDK's cost (``tracing_sdk``; ``LEAN``), and reads and writes a plain W3C
context without the propagator.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ConfigurationError, _Cancelled, _LeaseLost, _Suspend

if TYPE_CHECKING:
    from ..store import ClaimedJob

log = logging.getLogger(__name__)

#: The instrumentation scope of nbjobs' spans (``tracer_provider.get_tracer(SCOPE)``).
SCOPE = "nbjobs"

#: Attribute names, one namespace (OpenTelemetry's convention for a library's own).
JOB_ID = "nbjobs.job_id"
WORKFLOW = "nbjobs.workflow"
ATTEMPT = "nbjobs.attempt"
QUEUE = "nbjobs.queue"
PARENT_ID = "nbjobs.parent_id"
STEP = "nbjobs.step"
CACHED = "nbjobs.cached"
OUTCOME = "nbjobs.outcome"
WAIT = "nbjobs.wait"
COUNT = "nbjobs.count"
SCHEDULE = "nbjobs.schedule"

#: With ``tracing=None``, how often (seconds) a process that imported OpenTelemetry but
#: set no tracer provider asks again whether one is set now.
CHECK_SECONDS = 1.0

#: Whether nbjobs makes its spans itself when the provider is the OpenTelemetry SDK's
#: (``tracing_sdk``: the same spans, a fraction of the cost), rather than through the
#: SDK's ``Tracer.start_span``.  Read when an App's tracing turns on.
LEAN = True

#: A lone traceparent of version 00, stored as ``Tracer.carrier`` writes it (and as
#: ``json.dumps`` does): trace id, span id, flags.
_STORED = re.compile(r'\{"traceparent": "00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})"\}')

#: Outcomes that mark a span as an error.
_ERRORS = frozenset({"failed", "retrying"})


class TracerProvider(Protocol):
    """What ``App(tracing=...)`` takes besides a bool: an OpenTelemetry tracer provider
    (``opentelemetry.sdk.trace.TracerProvider``), used instead of the global one."""

    def get_tracer(self, *args: Any, **kwargs: Any) -> Any: ...


class Tracing:
    """Whether this App traces, and its tracer once it does (see the module docstring)."""

    def __init__(self, enabled: bool | TracerProvider | None = None) -> None:
        provider = None
        if enabled is not None and not isinstance(enabled, bool):
            if not callable(getattr(enabled, "get_tracer", None)):
                raise ConfigurationError(
                    "tracing= takes True, False, None (on when OpenTelemetry is "
                    f"configured) or an OpenTelemetry TracerProvider, got {enabled!r}"
                )
            provider, enabled = enabled, True
        self.enabled = enabled
        self._tracer: Tracer | None = None
        self._next_check = float("-inf")
        if enabled:
            self._tracer = Tracer(provider)

    def active(self) -> Tracer | None:
        """The tracer, or None while tracing is off: the one test on the hot paths."""
        if self._tracer is not None or self.enabled is not None:
            return self._tracer
        trace = sys.modules.get("opentelemetry.trace")
        if trace is None:
            return None
        # Imported (by the application, or a library) but maybe with no provider set:
        # asking OpenTelemetry costs microseconds, so ask at most every CHECK_SECONDS.
        now = time.monotonic()
        if now < self._next_check:
            return None
        self._next_check = now + CHECK_SECONDS
        if _default_provider(trace):
            return None
        self._tracer = Tracer()
        return self._tracer

    def submitting(
        self, workflow: str, queue: str, count: int | None = None
    ) -> contextlib.AbstractContextManager[Submit | None]:
        """A submit's span (see ``Tracer.submitting``), or None while tracing is off."""
        tracer = self.active()
        if tracer is None:
            return contextlib.nullcontext()
        return tracer.submitting(workflow, queue, count)

    def attempt(self, job: ClaimedJob, workflow: str) -> AttemptSpan | None:
        """The span of an attempt of ``job`` (started when entered), or None."""
        tracer = self.active()
        return None if tracer is None else AttemptSpan(tracer, job, workflow)


def _default_provider(trace: Any) -> bool:
    """Whether no tracer provider was set (OpenTelemetry's proxy or no-op stands in)."""
    provider = trace.get_tracer_provider()
    return isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


class Tracer:
    """nbjobs' spans over the OpenTelemetry API (imported here, when tracing turns on)."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        try:
            from opentelemetry import baggage, context, propagate, trace
        except ImportError:
            raise ConfigurationError(
                "tracing=True needs OpenTelemetry: pip install 'nbjobs[tracing]' (or "
                "opentelemetry-api and opentelemetry-sdk)"
            ) from None
        from .. import __version__

        self.baggage = baggage
        self.context = context
        self.propagate = propagate
        self.trace = trace
        if provider is None:
            self.tracer = trace.get_tracer(SCOPE, __version__)
        else:
            self.tracer = provider.get_tracer(SCOPE, __version__)
        self._textmap: Any = None  # the global propagator last checked, and the verdict
        self._w3c = False
        #: ``start_span(name, context=None, kind=INTERNAL, attributes=None)``: the
        #: tracer's, or the lean path's over the SDK's (see ``tracing_sdk``).
        self.start_span: Any = self.tracer.start_span
        if LEAN and "opentelemetry.sdk.trace" in sys.modules:
            from .tracing_sdk import lean_tracer

            lean = lean_tracer(self.tracer)
            if lean is not None:
                self.start_span = lean.start_span

    def _plain_w3c(self) -> bool:
        """Whether the global propagator is OpenTelemetry's default (W3C trace context
        and baggage), which :meth:`carrier` and :meth:`extract` may stand in for (the
        propagator can be changed any time: asked once per propagator object)."""
        textmap = self.propagate.get_global_textmap()
        if textmap is not self._textmap:
            from opentelemetry.baggage.propagation import W3CBaggagePropagator
            from opentelemetry.propagators.composite import CompositePropagator
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )

            # CompositePropagator's parts are private: without them, the propagator.
            parts = getattr(textmap, "_propagators", None)
            self._w3c = type(textmap) is TraceContextTextMapPropagator or (
                type(textmap) is CompositePropagator
                and isinstance(parts, (list, tuple))
                and [type(part) for part in parts]
                == [TraceContextTextMapPropagator, W3CBaggagePropagator]
            )
            self._textmap = textmap
        return self._w3c

    def carrier(self, ctx: Any) -> str | None:
        """``ctx`` as the propagator's fields in JSON (None when it has none)."""
        if self._plain_w3c() and not self.baggage.get_all(ctx):
            # What the W3C propagator writes for a context without baggage or trace
            # state (nbjobs' own spans' usually), in the JSON form stored.
            span_context = self.trace.get_current_span(ctx).get_span_context()
            if span_context == self.trace.INVALID_SPAN_CONTEXT:
                return None
            if not span_context.trace_state:
                return (
                    f'{{"traceparent": "00-{span_context.trace_id:032x}-'
                    f'{span_context.span_id:016x}-{span_context.trace_flags:02x}"}}'
                )
        fields: dict[str, str] = {}
        try:
            self.propagate.inject(fields, context=ctx)
            return json.dumps(fields, sort_keys=True) if fields else None
        except Exception:
            _failed("could not write a trace context (the propagator failed)")
            return None

    def extract(self, text: str | None) -> Any:
        """The context stored as ``text`` (the current one if None or unreadable)."""
        if not text:
            return None
        stored = _STORED.fullmatch(text) if self._plain_w3c() else None
        if stored is not None:
            # What the W3C propagator makes of a lone version-00 traceparent, as
            # carrier() stores it, without the JSON parser or the propagator.
            trace_id, span_id = int(stored[1], 16), int(stored[2], 16)
            if trace_id and span_id:
                trace = self.trace
                flags = trace.TraceFlags(int(stored[3], 16))
                remote = trace.SpanContext(trace_id, span_id, True, flags)
                empty = self.context.Context()
                return trace.set_span_in_context(trace.NonRecordingSpan(remote), empty)
        try:
            fields = json.loads(text)
        except ValueError:
            fields = None
        if not isinstance(fields, dict):
            log.debug("ignoring an unreadable trace context %r", text[:100])
            return None
        try:
            return self.propagate.extract(fields)
        except Exception:
            _failed("could not read a job's trace context (the propagator failed)")
            return None

    @contextlib.contextmanager
    def submitting(
        self, workflow: str, queue: str | None = None, count: int | None = None
    ) -> Iterator[Submit]:
        """A ``submit {workflow}`` span around a submit; yields what to store and set.

        ``count``: a group of that many jobs, submitted in one transaction, all
        continuing this one span.
        """
        attributes: dict[str, Any] = {WORKFLOW: workflow}
        if queue is not None:
            attributes[QUEUE] = queue
        if count is not None:
            attributes[COUNT] = count
        kind = self.trace.SpanKind.PRODUCER
        span = self.start_span(f"submit {workflow}", kind=kind, attributes=attributes)
        with self.trace.use_span(span, end_on_exit=True):
            yield Submit(span, self.carrier(self.trace.set_span_in_context(span)))


class Submit:
    """A submit in progress: the trace context its job stores, and its span."""

    __slots__ = ("carrier", "span")

    def __init__(self, span: Any, carrier: str | None) -> None:
        self.span = span
        self.carrier = carrier

    def submitted(self, *job_ids: str) -> None:
        """The job (or the jobs, several cron ticks) the submit made."""
        if len(job_ids) == 1:
            self.span.set_attribute(JOB_ID, job_ids[0])
        else:
            self.span.set_attribute(COUNT, len(job_ids))

    def scheduled(self, schedule: str) -> None:
        """The submit is a cron schedule's tick (or its run now)."""
        self.span.set_attribute(SCHEDULE, schedule)


class AttemptSpan:
    """The span of one attempt, made current while the workflow runs (``with``).

    The execution reports its outcome (:meth:`outcome`), the call state makes the step
    and wait spans (:meth:`step`, :meth:`wait`) and stores :meth:`carrier` in the
    rows of fan-out children.
    """

    def __init__(self, tracer: Tracer, job: ClaimedJob, workflow: str) -> None:
        self._tracer = tracer
        self._job = job
        self._workflow = workflow
        self._attributes: dict[str, Any] = {
            JOB_ID: job.id,
            WORKFLOW: workflow,
            ATTEMPT: job.attempt,
        }
        self._span: Any = None
        self._token: Any = None
        self._outcome: str | None = None
        self._carrier: str | None = None

    def __enter__(self) -> AttemptSpan:
        tracer, job = self._tracer, self._job
        attributes: dict[str, Any] = dict(self._attributes, **{QUEUE: job.queue})
        if job.parent_id is not None:
            attributes[PARENT_ID] = job.parent_id
        try:
            self._span = tracer.start_span(
                f"run {self._workflow}",
                context=tracer.extract(job.trace_context),
                kind=tracer.trace.SpanKind.CONSUMER,
                attributes=attributes,
            )
            self._token = tracer.context.attach(tracer.trace.set_span_in_context(self._span))
        except Exception:
            _failed("could not start an attempt's span; the attempt runs untraced")
            self._span = None
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._span is None:
            return
        try:
            self._tracer.context.detach(self._token)
            if exc_info[1] is not None:
                self.outcome("released")  # KeyboardInterrupt, SystemExit: given back
            self._span.end()
        except Exception:
            _failed("could not end an attempt's span")

    def outcome(self, outcome: str, error: BaseException | str | None = None) -> None:
        """Set the attempt's outcome (the first one reported counts: a timeout recorded
        by the monitor is not overwritten by the stopped run's) and record ``error``."""
        if self._outcome is not None or self._span is None:
            return
        self._outcome = outcome
        _finish(self._tracer, self._span, outcome, error)

    def carrier(self) -> str | None:
        """This attempt's context as a fan-out child stores it."""
        if self._carrier is None and self._span is not None:
            ctx = self._tracer.trace.set_span_in_context(self._span)
            self._carrier = self._tracer.carrier(ctx)
        return self._carrier

    def step(self, name: str, *, cached: bool = False) -> StepSpan:
        """The span of a checkpoint that runs, as a context manager (``cached``: served
        from a cache of steps instead of run; the step's code may also set
        ``StepSpan.cached`` once it knows)."""
        return StepSpan(self._tracer, f"step {name}", {**self._attributes, STEP: name}, cached)

    def wait(self, kind: str, name: str) -> StepSpan:
        """The span of a durable wait (``sleep``, ``signal`` or ``fan_out``)."""
        attributes = {**self._attributes, STEP: name, WAIT: kind}
        return StepSpan(self._tracer, f"{kind} {name}", attributes, None)


#: The outcome of a step or wait span that an internal signal ended.
_SIGNALS = ((_Suspend, "suspended"), (_Cancelled, "cancelled"), (_LeaseLost, "lost"))


class StepSpan:
    """The span of a step or a wait, current while it runs (``with``).

    A class rather than a generator: a step's span is the one piece of tracing paid per
    step, so it makes one span and one context switch and nothing more.  ``cached``
    (None for a wait) may be changed until the step ends.
    """

    __slots__ = ("_attributes", "_name", "_span", "_token", "_tracer", "cached", "outcome")

    def __init__(
        self, tracer: Tracer, name: str, attributes: dict[str, Any], cached: bool | None
    ) -> None:
        self._tracer = tracer
        self._name = name
        self._attributes = attributes
        self.cached = cached
        self.outcome = "succeeded"
        self._span: Any = None
        self._token: Any = None

    def __enter__(self) -> StepSpan:
        tracer = self._tracer
        if self.cached is not None:
            self._attributes[CACHED] = self.cached
        try:
            self._span = tracer.start_span(self._name, attributes=self._attributes)
            self._token = tracer.context.attach(tracer.trace.set_span_in_context(self._span))
        except Exception:
            _failed("could not start a step's span; the step runs untraced")
            self._span = None
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, _tb: Any) -> None:
        if self._span is not None:
            try:
                self._end(exc)
            except Exception:
                _failed("could not end a step's span")

    def _end(self, exc: BaseException | None) -> None:
        tracer, span = self._tracer, self._span
        tracer.context.detach(self._token)
        if exc is not None:
            self.outcome = "released"  # KeyboardInterrupt, SystemExit
            for signal, outcome in _SIGNALS:
                if isinstance(exc, signal):
                    self.outcome = outcome
            if isinstance(exc, Exception):
                self.outcome = "failed"
        if self.cached is not None and self.cached != self._attributes.get(CACHED):
            span.set_attribute(CACHED, self.cached)
        if self.outcome == "failed":
            _finish(tracer, span, "failed", exc)
        else:
            span.set_attribute(OUTCOME, self.outcome)
        span.end()


_warned = False


def _failed(what: str) -> None:
    """Log a failure of tracing itself: never the job's failure (the run goes on
    untraced), said once per process as a warning with its traceback, then at debug
    level."""
    global _warned
    level = logging.DEBUG if _warned else logging.WARNING
    _warned = True
    log.log(level, "tracing: %s", what, exc_info=True)


def _finish(tracer: Tracer, span: Any, outcome: str, error: BaseException | str | None) -> None:
    """Set ``outcome`` on ``span``; a failure records its exception and an error status."""
    span.set_attribute(OUTCOME, outcome)
    if outcome not in _ERRORS:
        return
    if isinstance(error, BaseException):
        span.record_exception(error)
        description = f"{type(error).__name__}: {error}"
    else:
        description = error or outcome
    status = tracer.trace.Status(tracer.trace.StatusCode.ERROR, description[:500])
    span.set_status(status)
