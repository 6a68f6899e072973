"""A lean path for nbjobs' own spans over the OpenTelemetry SDK's ``TracerProvider``.

The SDK's ``Tracer.start_span`` and ``Span.end`` cost about 30 µs per recorded span
(locks, ``BoundedAttributes`` that clean each value, ``on_start``/``_on_ending`` calls
to every span processor, a ``ReadableSpan`` copy): as much as a no-op job's claim and
commit on SQLite.  nbjobs' spans need little of that: a few attributes it knows are
clean, no links, an event only when a run fails.  So when the provider is the SDK's,
:class:`LeanTracer` makes them itself, doing what ``Tracer.start_span`` does and no
more:

* the parent's context, the provider's sampler (its decision, attributes and trace
  state), its id generator and its tracer configurator (a disabled tracer's spans are
  non-recording) are asked as the SDK asks them; a span the sampler drops is a
  ``NonRecordingSpan`` with the new span's context, as from the SDK;
* a recording span is a :class:`LeanSpan`, an ``opentelemetry.trace.Span`` and an SDK
  ``ReadableSpan`` that keeps its name, times, attributes, events and status in plain
  fields (user code that sets an attribute on the current span, or records an
  exception, still can; values other than a plain ``str``/``bool``/``int``/``float``
  go through the SDK's ``BoundedAttributes`` and its span limits);
* at the end, the span itself (resource, instrumentation scope, parent, kind, status,
  attributes, events: all a ``ReadableSpan`` has; its setters refuse from then on) goes
  to the provider's span processors' ``on_end``, where the SDK's ``Span.end`` hands a
  ``ReadableSpan`` copy, and the SDK's own span metrics are counted.

Only when it is safe: the tracer must be exactly the SDK's ``Tracer``, its span processor
a ``SynchronousMultiSpanProcessor`` (the SDK's default), and every processor in it one
that does nothing at ``on_start`` and ``_on_ending`` (``BatchSpanProcessor``,
``SimpleSpanProcessor``, or any that does not override them), since those two receive
the SDK's mutable span.  Otherwise, and for every span whenever a processor that needs
them is added, the SDK makes the span as usual.  The SDK internals it reads are in
:data:`PRIVATE`; if one is missing (a later SDK), the lean path is never used and the
SDK makes every span (said in the log at INFO).  ``tests/test_tracing.py`` compares the
two paths' spans field by field, so an SDK that changes what a span holds fails there.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping
from time import time_ns
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace import (
    Event,
    ReadableSpan,
    SpanProcessor,
    SynchronousMultiSpanProcessor,
)
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Decision, ParentBased
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.version import __version__ as _sdk_version
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

log = logging.getLogger(__name__)

#: What the lean path reads of the SDK that is not its public API: on the SDK's
#: ``Tracer``, the instrumentation scope, span limits, span metrics and whether a
#: tracer configurator disabled it; on its ``SynchronousMultiSpanProcessor``, the
#: processors (to check that they only need ``on_end``).
PRIVATE = (
    "Tracer._instrumentation_scope",
    "Tracer._span_limits",
    "Tracer._tracer_metrics",
    "Tracer._is_enabled",
    "SynchronousMultiSpanProcessor._span_processors",
)
# Also read, with a default: which sampler ``ParentBased`` asks for a parent
# (``_local_parent_sampled`` and the like; without them, the sampler is asked as any
# other is), and ``opentelemetry.sdk.trace._tracer_metrics.NoOpTracerMetrics`` (without
# it, the SDK's span metrics are asked for every span, on or off).  And it sets the
# attributes' ``BoundedAttributes._immutable`` at a span's end, as the SDK's does.

#: Values set as they are while the span limits allow it: what nbjobs' attributes are.
_PLAIN = frozenset({str, bool, int, float})
#: How many attributes a span keeps in a plain dict before it turns into the SDK's
#: ``BoundedAttributes`` (and its limit of attributes).
_PLAIN_MAX = 32

_UNSET = Status(StatusCode.UNSET)  # immutable: shared, as the SDK's ReadableSpan does
_SAMPLE = Decision.RECORD_AND_SAMPLE
_DROP = Decision.DROP
#: ``ParentBased``'s sampler for a parent (remote?, sampled?): private attributes, read
#: with a default (a later SDK without them has every span asked to its sampler).
_DELEGATES = {
    (True, True): "_remote_parent_sampled",
    (True, False): "_remote_parent_not_sampled",
    (False, True): "_local_parent_sampled",
    (False, False): "_local_parent_not_sampled",
}

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_DEFAULT = TraceFlags(TraceFlags.DEFAULT)
_RANDOM = getattr(TraceFlags, "RANDOM_TRACE_ID", None)  # newer SDKs set it; older, not
_FLAGS = {
    (False, False): _DEFAULT,
    (True, False): _SAMPLED,
    (False, True): TraceFlags(TraceFlags.DEFAULT | (_RANDOM or 0)),
    (True, True): TraceFlags(TraceFlags.SAMPLED | (_RANDOM or 0)),
}

#: ``on_start`` and ``_on_ending`` that do nothing: a processor with these sees only
#: the finished span.
_NOTHING = frozenset(
    getattr(cls, method, None)
    for cls in (SpanProcessor, BatchSpanProcessor, SimpleSpanProcessor)
    for method in ("on_start", "_on_ending")
)


try:  # the SDK's span metrics when off (newer SDKs); older: asked for every span
    from opentelemetry.sdk.trace._tracer_metrics import NoOpTracerMetrics as _NoOpTracerMetrics
except ImportError:  # pragma: no cover
    _NoOpTracerMetrics = None  # type: ignore[assignment,misc]


#: The SDK releases the lean path was checked against (``tests/test_tracing.py``
#: compares its spans with the SDK's field by field): it reads SDK internals, so with
#: any other release the SDK makes the spans.
TESTED_SDK_RELEASES = ("1.45.",)


def lean_tracer(tracer: Any) -> LeanTracer | None:
    """A lean tracer over ``tracer``, or None when it is not the SDK's, or the SDK is a
    release the lean path was not checked against (or lacks the internals it reads)."""
    if type(tracer) is not sdk_trace.Tracer:
        return None
    if not _sdk_version.startswith(TESTED_SDK_RELEASES):
        log.info(
            "tracing: nbjobs' lean spans are checked against OpenTelemetry SDK %s only; "
            "with %s the SDK makes them (correct, slower)",
            " ".join(f"{r}x" for r in TESTED_SDK_RELEASES),
            _sdk_version,
        )
        return None
    missing = [
        name
        for name in PRIVATE
        if not hasattr(
            tracer if name.startswith("Tracer.") else tracer.span_processor,
            name.split(".", 1)[1],
        )
    ]
    if missing or not hasattr(tracer, "id_generator") or not hasattr(tracer, "sampler"):
        log.info(
            "tracing: this OpenTelemetry SDK lacks %s; nbjobs' spans are made by the SDK "
            "(correct, slower)",
            ", ".join(missing) or "Tracer.id_generator",
        )
        return None
    return LeanTracer(tracer)


def _end_only(processor: Any) -> bool:
    kind = type(processor)
    return (
        getattr(kind, "on_start", None) in _NOTHING
        and getattr(kind, "_on_ending", None) in _NOTHING
    )


class LeanTracer:
    """``start_span`` as the SDK's tracer's, lean when its processors allow."""

    __slots__ = ("_lean", "_processors", "limits", "metrics", "plain", "sdk")

    def __init__(self, sdk: Any) -> None:
        self.sdk = sdk
        self._processors: Any = None  # the processors last checked, and the verdict
        self._lean = False
        #: The tracer's span limits (fixed when the SDK made it), and whether they let
        #: a span keep its attributes in a plain dict.
        self.limits = limits = sdk._span_limits
        most = limits.max_span_attributes
        self.plain = limits.max_span_attribute_length is None and (
            most is None or most >= _PLAIN_MAX
        )
        #: The SDK's own span metrics, None when off (its default).
        metrics = sdk._tracer_metrics
        self.metrics = None if type(metrics) is _NoOpTracerMetrics else metrics

    def lean(self) -> bool:
        """Whether the lean path may be taken now (processors can be added any time)."""
        processor = self.sdk.span_processor
        processors = getattr(processor, "_span_processors", None)
        if processors is not self._processors:
            self._lean = (
                type(processor) is SynchronousMultiSpanProcessor
                and isinstance(processors, tuple)
                and all(_end_only(p) for p in processors)
            )
            self._processors = processors
        return self._lean

    def start_span(
        self,
        name: str,
        context: Any = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: dict[str, Any] | None = None,
    ) -> Any:
        """What ``opentelemetry.sdk.trace.Tracer.start_span`` returns (not started as
        current), without links, start time or exception options.  A recording span
        keeps ``attributes`` (the caller's own dict, which it no longer changes)."""
        sdk = self.sdk
        if (not self._lean or sdk.span_processor._span_processors is not self._processors) and (
            not self.lean()
        ):
            return sdk.start_span(name, context=context, kind=kind, attributes=attributes)
        parent: SpanContext | None = trace_api.get_current_span(context).get_span_context()
        if not sdk._is_enabled():
            return NonRecordingSpan(parent)  # type: ignore[arg-type]
        ids = sdk.id_generator
        if parent is None or not parent.is_valid:
            parent = None
            trace_id = ids.generate_trace_id()
            random = _RANDOM is not None and ids.is_trace_id_random()
        else:
            trace_id = parent.trace_id
            random = _RANDOM is not None and bool(parent.trace_flags & _RANDOM)
        sampler = sdk.sampler
        decision = None
        if parent is not None and type(sampler) is ParentBased:
            # The default sampler, and the usual one: with a parent, it asks the
            # sampler its parent's kind and flag call for; ALWAYS_ON and ALWAYS_OFF
            # (its defaults for a parent) answer without asking.
            sampled = parent.trace_flags.sampled
            delegate = getattr(sampler, _DELEGATES[parent.is_remote, sampled], None)
            if delegate is ALWAYS_ON or delegate is ALWAYS_OFF:
                decision = _SAMPLE if delegate is ALWAYS_ON else _DROP
                trace_state = parent.trace_state
        if decision is None:
            result = sampler.should_sample(context, trace_id, name, kind, attributes, ())
            decision, trace_state = result.decision, result.trace_state
            attributes = dict(result.attributes)
        span_context = SpanContext(
            trace_id,
            ids.generate_span_id(),
            is_remote=False,
            trace_flags=_FLAGS[decision is _SAMPLE or decision.is_sampled(), random],
            trace_state=trace_state,
        )
        metrics = self.metrics
        ended = None if metrics is None else metrics.start_span(parent, decision)
        if decision is _DROP or not decision.is_recording():
            return NonRecordingSpan(span_context)
        return LeanSpan(self, name, span_context, parent, kind, attributes, ended)


class LeanSpan(trace_api.Span, ReadableSpan):
    """A recording span of :class:`LeanTracer`: an API span with the fields (and so the
    read-only properties) of an SDK ``ReadableSpan``, as the SDK's ``Span`` is, handed
    to the span processors at :meth:`end`."""

    def __init__(
        self,
        tracer: LeanTracer,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, Any] | None,
        ended: Any,
    ) -> None:
        self._tracer = tracer
        sdk = tracer.sdk
        self._resource = sdk.resource
        self._instrumentation_info = sdk.instrumentation_info
        self._instrumentation_scope = sdk._instrumentation_scope
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._ended = ended
        self._limits = tracer.limits
        self._plain = True  # a dict, until a value or the limits need BoundedAttributes
        self._attributes: Any = {} if attributes is None else attributes
        if not tracer.plain or not _PLAIN.issuperset(map(type, self._attributes.values())):
            self._bound()
        self._events: Any = ()
        self._links: Any = ()
        self._status = _UNSET
        self._end_time: int | None = None
        self._start_time = time_ns()

    def _bound(self) -> BoundedAttributes:
        """The attributes as the SDK keeps them (values cleaned, limits applied)."""
        if self._plain:
            self._plain = False
            limits = self._limits
            self._attributes = BoundedAttributes(
                limits.max_span_attributes,
                self._attributes,
                immutable=False,
                max_value_len=limits.max_span_attribute_length,
            )
        return self._attributes

    def _ended_warning(self, what: str) -> bool:
        if self._end_time is None:
            return False
        log.warning("Tried calling %s on an ended span.", what)
        return True

    def get_span_context(self) -> SpanContext:
        return self._context  # type: ignore[return-value]  # never None here

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attribute(self, key: str, value: Any) -> None:
        if self._end_time is not None:
            self._ended_warning("set_attribute")
            return
        attributes = self._attributes
        if (
            self._plain
            and type(value) in _PLAIN
            and type(key) is str
            and key
            and (key in attributes or len(attributes) < _PLAIN_MAX)
        ):
            attributes[key] = value
        else:
            self._bound()[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(self, name: str, attributes: Any = None, timestamp: int | None = None) -> None:
        if self._ended_warning("add_event"):
            return
        limits = self._limits
        if not self._events:
            self._events = BoundedList(limits.max_events)
        bounded = self._frozen(limits.max_event_attributes, attributes)
        self._events.append(Event(name=name, attributes=bounded, timestamp=timestamp))

    def add_link(self, context: SpanContext, attributes: Any = None) -> None:
        if self._ended_warning("add_link"):
            return
        if not (context and (context.is_valid or attributes or context.trace_state)):
            return
        limits = self._limits
        if not self._links:
            self._links = BoundedList(limits.max_links)
        self._links.append(Link(context, self._frozen(limits.max_link_attributes, attributes)))

    def _frozen(self, most: int | None, attributes: Any) -> BoundedAttributes:
        """An event's or a link's attributes, bounded as the span limits say."""
        return BoundedAttributes(
            most, attributes, max_value_len=self._limits.max_attribute_length, immutable=True
        )

    def update_name(self, name: str) -> None:
        if not self._ended_warning("update_name"):
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._ended_warning("set_status"):
            return
        if self._status.status_code is StatusCode.OK:
            return  # the SDK's rule: an OK status is final
        if isinstance(status, Status):
            if status.status_code is not StatusCode.UNSET:
                self._status = status
        elif status is not StatusCode.UNSET:
            self._status = Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: Any = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        kind = type(exception)
        module, qualname = kind.__module__, kind.__qualname__
        found: dict[str, Any] = {
            "exception.type": f"{module}.{qualname}"
            if module and module != "builtins"
            else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            found.update(attributes)
        self.add_event("exception", found, timestamp)

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None and self.is_recording():
            self.record_exception(exc, escaped=True)
            self.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        super().__exit__(kind, exc, tb)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            log.warning("Calling end() on an ended span.")
            return
        self._end_time = end_time = time_ns() if end_time is None else end_time
        attributes = self._attributes
        if not self._plain:
            attributes._immutable = True  # as the SDK's Span.end makes them
        if self._ended is not None:
            self._ended()
        # Ended, the span changes no more (its setters refuse): it is handed on itself,
        # where the SDK's Span hands on a ReadableSpan copy of its fields.
        self._tracer.sdk.span_processor.on_end(self)

    def __repr__(self) -> str:
        return f'LeanSpan(name="{self._name}", context={self._context})'
