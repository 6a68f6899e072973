"""A worker app for the tracing tests: ``nbjobs worker tests.apps.tracing_app:app``.

It configures OpenTelemetry the way an application does (a global tracer provider, set
before nbjobs sees a job) and exports each finished span at once, as one JSON line, to
the file ``NBJOBS_TRACE_FILE`` names, with this process's id.  The App is made with the
default ``tracing=None``: tracing turns on because a provider is set.

Workflows: ``tree`` fans out ``leaf`` children; each leaf holds its slot a moment, so
that two worker processes each run some.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

import nbjobs


class JsonLinesExporter(SpanExporter):
    """Appends each span to a file, one JSON object a line (ids in hex)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            context = span.get_span_context()
            assert context is not None
            lines.append(
                json.dumps(
                    {
                        "pid": os.getpid(),
                        "name": span.name,
                        "trace_id": f"{context.trace_id:032x}",
                        "span_id": f"{context.span_id:016x}",
                        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                        "attributes": dict(span.attributes or {}),
                    }
                )
            )
        with self.lock, open(self.path, "a") as out:
            out.write("".join(line + "\n" for line in lines))
        return SpanExportResult.SUCCESS


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(os.environ["NBJOBS_TRACE_FILE"])))
trace.set_tracer_provider(provider)

app = nbjobs.App(
    os.environ["NBJOBS_URL"], heartbeat_seconds=0.2, stale_after_seconds=5.0, poll_seconds=0.05
)


@app.workflow(name="leaf")
def leaf(cs: nbjobs.CallState, n: int) -> int:
    return cs.checkpoint("square", lambda: time.sleep(0.3) or n * n)


@app.workflow(name="tree")
def tree(cs: nbjobs.CallState, n: int) -> list[int]:
    base = cs.checkpoint("plan", lambda: list(range(n)))
    outcomes = cs.fan_out("leaves", [leaf.spec(i) for i in base])
    return [o.value for o in outcomes]
