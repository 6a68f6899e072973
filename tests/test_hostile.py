"""Hostile input: property-based tests (hypothesis) over the public API and the CLI.

Odd names (unicode, SQL-looking text, NUL, lone surrogates, over-long), odd values
(deeply nested, huge, NaN and infinities, big integers) and malformed rows written into
the database behind nbjobs' back.  The contract checked: every input is either stored and
given back unchanged, or refused at once with a clear ``ConfigurationError`` or
``SerializationError``; a row nbjobs cannot decode fails its own job and no other.

JSON and non-finite floats: NaN, Infinity and -Infinity round-trip (see
:mod:`nbjobs.codec`), through inputs, checkpoints, results and signals alike.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import update

import nbjobs
from nbjobs.cli import main as cli_main
from nbjobs.schema import checkpoints
from tests.conftest import make_app
from tests.support import cli, wait_until

TIMEOUT = 60
SQLISH = st.sampled_from(
    [
        "'; DROP TABLE nbjobs_jobs; --",
        '" OR 1=1 --',
        "Robert'); DROP TABLE students;--",
        "%",
        "_",
        "\\",
        "' || (SELECT version()) || '",
        "$1",
        ":name",
        "?",
        "*/ /*",
        "NULL",
    ]
)
ODD_NAMES = st.sampled_from(
    ["", " ", "\t\n", "\x00", "a\x00b", "\ud800", "x\udfffy", "é" * 201, "🙂" * 50,
     "Ω≈ç√", "a/b\\c", "名前", "\u202eevil", "line\nbreak", "a" * 100, "q" * 101]
)  # fmt: skip
NAMES = st.one_of(st.text(max_size=210), SQLISH, ODD_NAMES)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), FLOATS, st.text(max_size=40), SQLISH)
VALUES = st.recursive(
    LEAVES,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), SQLISH), kids, max_size=4),
    ),
    max_leaves=25,
)
PROPERTY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_unique = itertools.count()


def same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to NaN (and -0.0 kept apart from 0.0)."""
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def valid_name(name: str, limit: int = 200) -> bool:
    """What nbjobs promises to accept as a name, stated independently of its code."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return bool(name.strip()) and len(name) <= limit and "\x00" not in name


def valid_queue(name: str) -> bool:
    """A queue name also has no comma: lists of queues are comma-separated."""
    return valid_name(name, 100) and "," not in name


# -- values ----------------------------------------------------------------------------
@PROPERTY
@given(value=VALUES)
def test_any_json_value_round_trips_through_input_checkpoint_and_result(app, value) -> None:
    @app.workflow(name="echo")
    def echo(cs: nbjobs.CallState, v: Any) -> Any:
        stored = cs.checkpoint("echo", lambda: v)
        assert same(stored, v)
        return {"v": stored}

    key = f"echo-{next(_unique)}"
    result = echo.options(key=key).run(value)
    assert same(result, {"v": value})
    (h,) = [h for h in app.jobs(workflow="echo", limit=1)]
    assert same(h.input["args"], [value])
    assert same(h.checkpoints["echo"], value)


def test_non_finite_floats_round_trip_everywhere_a_value_is_stored(app) -> None:
    odd = [math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324, {"nan": math.nan}]

    @app.workflow(name="floats")
    def floats(cs: nbjobs.CallState, xs: list) -> dict:
        step = cs.checkpoint("step", lambda: [x for x in xs])
        got = cs.wait_signal("more")
        return {"input": xs, "step": step, "signal": got}

    app.start(concurrency=2)
    h = floats.submit(odd)
    h.signal("more", odd)
    result = h.result(timeout=TIMEOUT)
    assert same(result, {"input": odd, "step": odd, "signal": odd})
    assert same(h.checkpoints["step"], odd)


@pytest.mark.parametrize(
    "value",
    [
        {1: "a", "1": "b"},  # JSON would keep one of the two
        {True: 1, "true": 2, None: 3},
        {math.nan: 1},
        {2.5: "x"},
        [1, {"deep": [{"ok": 1}, {7: "seven"}]}],
    ],
)
def test_dict_keys_that_are_not_strings_are_refused_not_coerced(app, value) -> None:
    @app.workflow(name="keys")
    def keys(cs: nbjobs.CallState, v: Any, as_step: bool) -> Any:
        return cs.checkpoint("v", lambda: value) if as_step else "unused"

    with pytest.raises(nbjobs.SerializationError, match="a key of type") as info:
        keys.submit(value, False)
    assert "convert the keys to str" in str(info.value)
    assert app.jobs() == []
    # A step (or a result) that returns one fails its job clearly, without retries.
    with pytest.raises(
        nbjobs.JobFailed, match=r"SerializationError: checkpoint 'v'.*a key of type"
    ):
        keys.run(None, True)


def test_a_pickle_app_keeps_dict_keys_as_they_are(sqlite_url) -> None:
    app = make_app(sqlite_url, serializer="pickle")
    try:

        @app.workflow(name="keys")
        def keys(cs: nbjobs.CallState, v: dict) -> dict:
            return cs.checkpoint("v", lambda: v)

        assert keys.run({1: "a", "1": "b", None: 3}) == {1: "a", "1": "b", None: 3}
    finally:
        app.close()


# -- non-finite and out-of-range numbers -------------------------------------------------
NON_FINITE = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("bad", NON_FINITE)
@pytest.mark.parametrize(
    "option",
    [
        "heartbeat_seconds",
        "stale_after_seconds",
        "poll_seconds",
        "retry_backoff_seconds",
        "retry_backoff_max_seconds",
        "retention_seconds",
        "max_reclaims",
        "max_payload_bytes",
        "sqlite_busy_timeout",
        "pool_timeout",
        "pool_recycle",
    ],
)
def test_every_numeric_app_option_refuses_non_finite_values(sqlite_url, option, bad) -> None:
    # heartbeat_seconds=nan turned off heartbeats and the reaper (live jobs ran twice);
    # poll_seconds=nan made the idle dispatcher spin; inf never reclaimed or retried.
    with pytest.raises(nbjobs.ConfigurationError, match=option):
        nbjobs.App(sqlite_url, **{option: bad})


@pytest.mark.parametrize("bad", NON_FINITE)
def test_submit_options_refuse_non_finite_numbers(app, bad) -> None:
    @app.workflow(name="noop")
    def noop(cs: nbjobs.CallState) -> None:
        return None

    # run_at=nan was stored as NULL and the job stayed queued forever; inf never ran.
    for option in ("run_at", "delay", "timeout", "priority", "retries", "steps"):
        with pytest.raises(nbjobs.ConfigurationError, match=option):
            noop.options(**{option: bad}).submit()
    with pytest.raises(nbjobs.ConfigurationError, match="timeout"):
        app.workflow(noop.fn, name="noop2", timeout=bad)
    assert app.jobs() == []


@pytest.mark.no_worker
@pytest.mark.parametrize("bad", NON_FINITE)
def test_every_other_public_number_refuses_non_finite_values(sqlite_app, bad) -> None:
    @sqlite_app.workflow(name="noop")
    def noop(cs: nbjobs.CallState) -> None:
        return None

    done = noop.submit()
    calls = {
        "timeout": lambda: done.result(timeout=bad),
        "concurrency": lambda: sqlite_app.start(concurrency=bad),
        "limit": lambda: sqlite_app.jobs(limit=bad),
        "older_than": lambda: sqlite_app.purge(older_than=bad),
        "batch_size": lambda: sqlite_app.purge(older_than=0, batch_size=bad),
        "alive_within": lambda: sqlite_app.workers(alive_within=bad),
        "priority": lambda: sqlite_app.schedule("s", noop, cron="* * * * *", priority=bad),
        "Threshold": lambda: nbjobs.Threshold(bad),
    }
    for name, call in calls.items():
        with pytest.raises(nbjobs.ConfigurationError, match=name):
            call()
    with pytest.raises(nbjobs.ConfigurationError, match="timeout"):
        sqlite_app.stop(timeout=bad)
    assert sqlite_app.workers() == []


def test_a_nan_signal_timeout_fails_the_run_clearly(sqlite_app) -> None:
    @sqlite_app.workflow(name="wait")
    def wait(cs: nbjobs.CallState) -> None:
        cs.wait_signal("go", timeout=math.nan)

    with pytest.raises(nbjobs.JobFailed, match="timeout must be a finite number"):
        wait.run()


def test_deeply_nested_values_round_trip_or_are_refused_clearly(sqlite_app) -> None:
    @sqlite_app.workflow(name="nest")
    def nest(cs: nbjobs.CallState, v: Any) -> Any:
        return cs.checkpoint("v", lambda: v)

    ok: Any = "leaf"
    for i in range(200):
        ok = [{"k": ok}] if i % 2 else [ok]
    assert nest.run(ok) == ok
    deep: Any = "leaf"
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(nbjobs.SerializationError, match="cannot submit 'nest'"):
        nest.submit(deep)

    @sqlite_app.workflow(name="deep-step", retries=3)
    def deep_step(cs: nbjobs.CallState) -> None:
        cs.checkpoint("deep", lambda: deep)

    with pytest.raises(nbjobs.JobFailed, match="SerializationError: checkpoint 'deep'"):
        deep_step.run()
    assert [a["outcome"] for a in sqlite_app.jobs(workflow="deep-step")[0].attempts] == ["failed"]


def test_payload_size_limit_guards_inputs_checkpoints_results_and_signals(sqlite_url) -> None:
    app = make_app(sqlite_url, max_payload_bytes=10_000)
    try:
        big = "x" * 10_001
        small = "x" * 9_000

        @app.workflow(name="sized", retries=3)
        def sized(cs: nbjobs.CallState, where: str) -> Any:
            value = cs.checkpoint("step", lambda: big if where == "step" else small)
            return big if where == "result" else len(value)

        with pytest.raises(nbjobs.SerializationError, match=r"over the limit of 10,000 bytes"):
            sized.submit(big)
        with pytest.raises(nbjobs.SerializationError, match="max_payload_bytes"):
            sized.submit(big)
        assert sized.run("fits") == 9_000
        for where in ("step", "result"):
            with pytest.raises(nbjobs.JobFailed, match="over the limit of 10,000 bytes"):
                sized.run(where)
            (h,) = app.jobs(workflow="sized", limit=1)
            assert len(h.attempts) == 1  # a value that cannot be stored is not retried

        @app.workflow(name="listener")
        def listener(cs: nbjobs.CallState) -> Any:
            return cs.wait_signal("s")

        app.start(concurrency=1)
        h = listener.submit()
        with pytest.raises(nbjobs.SerializationError, match=r"signal .s.*10,000 bytes"):
            h.signal("s", big)
        h.signal("s", small)
        assert h.result(timeout=TIMEOUT) == small
    finally:
        app.close()


def test_the_default_limit_is_16_mib_without_an_artifact_store(sqlite_url) -> None:
    app = nbjobs.App(sqlite_url, artifacts=False)
    try:

        @app.workflow(name="huge")
        def huge(cs: nbjobs.CallState, v: str) -> int:
            return len(v)

        with pytest.raises(nbjobs.SerializationError, match="16,777,216 bytes"):
            huge.submit("y" * (16 * 1024 * 1024))
        with pytest.raises(nbjobs.ConfigurationError, match="max_payload_bytes"):
            nbjobs.App(sqlite_url, max_payload_bytes=0)
    finally:
        app.close()


def test_with_the_default_artifact_store_a_huge_value_leaves_the_row(sqlite_app) -> None:
    @sqlite_app.workflow(name="huge")
    def huge(cs: nbjobs.CallState, v: str) -> int:
        return len(v)

    big = "y" * (16 * 1024 * 1024 + 1)
    sqlite_app.start(concurrency=1)
    h = huge.submit(big)
    assert h.result(timeout=TIMEOUT) == len(big)
    row = sqlite_app.store.get_job(h.id, full=True)
    assert len(row.input) < 2000 and "__nbjobs_artifact__" in row.input
    assert h.input == {"args": [big], "kwargs": {}}


# -- names -----------------------------------------------------------------------------
@pytest.mark.no_worker(strict=False)
@PROPERTY
@given(workflow=NAMES, step=NAMES, queue=NAMES, key=NAMES)
def test_odd_names_are_stored_exactly_or_refused_clearly(app, workflow, step, queue, key) -> None:
    suffix = f"#{next(_unique)}"
    wf_name, key = workflow + suffix, key + suffix  # fresh per example, odd all the same
    expect_ok = (
        valid_name(wf_name) and valid_name(step) and valid_queue(queue) and valid_name(key, 255)
    )
    try:

        @app.workflow(name=wf_name, queue=queue)
        def odd(cs: nbjobs.CallState, x: int) -> int:
            return cs.checkpoint(step, lambda: x + 1)

        first = odd.options(key=key).submit(1)
        second = odd.options(key=key).submit(2)
        result = odd.options(key=key + "!").run(41)
    except (nbjobs.ConfigurationError, nbjobs.JobFailed) as exc:
        # A bad workflow, queue or key name is refused where it is given; a bad
        # checkpoint name fails the run that uses it.
        message = exc.error if isinstance(exc, nbjobs.JobFailed) else str(exc)
        assert not expect_ok, f"refused a valid name: {message}"
        assert isinstance(exc, nbjobs.ConfigurationError) or message.startswith(
            "ConfigurationError: checkpoint name"
        )
        assert "must" in message or "longer than" in message
        return
    assert expect_ok, "accepted a name nbjobs should refuse"
    assert first.id == second.id  # the key deduplicated
    assert result == 42
    info = first.info()
    assert (info["workflow"], info["queue"], info["key"]) == (wf_name, queue, key)
    (done,) = app.jobs(workflow=wf_name, status="succeeded")
    assert done.checkpoints == {step: 42}
    assert [h.id for h in app.jobs(queue=queue, workflow=wf_name, status="queued")] == [first.id]


@pytest.mark.no_worker
def test_names_differing_only_in_case_or_trailing_space_stay_apart(app) -> None:
    @app.workflow(name="cased")
    def cased(cs: nbjobs.CallState) -> list:
        return [cs.checkpoint(n, lambda n=n: n) for n in ("a", "A", "a ", "ä")]

    assert cased.run() == ["a", "A", "a ", "ä"]
    ids = {cased.options(key=k).submit().id for k in ("Key", "key", "key ", "kéy")}
    assert len(ids) == 4


# -- malformed rows --------------------------------------------------------------------
@pytest.mark.no_worker
def test_rows_nbjobs_cannot_decode_fail_their_own_job_and_the_rest_go_on(app) -> None:
    @app.workflow(name="plain", retries=3)
    def plain(cs: nbjobs.CallState, x: int = 0) -> int:
        cs.checkpoint("first", lambda: x)
        cs.wait_signal("go")
        return x * 2

    garbage = {
        "not json": ("{not json", "stored input cannot be decoded"),
        "a list": ("[1, 2]", "is not {'args'"),
        "bad args": ('{"args": 5, "kwargs": {}}', "is not {'args'"),
        "pickled": ("pickle:gASVBQAAAAAAAACMAXiULg==", "stored with pickle"),
        "truncated": ('{"args": [1', "stored input cannot be decoded"),
    }
    bad = {
        what: app.store.enqueue_job(workflow="plain", input=text, max_retries=3)[0]
        for what, (text, _) in garbage.items()
    }
    good = [plain.submit(i) for i in range(4)]
    app.start(concurrency=3)
    for h in good:
        wait_until(lambda h=h: h.status == "waiting", TIMEOUT, what="good jobs to wait")
    # Corrupt a finished checkpoint of one good job: its replay must fail it, clearly.
    with app.store._write() as conn:
        conn.execute(
            update(checkpoints)
            .where(checkpoints.c.job_id == good[0].id, checkpoints.c.name == "first")
            .values(value="{corrupt")
        )
    for h in good:
        h.signal("go")
    assert [h.result(timeout=TIMEOUT) for h in good[1:]] == [2, 4, 6]
    with pytest.raises(nbjobs.JobFailed, match="SerializationError: a stored value is not valid"):
        good[0].result(timeout=TIMEOUT)
    for what, job_id in bad.items():
        h = app.job(job_id)
        with pytest.raises(nbjobs.JobFailed, match="SerializationError") as info:
            h.result(timeout=TIMEOUT)
        assert garbage[what][1] in info.value.error, (what, info.value.error)
        assert len(h.attempts) == 1, what  # decoding will not get better: no retries


# -- the CLI ---------------------------------------------------------------------------
@pytest.mark.no_worker
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    workflow=st.one_of(NAMES, st.just("listed")),
    status=st.one_of(NAMES, st.sampled_from(["queued", "failed"])),
    limit=st.integers(-5, 10**6),
)
def test_cli_jobs_listing_survives_odd_filters(sqlite_app, workflow, status, limit) -> None:
    @sqlite_app.workflow(name="listed")
    def listed(cs: nbjobs.CallState) -> None:
        return None

    listed.submit()
    out, err = io.StringIO(), io.StringIO()
    argv = ["jobs", f"--url={sqlite_app.url}", f"--workflow={workflow}", f"--status={status}",
            f"--limit={limit}"]  # fmt: skip
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(argv)
    statuses = {"queued", "running", "waiting", "succeeded", "failed", "cancelled"}
    if status not in statuses or not valid_name(workflow) or limit < 1:
        assert code == 2 and err.getvalue().startswith("nbjobs: error: "), err.getvalue()
        return
    assert code == 0, err.getvalue()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("id ")
    queued = sqlite_app.store.count_jobs(status="queued")
    expected = min(limit, queued) if (workflow, status) == ("listed", "queued") else 0
    assert len(lines) - 1 == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["jobs", "--url", "sqlite:////no/such/dir/x.db"], "no nbjobs database at"),
        (["jobs", "--url", "nonsense://'; DROP TABLE x;--"], "unsupported database"),
        (["jobs", "--url", "::::"], "cannot parse database URL"),
        (["worker", "no_such_module_'; --:app"], "cannot import"),
        (["worker", "nbjobs.codec:Codec"], "not an nbjobs.App"),
    ],
)
def test_cli_refuses_bad_arguments_with_a_message_not_a_traceback(argv, message) -> None:
    done = cli(*argv)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
