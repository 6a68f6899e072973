"""The cross-run step cache: ``@nbjobs.step(cache=...)``, ``@app.workflow(cache=...)``,
``app.clear_cache`` and the "cached from job X" marks, on every database."""

from __future__ import annotations

import asyncio
import functools
import os
import textwrap
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import nbjobs
from nbjobs.caching import cached_from, step_fingerprint
from nbjobs.clock import FakeClock
from nbjobs.notebook.display import job_html
from nbjobs.store import cache as store_cache
from nbjobs.views.detail import step_timeline
from tests import backends
from tests.apps.cache_steps import define
from tests.conftest import NO_WORKER, make_app
from tests.support import worker_process

TIMEOUT = 60


def _cell(source: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """Run ``source`` as a notebook cell does: in ``__main__``'s namespace, no file."""
    exec(compile(textwrap.dedent(source), "<cell>", "exec"), namespace)
    return namespace


def _notebook(app: nbjobs.App) -> dict[str, Any]:
    return {"__name__": "__main__", "nbjobs": nbjobs, "app": app, "calls": []}


def _cached_from(h: nbjobs.JobHandle) -> dict[str, Any]:
    frame = h.checkpoints_frame()
    return dict(zip(frame["name"], frame["cached_from"], strict=True))


STEP_CELL = """
@nbjobs.step(cache=True)
def double(x):
    calls.append(("double", x))
    return x * 2
"""

PIPELINE_CELL = """
def add(x, y):
    calls.append(("add", x))
    return x + y

@app.workflow(name="nb")
def nb(cs, x):
    d = cs.checkpoint("double", double, x)
    return cs.checkpoint("add", add, d, 1)
"""


def test_a_cached_step_is_reused_by_later_jobs(app) -> None:
    ns = _cell(PIPELINE_CELL, _cell(STEP_CELL, _notebook(app)))
    assert ns["nb"].run(5) == 11
    assert ns["nb"].run(5) == 11
    assert ns["calls"] == [("double", 5), ("add", 10), ("add", 10)]
    jobs = app.jobs(workflow="nb")
    older, newer = sorted(jobs, key=lambda h: h.id)
    assert _cached_from(older) == {"double": None, "add": None}
    assert _cached_from(newer) == {"double": older.id, "add": None}
    # The hit's value is the same stored text, replayed like any checkpoint.
    assert newer.checkpoints == {"double": 10, "add": 11}
    history = app.history_frame(workflow="nb")
    steps = history[history["kind"] == "step"].set_index(["job_id", "name"])
    assert steps.loc[(newer.id, "double"), "cached_from"] == older.id
    assert pd.isna(steps.loc[(older.id, "double"), "cached_from"])


def test_different_arguments_miss(app) -> None:
    ns = _cell(PIPELINE_CELL, _cell(STEP_CELL, _notebook(app)))
    ns["nb"].run(1)
    ns["nb"].run(2)
    ns["nb"].run(1)
    assert [c for c in ns["calls"] if c[0] == "double"] == [("double", 1), ("double", 2)]


def test_editing_the_step_misses_and_editing_other_code_does_not(app) -> None:
    ns = _cell(PIPELINE_CELL, _cell(STEP_CELL, _notebook(app)))
    ns["nb"].run(3)
    # Unrelated edits: a new cell, the step moved down with a docstring, a new helper.
    _cell("import math\n\nTHRESHOLD = 3\n\ndef unrelated():\n    return math.pi\n", ns)
    moved = STEP_CELL.replace("def double(x):\n", 'def double(x):\n    """Twice x."""\n')
    _cell("\n\n\n# a comment\n" + moved, ns)
    ns["nb"].run(3)
    assert [c for c in ns["calls"] if c[0] == "double"] == [("double", 3)]
    # The body changed: the step runs again, and so does the step after it.
    _cell(STEP_CELL.replace("return x * 2", "return x * 2 + 0"), ns)
    ns["nb"].run(3)
    assert [c for c in ns["calls"] if c[0] == "double"] == [("double", 3), ("double", 3)]
    newest = max(app.jobs(workflow="nb"), key=lambda h: h.id)
    assert _cached_from(newest) == {"double": None, "add": None}


def test_fingerprint_follows_the_function_not_the_cell() -> None:
    def fingerprint(source: str, name: str = "step") -> str:
        return step_fingerprint(_cell(source, {"__name__": "__main__"})[name])

    base = """
    def helper(v):
        return v + 1

    def step(x, scale=2):
        return [helper(i) * scale for i in range(x)]
    """
    same = [
        base,
        "import os\nCONSTANT = 1\n\n\n" + textwrap.dedent(base) + "\ndef other():\n    return 3\n",
        base.replace("def step(x, scale=2):\n", 'def step(x, scale=2):\n        """Doc."""\n'),
    ]
    different = [
        base.replace("* scale", "* scale + 1"),  # the body
        base.replace("v + 1", "v + 2"),  # a helper it calls, edited in its cell
        base.replace("scale=2", "scale=3"),  # a default
        base.replace("for i in range(x)", "for i in range(x + 1)"),  # nested code
    ]
    reference = fingerprint(base)
    assert all(fingerprint(s) == reference for s in same)
    assert len({fingerprint(s) for s in different} | {reference}) == len(different) + 1


def test_ttl_expires_entries(db_url) -> None:
    clock = FakeClock()
    app = make_app(db_url, clock=clock)
    try:
        ns = _notebook(app)
        _cell(STEP_CELL.replace("cache=True", "cache=nbjobs.Cache(ttl=60)"), ns)
        _cell(PIPELINE_CELL, ns)
        ns["nb"].run(4)
        clock.advance(30)
        ns["nb"].run(4)  # 30 s old: reused
        clock.advance(40)
        ns["nb"].run(4)  # 70 s old: computed again, and the entry renewed
        clock.advance(30)
        ns["nb"].run(4)  # the renewed entry is 30 s old
        assert [c for c in ns["calls"] if c[0] == "double"] == [("double", 4)] * 2
        ordered = sorted(app.jobs(workflow="nb"), key=lambda h: h.id)
        sources = [_cached_from(h)["double"] for h in ordered]
        assert sources == [None, ordered[0].id, None, ordered[2].id]
    finally:
        app.close()


def test_clear_cache(app) -> None:
    ns = _cell(PIPELINE_CELL, _cell(STEP_CELL, _notebook(app)))
    ns["nb"].run(7)
    assert app.clear_cache(workflow="elsewhere") == 0
    assert app.clear_cache(workflow="nb", step="add") == 0  # "add" is not cached
    ns["nb"].run(7)
    assert len([c for c in ns["calls"] if c[0] == "double"]) == 1
    assert app.clear_cache(workflow="nb", step="double") == 1
    ns["nb"].run(7)
    assert len([c for c in ns["calls"] if c[0] == "double"]) == 2
    assert app.clear_cache() == 1
    ns["nb"].run(7)
    assert len([c for c in ns["calls"] if c[0] == "double"]) == 3


def test_workflow_cache_and_explicit_version(app) -> None:
    calls: list[str] = []

    def load(n: int) -> list[int]:
        calls.append("load")
        return list(range(n))

    def total(values: list[int]) -> int:
        calls.append("total")
        return sum(values)

    @app.workflow(name="whole", cache=True)
    def whole(cs: nbjobs.CallState, n: int) -> int:
        return cs.checkpoint("total", total, cs.checkpoint("load", load, n))

    assert whole.run(4) == whole.run(4) == 6
    assert calls == ["load", "total"]

    version = {"v": "1"}

    def versioned_step(x: int) -> int:
        calls.append("versioned")
        return x

    @app.workflow(name="versioned")
    def versioned(cs: nbjobs.CallState, x: int) -> int:
        step = nbjobs.step(cache=nbjobs.Cache(version=version["v"]))(
            lambda x: versioned_step(x) + int(version["v"])
        )
        return cs.checkpoint("s", step, x)

    # A new lambda each run, one version: reused; a new version: computed again.
    assert versioned.run(1) == versioned.run(1) == 2
    version["v"] = "2"
    assert versioned.run(1) == 3
    assert calls.count("versioned") == 2


def test_partial_arguments_are_part_of_the_key(app) -> None:
    calls: list[int] = []

    @nbjobs.step(cache=True)
    def scale(factor: int, x: int) -> int:
        calls.append(factor)
        return factor * x

    @app.workflow(name="partial")
    def partial(cs: nbjobs.CallState, factor: int) -> int:
        return cs.checkpoint("scale", functools.partial(scale, factor), 10)

    assert [partial.run(2), partial.run(3), partial.run(2)] == [20, 30, 20]
    assert calls == [2, 3]


def test_async_workflows_reuse_cached_steps(app) -> None:
    calls: list[int] = []

    @nbjobs.step(cache=True)
    async def fetch(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0)
        return x + 100

    @app.workflow(name="async_cached")
    async def flow(cs: nbjobs.CallState, x: int) -> int:
        return await cs.checkpoint("fetch", fetch, x)

    assert flow.run(1) == flow.run(1) == 101
    assert calls == [1]


def test_a_shared_artifact_survives_purging_one_job_and_the_sweep(db_url, tmp_path) -> None:
    clock = FakeClock()
    app = make_app(db_url, clock=clock)
    try:
        runs: list[int] = []

        @nbjobs.step(cache=True)
        def make(n: int) -> pd.DataFrame:
            runs.append(n)
            return pd.DataFrame({"a": range(n), "b": [float(i) / 3 for i in range(n)]})

        @app.workflow(name="frames_cached")
        def frames(cs: nbjobs.CallState, n: int) -> int:
            return len(cs.checkpoint("make", make, n))

        frames.run(50)
        first = app.jobs(workflow="frames_cached")[0]
        clock.advance(100)
        frames.run(50)
        second = next(h for h in app.jobs(workflow="frames_cached") if h != first)
        assert runs == [50] and _cached_from(second)["make"] == first.id
        # Shared, not copied: one artifact, referenced by both checkpoints.
        refs = app.artifacts_frame(workflow="frames_cached")
        assert len(set(refs["sha256"])) == 1 and len(refs) == 2
        path = Path(refs["uri"].iloc[0].removeprefix("file://"))
        assert path.exists()

        assert app.purge(older_than=50) == 1  # the first job only
        with pytest.raises(nbjobs.UnknownJob):
            _ = first.status
        app.sweep_artifacts(grace_seconds=0)
        assert path.exists()
        expected = pd.DataFrame({"a": range(50), "b": [float(i) / 3 for i in range(50)]})
        pd.testing.assert_frame_equal(second.checkpoints["make"], expected)
        # The entry outlived the job that made it, and still serves.
        frames.run(50)
        third = max(app.jobs(workflow="frames_cached"), key=lambda h: h.id)
        assert runs == [50] and _cached_from(third)["make"] == first.id

        # Only once no job and no entry refers to it does the sweep delete it.
        clock.advance(1000)
        assert app.purge(older_than=1) == 2
        app.sweep_artifacts(grace_seconds=0)
        assert path.exists()  # the entry still holds it
        assert app.clear_cache(workflow="frames_cached") == 1
        app.sweep_artifacts(grace_seconds=0)
        assert not path.exists()
    finally:
        app.close()


def test_the_detail_view_and_the_notebook_mark_cached_steps(app) -> None:
    ns = _cell(PIPELINE_CELL, _cell(STEP_CELL, _notebook(app)))
    ns["nb"].run(2)
    ns["nb"].run(2)
    older, newer = sorted(app.jobs(workflow="nb"), key=lambda h: h.id)
    detail = app.store.job_detail(newer.id)
    html = step_timeline(detail["checkpoints"], detail["job"])
    assert f"cached from job {older.id}" in html
    assert html.count("cached from job") == 1
    assert f"cached from job {older.id}" in job_html(newer)
    assert "cached from" not in job_html(older)


#: DuckDB runs nbjobs in one process at a time.
SHARED_BACKENDS = [b for b in backends.AVAILABLE if b != "duckdb"]


@pytest.mark.parametrize("shared_backend", SHARED_BACKENDS)
def test_hits_across_processes(shared_backend, tmp_path, monkeypatch) -> None:
    """An entry made here serves a worker process, and one made there serves this
    process (each runs alone while it makes its entry, so which process ran what is
    known)."""
    ledger = tmp_path / "ledger.txt"
    monkeypatch.setenv("NBJOBS_LEDGER", str(ledger))
    env = {"NBJOBS_LEDGER": str(ledger)}
    with backends.fresh_database(shared_backend, tmp_path) as url:
        app = make_app(url)
        try:
            pipeline = define(app)
            assert pipeline.run(4) == 17
            made_here = max(app.jobs(workflow=pipeline.name), key=lambda h: h.id)
            with worker_process("tests.apps.cache_app:app", url, tmp_path / "w.log", env=env):
                with warnings.catch_warnings():  # the worker may not be up yet
                    warnings.filterwarnings("ignore", NO_WORKER, UserWarning)
                    reused, made_there = pipeline.submit(4), pipeline.submit(3)
                assert reused.result(timeout=TIMEOUT) == 17
                assert made_there.result(timeout=TIMEOUT) == 10
            assert pipeline.run(3) == 10  # the worker is gone: this process runs it
            local = max(app.jobs(workflow=pipeline.name), key=lambda h: h.id)
            assert _cached_from(reused) == {"square": made_here.id, "plus_one": None}
            assert _cached_from(made_there) == {"square": None, "plus_one": None}
            assert _cached_from(local) == {"square": made_there.id, "plus_one": None}
        finally:
            app.close()
    squares = [line.split() for line in ledger.read_text().splitlines() if "square" in line]
    assert [(step, x) for step, x, _pid in squares] == [("square", "4"), ("square", "3")]
    assert squares[0][2] == str(os.getpid()) != squares[1][2]  # one made by each process


@pytest.mark.parametrize("shared_backend", SHARED_BACKENDS)
def test_an_entry_known_here_is_not_served_once_cleared_or_replaced_elsewhere(
    shared_backend, tmp_path
) -> None:
    """A store remembers the entries it made or read, and hits them without reading
    them again; another App on the same database (another process, another memo)
    clears one, then makes a new one: this store's next hits miss, then serve the new
    value, never the one it remembered."""
    computed = iter(range(1, 100))

    @nbjobs.step(cache=nbjobs.Cache(version="1"))
    def fresh(x: int) -> list:
        return [x, next(computed)]

    def define_on(app: nbjobs.App) -> Any:
        @app.workflow(name="known")
        def known(cs: nbjobs.CallState, x: int) -> list:
            return cs.checkpoint("fresh", fresh, x)

        return known

    def newest(app: nbjobs.App) -> nbjobs.JobHandle:
        return max(app.jobs(workflow="known"), key=lambda h: h.id)

    with backends.fresh_database(shared_backend, tmp_path) as url:
        here, there = make_app(url), make_app(url)
        try:
            known_here, known_there = define_on(here), define_on(there)
            assert known_here.run(1) == [1, 1]  # made here: this store knows it
            maker = newest(here)
            if here.store.hits_in_one_statement:
                assert len(here.store._step_memo._entries) == 1
            assert known_here.run(1) == [1, 1]  # a hit of the known entry
            assert _cached_from(newest(here)) == {"fresh": maker.id}
            assert there.clear_cache(workflow="known") == 1
            assert known_here.run(1) == [1, 2]  # cleared there: computed again here
            remade = newest(here)
            assert _cached_from(remade) == {"fresh": None}
            assert known_there.run(1) == [1, 2]  # read there, and known there now
            assert there.clear_cache() == 1
            assert known_there.run(1) == [1, 3]  # replaced there
            replaced = newest(there)
            assert known_here.run(1) == [1, 3]  # here knew [1, 2]: the new entry serves
            assert _cached_from(newest(here)) == {"fresh": replaced.id}
            assert known_here.run(1) == [1, 3]  # and is known here from now on
            assert next(computed) == 4
        finally:
            here.close()
            there.close()


@pytest.mark.parametrize("backend", backends.selected("sqlite", "postgres"))
def test_a_hit_of_a_known_entry_is_fenced_by_the_lease(app) -> None:
    """The hit of an entry the store remembers writes its checkpoint from the entry
    row, only while the job's lease holds (and, lost, tells nothing was written).
    (On MySQL and DuckDB a hit is a read and the step's own fenced write.)"""
    store = app.store
    assert store.hits_in_one_statement

    @app.workflow(name="fenced_hit")
    def fenced_hit(cs: nbjobs.CallState) -> int:
        return 1

    key = "f" * 64
    store.save_cached_step(
        key=key, workflow="fenced_hit", step="s", job_id="maker", value="[1]",
        created_at=store.now(),
    )  # fmt: skip
    known = store._step_memo.get(key)  # the hits below need no read
    assert known is not None and (known.rowid is not None) == store.dialect.rowids
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", NO_WORKER, UserWarning)
        job_id = fenced_hit.submit().id
    (claimed,) = store.claim_jobs(
        worker_id="w", queue="default", workflows=["fenced_hit"], limit=1, lease_seconds=60
    )
    hit = dict(
        key=key, fresh_after=None, job_id=job_id, name="s", seq=1, args_hash=None,
        code_fingerprint=None, attempt=1, started_at=store.now(),
    )  # fmt: skip
    row = store.record_cached_checkpoint(token=claimed.lease_token, **hit)
    assert row is not None and row.value == "[1]"
    assert cached_from(row.detail) == "maker"
    (stored,) = store.load_checkpoints(job_id).values()
    assert stored.value == "[1]" and cached_from(stored.detail) == "maker"
    assert store._step_memo.get(key) is not None
    lost = dict(hit, name="u", seq=2)
    assert store.record_cached_checkpoint(token="taken-over", **lost) is None
    assert list(store.load_checkpoints(job_id)) == ["s"]
    # A job never reuses its own entry, known or not.
    store.save_cached_step(
        key=key, workflow="fenced_hit", step="s", job_id=job_id, value="[2]",
        created_at=store.now(),
    )  # fmt: skip
    again = dict(hit, name="t", seq=3)
    assert store.record_cached_checkpoint(token=claimed.lease_token, **again) is None


def test_the_memo_of_entries_is_bounded(monkeypatch) -> None:
    """At most ``MEMO_ENTRIES`` entries and ``MEMO_CHARS`` characters of values, the
    oldest forgotten first; a value over ``MEMO_CHARS // 64`` is not kept at all."""
    monkeypatch.setattr(store_cache, "MEMO_ENTRIES", 3)
    monkeypatch.setattr(store_cache, "MEMO_CHARS", 64 * 2)
    memo = store_cache._Memo()

    def entry(value: str) -> Any:
        return store_cache._Hit(value, "{}", "job", 1.0)

    for i in range(5):
        memo.put(f"k{i}", entry("x"))
    assert [k for k in (f"k{i}" for i in range(5)) if memo.get(k)] == ["k2", "k3", "k4"]
    memo.put("k4", entry("xxx"))  # over 2 characters: forgotten, not kept
    assert memo.get("k4") is None
    monkeypatch.setattr(store_cache, "MEMO_ENTRIES", 1000)
    for i in range(70):  # 2 characters each: 128 characters hold 64 of them
        memo.put(f"c{i}", entry("xx"))
    kept = [i for i in range(70) if memo.get(f"c{i}")]
    assert kept == list(range(70 - 64, 70)) and memo.get("k3") is None
    known = memo.get("c69")
    memo.drop("c69", entry("xx"))  # only the version it knows is dropped
    assert memo.get("c69") is known
    memo.drop("c69", known)
    assert memo.get("c69") is None
    memo.clear()
    assert memo.get("c68") is None


def test_a_value_loaded_again_is_a_new_object_unless_a_scalar() -> None:
    codec = nbjobs.codec.Codec()
    first, second = codec.loads_again('{"a": [1]}'), codec.loads_again('{"a": [1]}')
    assert first == second == {"a": [1]} and first is not second
    first["a"].append(2)
    assert codec.loads_again('{"a": [1]}') == {"a": [1]}
    assert [codec.loads_again(t) for t in ("3", "3.5", '"s"', "true", "null", None)] == [
        3, 3.5, "s", True, None, None
    ]  # fmt: skip
    assert codec.loads_again("3") == 3 and codec.loads_again("true") is True


@pytest.mark.parametrize(
    "make_bad",
    [
        lambda: nbjobs.step(cache="yes"),
        lambda: nbjobs.step(cache=1),
        lambda: nbjobs.Cache(ttl=-1),
        lambda: nbjobs.Cache(ttl=0),
        lambda: nbjobs.Cache(ttl="1h"),
        lambda: nbjobs.Cache(ttl=float("nan")),
        lambda: nbjobs.Cache(ttl=True),
        lambda: nbjobs.Cache(ttl=timedelta(seconds=-5)),
        lambda: nbjobs.Cache(version=""),
        lambda: nbjobs.Cache(version=3),
    ],
)
def test_bad_cache_values_are_refused(make_bad) -> None:
    with pytest.raises(nbjobs.ConfigurationError, match=r"cache=|Cache\("):
        make_bad()


def test_bad_cache_values_on_the_app(app) -> None:
    with pytest.raises(nbjobs.ConfigurationError, match="cache="):
        app.workflow(name="bad", cache="always")(lambda cs: None)
    with pytest.raises(nbjobs.ConfigurationError, match="workflow"):
        app.clear_cache(workflow="")
    with pytest.raises(nbjobs.ConfigurationError, match="step"):
        app.clear_cache(workflow="nb", step="")


def test_a_callable_object_needs_a_version(app) -> None:
    class Counter:
        def __call__(self, x: int) -> int:
            return x

    @app.workflow(name="callable_object", cache=True)
    def flow(cs: nbjobs.CallState, x: int) -> int:
        return cs.checkpoint("count", Counter(), x)

    with pytest.raises(nbjobs.JobFailed, match=r"Cache\(version="):
        flow.run(1)

    @app.workflow(name="callable_versioned", cache=nbjobs.Cache(version="1"))
    def versioned(cs: nbjobs.CallState, x: int) -> int:
        return cs.checkpoint("count", Counter(), x)

    assert versioned.run(1) == versioned.run(1) == 1


def test_a_run_of_cached_steps_counts_every_step(db_url) -> None:
    """Short hits in a row (one statement each where the database allows, the job row
    left for later): every step is recorded, marked and counted, and an expired entry
    among them misses."""
    clock = FakeClock()
    app = make_app(db_url, clock=clock)
    try:
        calls: list[int] = []

        @nbjobs.step(cache=nbjobs.Cache(ttl=60))
        def part(i: int) -> dict:
            calls.append(i)
            return {"part": i}

        @app.workflow(name="parts", steps=5)
        def parts(cs: nbjobs.CallState, expire: int | None) -> list:
            if expire is not None:
                app.clear_cache(workflow="parts", step=f"p{expire}")
            return [cs.checkpoint(f"p{i}", part, i) for i in range(5)]

        assert parts.run(None) == [{"part": i} for i in range(5)]
        clock.advance(10)
        assert parts.run(2) == [{"part": i} for i in range(5)]
        assert calls == [0, 1, 2, 3, 4, 2]
        first, second = sorted(app.jobs(workflow="parts"), key=lambda h: h.id)
        assert _cached_from(second) == {f"p{i}": (None if i == 2 else first.id) for i in range(5)}
        assert second.info()["steps_done"] == 5
        assert list(second.checkpoints_frame()["seq"]) == [1, 2, 3, 4, 5]
        clock.advance(55)  # every entry older than the ttl but p2's (made 10 s later)
        parts.run(None)
        assert calls == [0, 1, 2, 3, 4, 2, 0, 1, 3, 4]
    finally:
        app.close()


def test_retry_from_a_checkpoint_recomputes_the_job_s_own_cached_steps(app) -> None:
    ns = _cell(PIPELINE_CELL, _cell(STEP_CELL, _notebook(app)))
    # Two cached steps in a row: the second one takes the one-statement hit path.
    _cell(
        """
        @nbjobs.step(cache=True)
        def triple(x):
            calls.append(("triple", x))
            return x * 3

        @app.workflow(name="nb2")
        def nb2(cs, x):
            return cs.checkpoint("double", double, x) + cs.checkpoint("triple", triple, x)
        """,
        ns,
    )
    assert ns["nb2"].run(2) == 10
    h = app.jobs(workflow="nb2")[0]
    with app.running(concurrency=1):
        h.retry(from_checkpoint="double")
        assert h.result(timeout=TIMEOUT) == 10
    # Its own entries are not reused: the steps from "double" on ran again.
    assert ns["calls"] == [("double", 2), ("triple", 2)] * 2
    assert _cached_from(h) == {"double": None, "triple": None}
    assert ns["nb2"].run(2) == 10  # another job reuses them
    assert len(ns["calls"]) == 4


def test_a_bound_method_s_object_is_an_argument(app) -> None:
    calls: list[str] = []

    class Prices:
        def __init__(self, rate: float) -> None:
            self.rate = rate

        def convert(self, amount: float) -> float:
            calls.append("convert")
            return amount * self.rate

    @app.workflow(name="bound", cache=True)
    def bound(cs: nbjobs.CallState, amount: float) -> float:
        return cs.checkpoint("convert", Prices(2.0).convert, amount)

    # A Prices object has no stored form: the step runs every time, never reused with a
    # state the digest cannot see.
    assert bound.run(3.0) == bound.run(3.0) == 6.0
    assert calls == ["convert", "convert"]

    @app.workflow(name="bound_dict", cache=True)
    def bound_dict(cs: nbjobs.CallState, key: str, rates: dict) -> float:
        return cs.checkpoint("get", rates.get, key)  # a builtin bound to a dict: digested

    assert bound_dict.run("a", {"a": 1.5}) == 1.5
    assert bound_dict.run("a", {"a": 2.5}) == 2.5  # another dict, another key


def test_the_benchmark_runs_and_its_cached_jobs_hit() -> None:
    """``benchmarks/bench_cache.py`` at a tiny size: it checks that its cached job hit
    (every checkpoint marked) and prints one row per SQLite mode."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "benchmarks/bench_cache.py", "--steps", "5", "--jobs", "1",
         "--no-postgres"],
        cwd=root, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(root)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines[2:]] == [["SQLite", "NORMAL"], ["SQLite", "FULL"]]
    assert "skipped" not in result.stderr


def test_a_database_made_before_the_cache_gets_its_table_without_a_new_version(db_url) -> None:
    first = make_app(db_url)
    version = first.store.schema_version
    with first.store.engine.begin() as conn:  # as an nbjobs without the cache left it
        conn.exec_driver_sql("DROP TABLE nbjobs_step_cache")
    first.close()
    again = make_app(db_url)
    try:
        assert again.store.schema_version == version
        ns = _cell(PIPELINE_CELL, _cell(STEP_CELL, _notebook(again)))
        ns["nb"].run(1)
        ns["nb"].run(1)
        assert [c for c in ns["calls"] if c[0] == "double"] == [("double", 1)]
    finally:
        again.close()


def test_a_failed_step_makes_no_entry(app) -> None:
    attempts: list[bool] = []
    fail = {"now": True}

    @nbjobs.step(cache=True)
    def flaky(x: int) -> int:
        attempts.append(fail["now"])
        if fail["now"]:
            raise RuntimeError("not yet")
        return x

    @app.workflow(name="flaky")
    def flow(cs: nbjobs.CallState, x: int) -> int:
        return cs.checkpoint("flaky", flaky, x)

    with pytest.raises(nbjobs.JobFailed, match="not yet"):
        flow.run(1)
    fail["now"] = False
    assert flow.run(1) == flow.run(1) == 1
    assert attempts == [True, False]
