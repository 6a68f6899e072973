"""OpenTelemetry tracing: spans per submit, attempt and step, collected with the SDK's
in-memory exporter; one trace over retries, a suspension and a fan-out that runs in two
worker processes; and nothing imported or stored while tracing is off."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import StatusCode, TraceState

import nbjobs
from nbjobs.errors import _Suspend
from nbjobs.runtime import tracing as nbjobs_tracing
from nbjobs.runtime.tracing import Tracing
from nbjobs.runtime.tracing_sdk import PRIVATE, LeanTracer
from nbjobs.schema import jobs
from nbjobs.store.jobs import ClaimedJob
from tests import backends
from tests.conftest import make_app
from tests.support import ROOT, wait_until, worker_process

TIMEOUT = 60


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """A tracer provider of this test only (never the global one, which other tests in
    this process would then trace with), exporting each span as it ends."""
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield tracer_provider
    tracer_provider.shutdown()


@pytest.fixture
def traced(db_url: str, provider: TracerProvider) -> Iterator[nbjobs.App]:
    """An App on each backend that traces with ``provider``.  Its leases are long: the
    tests count spans exactly, and a heartbeat late by a second on a loaded machine would
    otherwise reclaim a job (one more attempt span, outcome ``lost``)."""
    application = make_app(db_url, tracing=provider, stale_after_seconds=15.0)
    yield application
    application.close()


def spans(exporter: InMemorySpanExporter, name: str | None = None) -> list[ReadableSpan]:
    found = exporter.get_finished_spans()
    return [s for s in found if name is None or s.name == name]


def attrs(span: ReadableSpan) -> dict:
    return dict(span.attributes or {})


def trace_ids(found: list[ReadableSpan]) -> set[int]:
    return {s.context.trace_id for s in found if s.context is not None}


def test_a_job_has_submit_attempt_and_step_spans_with_its_attributes(
    traced: nbjobs.App, exporter: InMemorySpanExporter, provider: TracerProvider
) -> None:
    @traced.workflow(name="etl")
    def etl(cs: nbjobs.CallState, n: int) -> int:
        rows = cs.checkpoint("extract", lambda: list(range(n)))
        return cs.checkpoint("load", sum, rows)

    user = provider.get_tracer("the-user")
    with traced.running(concurrency=1):
        with user.start_as_current_span("notebook cell") as cell:
            h = etl.submit(4)
        assert h.result(timeout=TIMEOUT) == 6
    wait_until(lambda: spans(exporter, "run etl"), what="the attempt's span")
    (submit,) = spans(exporter, "submit etl")
    (run,) = spans(exporter, "run etl")
    steps = {s.name: s for s in spans(exporter) if s.name.startswith("step ")}
    assert set(steps) == {"step extract", "step load"}
    # one trace, from the user's span at submit down to each step
    assert trace_ids([submit, run, *steps.values()]) == {cell.get_span_context().trace_id}
    assert submit.parent is not None and submit.parent.span_id == cell.get_span_context().span_id
    assert run.parent is not None and submit.context is not None
    assert run.parent.span_id == submit.context.span_id
    for step in steps.values():
        assert step.parent is not None and run.context is not None
        assert step.parent.span_id == run.context.span_id
    assert attrs(submit) == {
        "nbjobs.workflow": "etl",
        "nbjobs.queue": "default",
        "nbjobs.job_id": h.id,
    }
    assert attrs(run) == {
        "nbjobs.job_id": h.id,
        "nbjobs.workflow": "etl",
        "nbjobs.attempt": 1,
        "nbjobs.queue": "default",
        "nbjobs.outcome": "succeeded",
    }
    assert attrs(steps["step load"]) == {
        "nbjobs.job_id": h.id,
        "nbjobs.workflow": "etl",
        "nbjobs.attempt": 1,
        "nbjobs.step": "load",
        "nbjobs.cached": False,
        "nbjobs.outcome": "succeeded",
    }
    # the row keeps the submit's context, in W3C form
    with traced.store.engine.connect() as conn:
        stored = conn.execute(sa.select(jobs.c.trace_context).where(jobs.c.id == h.id)).scalar()
    assert submit.context is not None
    traceparent = json.loads(stored)["traceparent"]
    assert traceparent.split("-")[1:3] == [
        f"{submit.context.trace_id:032x}",
        f"{submit.context.span_id:016x}",
    ]


def test_spans_user_code_makes_nest_under_the_step_in_sync_and_async_workflows(
    traced: nbjobs.App, exporter: InMemorySpanExporter, provider: TracerProvider
) -> None:
    user = provider.get_tracer("the-user")

    def fetch(n: int) -> int:
        with user.start_as_current_span("http get"):
            return n + 1

    async def fetch_async(n: int) -> int:
        with user.start_as_current_span("http get async"):
            return n + 2

    @traced.workflow(name="plain")
    def plain(cs: nbjobs.CallState) -> int:
        return cs.checkpoint("fetch", fetch, 1)

    @traced.workflow(name="awaited")
    async def awaited(cs: nbjobs.CallState) -> list[int]:
        a = await cs.checkpoint("in-thread", fetch, 1)
        b = await cs.checkpoint("on-loop", fetch_async, 1)
        return [a, b]

    with traced.running(concurrency=2):
        assert plain.submit().result(timeout=TIMEOUT) == 2
        assert awaited.submit().result(timeout=TIMEOUT) == [2, 3]
    wait_until(lambda: len(spans(exporter, "run awaited")) == 1, what="the async attempt")
    wait_until(lambda: len(spans(exporter, "run plain")) == 1, what="the sync attempt")
    by_id = {s.context.span_id: s for s in spans(exporter) if s.context is not None}

    def chain(span: ReadableSpan) -> list[str]:
        names = [span.name]
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
            names.append(span.name)
        return names

    (sync_get,) = [s for s in spans(exporter, "http get") if chain(s)[-2] == "run plain"]
    assert chain(sync_get) == ["http get", "step fetch", "run plain", "submit plain"]
    (thread_get,) = [s for s in spans(exporter, "http get") if chain(s)[-2] == "run awaited"]
    assert chain(thread_get) == ["http get", "step in-thread", "run awaited", "submit awaited"]
    (loop_get,) = spans(exporter, "http get async")
    assert chain(loop_get) == ["http get async", "step on-loop", "run awaited", "submit awaited"]


def test_a_retry_is_a_second_attempt_span_in_the_same_trace(
    traced: nbjobs.App, exporter: InMemorySpanExporter
) -> None:
    calls: list[int] = []

    @traced.workflow(name="flaky", retries=1)
    def flaky(cs: nbjobs.CallState) -> str:
        cs.checkpoint("before", lambda: 1)

        def fragile() -> str:
            calls.append(1)
            if len(calls) == 1:
                raise ValueError("first try breaks")
            return "ok"

        return cs.checkpoint("fragile", fragile)

    with traced.running(concurrency=1):
        assert flaky.submit().result(timeout=TIMEOUT) == "ok"
    wait_until(lambda: len(spans(exporter, "run flaky")) == 2, what="two attempt spans")
    (submit,) = spans(exporter, "submit flaky")
    first, second = sorted(spans(exporter, "run flaky"), key=lambda s: attrs(s)["nbjobs.attempt"])
    assert trace_ids(spans(exporter)) == trace_ids([submit])
    assert submit.context is not None
    for run in (first, second):
        assert run.parent is not None and run.parent.span_id == submit.context.span_id
    assert attrs(first)["nbjobs.outcome"] == "retrying"
    assert first.status.status_code is StatusCode.ERROR
    assert [e.attributes["exception.type"] for e in first.events if e.attributes] == ["ValueError"]
    assert attrs(second)["nbjobs.attempt"] == 2 and attrs(second)["nbjobs.outcome"] == "succeeded"
    assert second.status.status_code is StatusCode.UNSET
    # the failing step's span has the exception too; the replayed step has no span
    failed, passed = sorted(spans(exporter, "step fragile"), key=lambda s: s.start_time or 0)
    assert attrs(failed)["nbjobs.outcome"] == "failed"
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.events[0].name == "exception"
    assert attrs(passed)["nbjobs.outcome"] == "succeeded"
    assert len(spans(exporter, "step before")) == 1


def test_a_job_resumed_after_a_sleep_and_a_signal_continues_its_trace(
    traced: nbjobs.App, exporter: InMemorySpanExporter
) -> None:
    @traced.workflow(name="patient")
    def patient(cs: nbjobs.CallState) -> str:
        cs.sleep("nap", 0.05)
        return cs.wait_signal("go")

    with traced.running(concurrency=1):
        h = patient.submit()
        wait_until(lambda: len(spans(exporter, "run patient")) == 2, what="two suspensions")
        h.signal("go", "went")
        assert h.result(timeout=TIMEOUT) == "went"
    wait_until(lambda: len(spans(exporter, "run patient")) == 3, what="the last attempt")
    runs = sorted(spans(exporter, "run patient"), key=lambda s: attrs(s)["nbjobs.attempt"])
    assert [attrs(r)["nbjobs.outcome"] for r in runs] == ["suspended", "suspended", "succeeded"]
    assert len(trace_ids(spans(exporter))) == 1
    waits = [
        (s.name, attrs(s)["nbjobs.outcome"]) for s in spans(exporter) if "nbjobs.wait" in attrs(s)
    ]
    assert ("sleep nap", "suspended") in waits and ("signal signal:go", "suspended") in waits
    assert ("signal signal:go", "succeeded") in waits


def test_a_fan_out_in_one_process_is_one_trace_under_the_parents_attempt(
    traced: nbjobs.App, exporter: InMemorySpanExporter
) -> None:
    @traced.workflow(name="child")
    def child(cs: nbjobs.CallState, n: int) -> int:
        return cs.checkpoint("double", lambda: 2 * n)

    @traced.workflow(name="parent")
    def parent(cs: nbjobs.CallState) -> list[int]:
        return [o.value for o in cs.fan_out("kids", [child.spec(i) for i in range(3)])]

    with traced.running(concurrency=2):
        assert parent.submit().result(timeout=TIMEOUT) == [0, 2, 4]
    wait_until(lambda: len(spans(exporter, "run parent")) == 2, what="the parent's resumption")
    first = min(spans(exporter, "run parent"), key=lambda s: attrs(s)["nbjobs.attempt"])
    children = spans(exporter, "run child")
    assert len(children) == 3 and len(trace_ids(spans(exporter))) == 1
    assert first.context is not None
    assert {c.parent.span_id for c in children if c.parent} == {first.context.span_id}


def test_cancel_is_the_attempts_outcome(traced: nbjobs.App, exporter: InMemorySpanExporter) -> None:
    started, release = threading.Event(), threading.Event()

    @traced.workflow(name="stoppable")
    def stoppable(cs: nbjobs.CallState) -> None:
        started.set()
        release.wait(TIMEOUT)
        cs.checkpoint("after", lambda: 1)

    with traced.running(concurrency=1):
        h = stoppable.submit()
        assert started.wait(TIMEOUT)
        h.cancel()
        release.set()
        wait_until(lambda: h.status == "cancelled", what="the cancel")
    wait_until(lambda: spans(exporter, "run stoppable"), what="the attempt's span")
    (run,) = spans(exporter, "run stoppable")
    assert attrs(run)["nbjobs.outcome"] == "cancelled"


def test_a_step_served_from_the_cache_has_a_span_that_says_so(
    traced: nbjobs.App, exporter: InMemorySpanExporter
) -> None:
    @nbjobs.step(cache=True)
    def load(day: str) -> str:
        return f"loaded {day}"

    @traced.workflow(name="report")
    def report(cs: nbjobs.CallState, day: str) -> str:
        return cs.checkpoint("load", load, day) + cs.checkpoint("tail", str.upper, day)

    assert report.run("mon") == report.run("mon") == "loaded monMON"
    runs = sorted(spans(exporter, "run report"), key=lambda span: span.start_time or 0)
    first, second = (attrs(span)["nbjobs.job_id"] for span in runs)
    by_job: dict[str, dict[str, bool]] = {}
    for span in spans(exporter):
        found = attrs(span)
        if span.name.startswith("step "):
            by_job.setdefault(found["nbjobs.job_id"], {})[span.name] = found["nbjobs.cached"]
    assert by_job[first] == {"step load": False, "step tail": False}
    assert by_job[second] == {"step load": True, "step tail": False}


def test_a_group_submitted_at_once_is_one_submit_span(
    traced: nbjobs.App, exporter: InMemorySpanExporter
) -> None:
    @traced.workflow(name="item")
    def item(cs: nbjobs.CallState, n: int) -> int:
        return n

    with traced.running(concurrency=2):
        group = item.map([1, 2, 3])
        done = group.wait(timeout=TIMEOUT)
        assert sorted(h.result() for h in done.jobs) == [1, 2, 3]
    wait_until(lambda: len(spans(exporter, "run item")) == 3, what="three attempts")
    (submit,) = spans(exporter, "submit item")
    assert attrs(submit)["nbjobs.count"] == 3
    assert len(trace_ids(spans(exporter))) == 1


def test_a_schedules_ticks_and_run_now_start_traced_jobs(
    db_url: str, exporter: InMemorySpanExporter, provider: TracerProvider
) -> None:
    from nbjobs.clock import FakeClock
    from nbjobs.runtime.scheduler import Scheduler

    clock = FakeClock(start=1_704_103_200.0)  # 2024-01-01 10:00 UTC
    app = make_app(db_url, clock=clock, tracing=provider)
    try:
        report = app.workflow(name="report")(lambda cs, n: n)
        app.schedule("minutely", report, cron="* * * * *", args=(1,))
        now = app.run_schedule("minutely")
        clock.advance(61)
        assert Scheduler(app.runtime).tick() == 1
        ticked = next(j for j in app.jobs(workflow="report") if j.id != now.id)
        submits = spans(exporter, "submit report")
        assert len(submits) == 2
        assert {attrs(s)["nbjobs.schedule"] for s in submits} == {"minutely"}
        assert {attrs(s)["nbjobs.job_id"] for s in submits} == {now.id, ticked.id}
        with app.store.engine.connect() as conn:
            stored = conn.execute(
                sa.select(jobs.c.id, jobs.c.trace_context).where(jobs.c.workflow == "report")
            ).all()
        by_job = {attrs(s)["nbjobs.job_id"]: s for s in submits}
        for job_id, context in stored:
            span_context = by_job[job_id].context
            assert span_context is not None
            assert f"{span_context.span_id:016x}" in json.loads(context)["traceparent"]
    finally:
        app.close()


class BrokenPropagator:
    """A propagator that fails both ways (a misconfigured custom propagator)."""

    fields: ClassVar[set[str]] = {"traceparent"}

    def inject(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("the propagator broke")

    def extract(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("the propagator broke")


def test_a_failing_propagator_never_fails_a_job(
    traced: nbjobs.App, exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    """Tracing is not the job's business: when it fails, the job runs untraced (or with
    a trace of its own) and the log says why (a warning, the first time)."""
    from opentelemetry import propagate

    @traced.workflow(name="sturdy")
    def sturdy(cs: nbjobs.CallState) -> int:
        return cs.checkpoint("one", lambda: 1)

    before = propagate.get_global_textmap()
    propagate.set_global_textmap(BrokenPropagator())  # type: ignore[arg-type]
    try:
        with traced.running(concurrency=1), caplog.at_level("DEBUG", "nbjobs.runtime.tracing"):
            assert sturdy.submit().result(timeout=TIMEOUT) == 1
    finally:
        propagate.set_global_textmap(before)
    assert "tracing: could not write a trace context" in caplog.text
    with traced.store.engine.connect() as conn:
        assert conn.execute(sa.select(jobs.c.trace_context)).scalar() is None
    wait_until(lambda: spans(exporter, "run sturdy"), what="the attempt's span")
    (run,) = spans(exporter, "run sturdy")
    assert attrs(run)["nbjobs.outcome"] == "succeeded" and run.parent is None


# -- across processes -------------------------------------------------------------------
def read_spans(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.parametrize("backend", backends.selected("sqlite", "postgres", "mysql"))
def test_a_fan_out_across_two_worker_processes_is_one_trace(
    db_url: str, tmp_path: Path, exporter: InMemorySpanExporter, provider: TracerProvider
) -> None:
    """The parent is submitted here inside a span; two ``nbjobs worker`` processes
    (tracing on because their app sets a global provider) run it and its children, and
    each exports its spans to its own file: all of them are one trace, the children's
    attempts under the parent's first attempt, and both processes ran children."""
    app = make_app(db_url, tracing=provider)
    tree = app.workflow(name="tree")(lambda cs, n: None)  # a stand-in: the workers run it
    files = [tmp_path / "spans-a.jsonl", tmp_path / "spans-b.jsonl"]
    try:
        with (
            worker_process(
                "tests.apps.tracing_app:app", db_url, tmp_path / "a.log", "--concurrency", "1",
                env={"NBJOBS_TRACE_FILE": str(files[0])},
            ),
            worker_process(
                "tests.apps.tracing_app:app", db_url, tmp_path / "b.log", "--concurrency", "1",
                env={"NBJOBS_TRACE_FILE": str(files[1])},
            ),
        ):  # fmt: skip
            wait_until(lambda: len(app.workers(alive_within=5.0)) == 2, TIMEOUT, what="workers")
            with provider.get_tracer("test").start_as_current_span("request") as request:
                h = tree.submit(6)
            assert h.result(timeout=TIMEOUT) == [n * n for n in range(6)]
            wait_until(
                lambda: (
                    sum(1 for f in files for s in read_spans(f) if s["name"] == "run tree") == 2
                ),
                TIMEOUT,
                what="the parent's two attempt spans",
            )
    finally:
        app.close()
    theirs = [span for f in files for span in read_spans(f)]
    trace_id = f"{request.get_span_context().trace_id:032x}"
    assert {s["trace_id"] for s in theirs} == {trace_id}
    assert trace_ids(spans(exporter)) == {request.get_span_context().trace_id}
    runs = sorted(
        (s for s in theirs if s["name"] == "run tree"),
        key=lambda s: s["attributes"]["nbjobs.attempt"],
    )
    (submit,) = spans(exporter, "submit tree")
    assert submit.context is not None
    assert {r["parent_id"] for r in runs} == {f"{submit.context.span_id:016x}"}
    leaves = [s for s in theirs if s["name"] == "run leaf"]
    assert len(leaves) == 6
    assert {s["parent_id"] for s in leaves} == {runs[0]["span_id"]}
    assert {s["attributes"]["nbjobs.parent_id"] for s in leaves} == {h.id}
    assert len({s["pid"] for s in leaves}) == 2  # both processes ran children
    steps = [s for s in theirs if s["name"] == "step square"]
    leaf_spans = {s["span_id"] for s in leaves}
    assert len(steps) == 6 and {s["parent_id"] for s in steps} == leaf_spans


# -- off --------------------------------------------------------------------------------
def run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


JOBS = """
import sys, nbjobs
app = nbjobs.App({url!r}, poll_seconds=0.05{options})
@app.workflow(name="w")
def w(cs, n):
    cs.sleep("nap", 0.01)
    return cs.checkpoint("double", lambda: 2 * n)
@app.workflow(name="fan")
def fan(cs):
    return [o.value for o in cs.fan_out("kids", [w.spec(i) for i in range(2)])]
with app.running(concurrency=2):
    assert fan.submit().result(timeout=60) == [0, 2]
    assert w.run(3) == 6
stored = app.store.engine.connect().exec_driver_sql(
    "SELECT count(*) FROM nbjobs_jobs WHERE trace_context IS NOT NULL").scalar()
app.close()
"""


def test_without_tracing_nothing_of_opentelemetry_is_imported(tmp_path: Path) -> None:
    """OpenTelemetry is installed here, but nothing imported it: jobs run (steps, a
    sleep, a fan-out, ``wf.run``) and it is still not imported, and no row has a trace
    context."""
    code = JOBS.format(url=f"sqlite:///{tmp_path / 'off.db'}", options="") + (
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')), stored)"
    )
    assert run_python(code) == "[] 0"


def test_tracing_false_makes_no_spans_even_with_a_provider_set(tmp_path: Path) -> None:
    setup = (
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from opentelemetry.sdk.trace.export import SimpleSpanProcessor\n"
        "from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter\n"
        "exporter = InMemorySpanExporter()\n"
        "provider = TracerProvider()\n"
        "provider.add_span_processor(SimpleSpanProcessor(exporter))\n"
        "trace.set_tracer_provider(provider)\n"
    )
    off = setup + JOBS.format(url=f"sqlite:///{tmp_path / 'off.db'}", options=", tracing=False")
    assert run_python(off + "print(len(exporter.get_finished_spans()), stored)") == "0 0"
    # the same with the default: the global provider turns tracing on
    on = setup + JOBS.format(url=f"sqlite:///{tmp_path / 'on.db'}", options="")
    counted = run_python(on + "print(len(exporter.get_finished_spans()) > 0, stored)")
    assert counted == "True 4"  # fan, its two children, and w.run's job


def test_a_provider_set_after_the_app_turns_tracing_on(tmp_path: Path) -> None:
    """``tracing=None`` notices a provider set later (it asks again at most every
    ``CHECK_SECONDS``, zero here): jobs before it are untraced, jobs after it traced."""
    code = f"""
import nbjobs, nbjobs.runtime.tracing
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
nbjobs.runtime.tracing.CHECK_SECONDS = 0.0
app = nbjobs.App({f"sqlite:///{tmp_path / 'late.db'}"!r})
double = app.workflow(name="double")(lambda cs, n: cs.checkpoint("x", lambda: 2 * n))
assert double.run(1) == 2
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
assert double.run(2) == 4
print(sorted(s.name for s in exporter.get_finished_spans()))
app.close()
"""
    assert run_python(code) == "['run double', 'step x', 'submit double']"


def test_tracing_true_without_opentelemetry_says_what_to_install(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # as if it were not installed\n"
        "import nbjobs\n"
        f"url = {url!r}\n"
        "try:\n"
        "    nbjobs.App(url, tracing=True)\n"
        "except nbjobs.ConfigurationError as exc:\n"
        "    print(exc)\n"
        "app = nbjobs.App(url)  # the default needs nothing\n"
        "app.close()\n"
    )
    assert "pip install 'nbjobs[tracing]'" in run_python(code)


@pytest.mark.parametrize("bad", ["yes", 1, object()])
def test_a_bad_tracing_option_is_refused(sqlite_url: str, bad: object) -> None:
    with pytest.raises(nbjobs.ConfigurationError, match="tracing= takes True, False, None"):
        nbjobs.App(sqlite_url, tracing=bad)  # type: ignore[arg-type]


# -- the lean path over the SDK ---------------------------------------------------------
class CountingIds(IdGenerator):
    """Ids from a counter: two providers given one each make the same ids in turn."""

    def __init__(self) -> None:
        self.next = 0x1234

    def generate_span_id(self) -> int:
        self.next += 1
        return self.next

    def generate_trace_id(self) -> int:
        self.next += 1
        return (0xABCD << 96) | self.next

    def is_trace_id_random(self) -> bool:
        return True


class TaggingSampler(Sampler):
    """A sampler that adds an attribute and a trace state entry, and drops every third
    span it is asked about."""

    def __init__(self) -> None:
        self.asked = 0

    def should_sample(
        self,
        parent_context,
        trace_id,
        name,
        kind=None,
        attributes=None,
        links=None,
        trace_state=None,
    ) -> SamplingResult:  # type: ignore[no-untyped-def]
        self.asked += 1
        if self.asked % 3 == 0:
            return SamplingResult(Decision.DROP)
        return SamplingResult(
            Decision.RECORD_AND_SAMPLE,
            {**(attributes or {}), "sampler.tag": self.asked},
            TraceState([("nbjobs", str(self.asked))]),
        )

    def get_description(self) -> str:
        return "TaggingSampler"


class StartingProcessor(SpanProcessor):
    """A processor that needs the span at its start (sets an attribute there), as some
    do: the SDK's own span must be made for it."""

    def __init__(self) -> None:
        self.started: list[object] = []

    def on_start(self, span, parent_context=None) -> None:  # type: ignore[no-untyped-def]
        self.started.append(span)
        span.set_attribute("started.by", "processor")


def claimed(carrier: str | None, attempt: int = 1) -> ClaimedJob:
    return ClaimedJob(
        id="job-1", workflow="w", queue="q", input=None, attempt=attempt, max_retries=1,
        failures=0, timeout_seconds=None, steps_done=0, lease_token="t", root_id=None,
        parent_id="parent-1", reclaims=0, trace_context=carrier,
    )  # fmt: skip


def every_kind_of_span(tracing: Tracing, user_tracer: object) -> None:
    """What the engine does with a traced job, through the same objects: a submit, an
    attempt with steps (one with a user span, attributes set by user code on the current
    span, one cached, one failing), a wait that suspends, a fan-out carrier, an outcome
    with an error; then a second attempt from the stored context."""
    with tracing.submitting("w", "q") as submit:
        assert submit is not None
        submit.submitted("job-1")
    for attempt_number in (1, 2):
        attempt = tracing.attempt(claimed(submit.carrier, attempt_number), "w")
        assert attempt is not None
        with attempt:
            with attempt.step("a"):
                with user_tracer.start_as_current_span("user span") as mine:  # type: ignore[attr-defined]
                    mine.set_attribute("user.n", 1)
                current = otel_trace.get_current_span()
                assert getattr(current, "name", "step a") == "step a"  # when recording
                current.set_attribute("user.list", [1, 2])  # cleaned into a tuple
                current.set_attribute("user.text", "x" * 40)
                current.add_event("user event", {"k": "v"})
            with attempt.step("b", cached=True) as step:
                step.cached = False
            with pytest.raises(ValueError), attempt.step("c"):
                raise ValueError("step c broke")
            with pytest.raises(_Suspend), attempt.wait("sleep", "nap"):
                raise _Suspend()
            assert attempt.carrier() is not None
            if attempt_number == 1:
                attempt.outcome("retrying", ValueError("the attempt broke"))
            else:
                attempt.outcome("succeeded")


def comparable(span: ReadableSpan) -> tuple:
    """All of a finished span but its times (and its events' times)."""
    assert span.start_time is not None and span.end_time is not None
    assert span.start_time <= span.end_time
    context = span.get_span_context()
    assert context is not None
    return (
        span.name,
        (context.trace_id, context.span_id, context.trace_flags, context.is_remote),
        tuple(context.trace_state.items()),
        span.parent,
        span.kind,
        attrs(span),
        (span.status.status_code, span.status.description),
        [(e.name, dict(e.attributes or {})) for e in span.events],
        [(link.context, dict(link.attributes or {})) for link in span.links],
        dict(span.resource.attributes),
        span.instrumentation_scope,
        span.dropped_attributes,
        span.dropped_events,
    )


def sdk_and_lean_spans(**provider_options: Any) -> tuple[list, list]:
    """The spans of :func:`every_kind_of_span` made by the SDK and by the lean path, each
    with a provider of ``provider_options`` and its own counting id generator."""
    made = []
    for lean in (False, True):
        exporter = InMemorySpanExporter()
        options = {
            key: value() if callable(value) and key == "sampler" else value
            for key, value in provider_options.items()
        }
        tracer_provider = TracerProvider(
            id_generator=CountingIds(), resource=Resource.create({"service.name": "t"}), **options
        )
        tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        before = nbjobs_tracing.LEAN
        nbjobs_tracing.LEAN = lean
        try:
            tracing = Tracing(tracer_provider)
        finally:
            nbjobs_tracing.LEAN = before
        tracer = tracing.active()
        assert tracer is not None
        assert isinstance(getattr(tracer.start_span, "__self__", None), LeanTracer) is lean
        every_kind_of_span(tracing, tracer_provider.get_tracer("the-user"))
        made.append([comparable(s) for s in exporter.get_finished_spans()])
        tracer_provider.shutdown()
    return made[0], made[1]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"sampler": lambda: ALWAYS_OFF},
        {"sampler": lambda: ParentBased(ALWAYS_OFF)},
        {"sampler": lambda: TraceIdRatioBased(0.5)},
        {"sampler": lambda: ParentBased(TraceIdRatioBased(0.5))},
        {"sampler": lambda: ParentBased(ALWAYS_ON, local_parent_sampled=TaggingSampler())},
        {"sampler": TaggingSampler},
        {"sampler": lambda: ParentBased(TaggingSampler())},
        {"span_limits": SpanLimits(max_span_attributes=7, max_span_attribute_length=8)},
    ],
    ids=[
        "default",
        "always-off",
        "parent-based-off",
        "ratio",
        "parent-based-ratio",
        "parent-based-tagging",
        "tagging",
        "parent-based-on-tagging",
        "limits",
    ],
)
def test_the_lean_path_makes_the_spans_the_sdk_makes(options: dict) -> None:
    """Field by field, times aside: the sampler's decisions, attributes and trace state,
    ids, parents, kinds, attributes (user code's too, cleaned and limited), statuses,
    exception events, resource and scope.  A later SDK that changes what its spans hold
    fails here (then the lean path needs the same change, or to step aside)."""
    sdk, lean = sdk_and_lean_spans(**options)
    assert lean == sdk
    if "sampler" not in options:
        assert len(sdk) == 13  # submit, and per attempt: run, user span, a, b, c, nap
        names = [s[0] for s in sdk]
        assert names.count("run w") == 2 and names.count("step c") == 2


def test_a_processor_that_needs_the_span_at_its_start_gets_the_sdks_span(
    exporter: InMemorySpanExporter, provider: TracerProvider
) -> None:
    """Added after tracing turned on, it still sees every span start: from then on the
    SDK makes nbjobs' spans, and they carry what the processor set."""
    tracing = Tracing(provider)
    user = provider.get_tracer("the-user")
    every_kind_of_span(tracing, user)
    lean_made = exporter.get_finished_spans()
    assert lean_made and "started.by" not in attrs(lean_made[0])
    exporter.clear()
    starting = StartingProcessor()
    provider.add_span_processor(starting)
    every_kind_of_span(tracing, user)
    made = exporter.get_finished_spans()
    assert len(made) == len(lean_made) == len(starting.started)
    assert all(attrs(s)["started.by"] == "processor" for s in made)
    assert all(type(s).__name__ == "_Span" for s in starting.started)


class WrappingProvider:
    """A tracer provider that is not the SDK's (a vendor's wrapper, say): its tracer
    hands the SDK tracer's spans on."""

    def __init__(self, inner: TracerProvider) -> None:
        self.inner = inner

    def get_tracer(self, *args: object, **kwargs: object) -> otel_trace.Tracer:
        return WrappingTracer(self.inner.get_tracer(*args, **kwargs))  # type: ignore[arg-type]


class WrappingTracer(otel_trace.Tracer):
    def __init__(self, inner: otel_trace.Tracer) -> None:
        self.inner = inner

    def start_span(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self.inner.start_span(*args, **kwargs)

    def start_as_current_span(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self.inner.start_as_current_span(*args, **kwargs)


def test_a_provider_other_than_the_sdks_still_traces_jobs(
    sqlite_url: str, exporter: InMemorySpanExporter, provider: TracerProvider
) -> None:
    app = make_app(sqlite_url, tracing=WrappingProvider(provider))
    try:
        tracer = app.runtime.tracing.active()
        assert tracer is not None and not isinstance(
            getattr(tracer.start_span, "__self__", None), LeanTracer
        )
        etl = app.workflow(name="etl")(lambda cs, n: cs.checkpoint("load", lambda: n + 1))
        assert etl.run(1) == 2
    finally:
        app.close()
    (run,) = spans(exporter, "run etl")
    (step,) = spans(exporter, "step load")
    assert type(run).__name__ == "ReadableSpan"  # the SDK's own copy of its span
    assert step.parent is not None and run.context is not None
    assert step.parent.span_id == run.context.span_id
    assert attrs(run)["nbjobs.outcome"] == "succeeded"


def test_an_sdk_without_what_the_lean_path_reads_makes_the_spans_itself(
    exporter: InMemorySpanExporter, provider: TracerProvider, caplog: pytest.LogCaptureFixture
) -> None:
    """The SDK internals the lean path reads (``tracing_sdk.PRIVATE``) are checked once:
    one missing (a later SDK renamed it), the SDK makes every span, and the log says so."""
    sdk_tracer = provider.get_tracer(nbjobs_tracing.SCOPE, nbjobs.__version__)
    del sdk_tracer._span_limits  # type: ignore[attr-defined]
    with caplog.at_level("INFO", "nbjobs.runtime.tracing_sdk"):
        tracing = Tracing(provider)
    tracer = tracing.active()
    assert tracer is not None and tracer.start_span == sdk_tracer.start_span
    assert "lacks Tracer._span_limits" in caplog.text
    assert PRIVATE  # what the docs list


def test_an_sdk_release_the_lean_path_was_not_checked_against_makes_the_spans(
    provider: TracerProvider, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lean path reads SDK internals: with a release it was not checked against
    (``tracing_sdk.TESTED_SDK_RELEASES``), the SDK makes every span, and the log says
    so; with this one (the test environment's), the lean path is taken."""
    from nbjobs.runtime import tracing_sdk

    assert (
        Tracing(provider).active().start_span
        != provider.get_tracer(nbjobs_tracing.SCOPE, nbjobs.__version__).start_span
    )
    monkeypatch.setattr(tracing_sdk, "_sdk_version", "9.0.0")
    sdk_tracer = provider.get_tracer(nbjobs_tracing.SCOPE, nbjobs.__version__)
    with caplog.at_level("INFO", "nbjobs.runtime.tracing_sdk"):
        tracer = Tracing(provider).active()
    assert tracer is not None and tracer.start_span == sdk_tracer.start_span
    assert "with 9.0.0 the SDK makes them" in caplog.text


@pytest.mark.parametrize(
    "traceparent",
    [
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03",
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-more",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-more",
        " 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 ",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
        "garbage",
    ],
)
def test_a_stored_context_reads_as_the_w3c_propagator_reads_it(
    provider: TracerProvider, traceparent: str
) -> None:
    """The default propagator is read without it for a lone traceparent: the same
    context, valid or not."""

    from opentelemetry import baggage, propagate

    def seen(ctx: Any) -> tuple:
        span_context = otel_trace.get_current_span(ctx).get_span_context()
        return set(ctx), span_context, type(span_context.trace_flags), baggage.get_all(ctx)

    tracer = Tracing(provider).active()
    assert tracer is not None
    stored = json.dumps({"traceparent": traceparent})
    assert tracer._plain_w3c()  # the default propagator: the short way is open
    assert seen(tracer.extract(stored)) == seen(propagate.extract({"traceparent": traceparent}))
    # with baggage (or another propagator), the propagator reads it
    with_baggage = {"traceparent": traceparent, "baggage": "k=v"}
    assert seen(tracer.extract(json.dumps(with_baggage))) == seen(propagate.extract(with_baggage))


@pytest.mark.parametrize(
    "situation", ["sampled", "not sampled", "trace state", "baggage", "no span", "invalid span"]
)
def test_a_stored_context_is_what_the_w3c_propagator_writes(
    provider: TracerProvider, situation: str
) -> None:
    """The default propagator's fields are written without it for a plain context: the
    same JSON the propagator's fields make."""
    from opentelemetry import baggage, context, propagate

    span_context = otel_trace.SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        is_remote=False,
        trace_flags=otel_trace.TraceFlags(0 if situation == "not sampled" else 1),
        trace_state=TraceState([("k", "v")]) if situation == "trace state" else None,
    )
    ctx = otel_trace.set_span_in_context(otel_trace.NonRecordingSpan(span_context))
    if situation == "baggage":
        ctx = baggage.set_baggage("user", "ann", ctx)
    elif situation == "no span":
        ctx = context.Context()
    elif situation == "invalid span":
        ctx = otel_trace.set_span_in_context(otel_trace.INVALID_SPAN)
    tracer = Tracing(provider).active()
    assert tracer is not None
    fields: dict[str, str] = {}
    propagate.inject(fields, context=ctx)
    expected = json.dumps(fields, sort_keys=True) if fields else None
    assert tracer.carrier(ctx) == expected
    assert (expected is None) is (situation in ("no span", "invalid span"))


def test_the_sdks_own_span_metrics_count_lean_spans_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the SDK's internal metrics on, spans started and live are counted the same
    whichever path made them."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    counted = []
    for lean in (False, True):
        reader = InMemoryMetricReader()
        tracer_provider = TracerProvider(
            id_generator=CountingIds(),
            sampler=TaggingSampler(),  # some spans dropped: counted apart
            meter_provider=MeterProvider(metric_readers=[reader]),
        )
        tracer_provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
        monkeypatch.setattr(nbjobs_tracing, "LEAN", lean)
        tracing = Tracing(tracer_provider)
        tracer = tracing.active()
        assert tracer is not None
        assert isinstance(getattr(tracer.start_span, "__self__", None), LeanTracer) is lean
        every_kind_of_span(tracing, tracer_provider.get_tracer("the-user"))
        data = reader.get_metrics_data()
        assert data is not None
        counted.append(
            {
                (metric.name, tuple(sorted((point.attributes or {}).items()))): point.value
                for resource in data.resource_metrics
                for scope in resource.scope_metrics
                for metric in scope.metrics
                for point in metric.data.data_points  # type: ignore[union-attr]
            }
        )
        tracer_provider.shutdown()
    sdk, lean_made = counted
    assert lean_made == sdk
    assert {name for name, _ in sdk} == {"otel.sdk.span.started", "otel.sdk.span.live"}
