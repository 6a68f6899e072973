"""Fan-out / fan-in on real worker threads: strategies, suspension, nesting, cancel, retry.

With ``concurrency=1`` children run one at a time in input order (the waiting parent
holds no slot), which makes "fails early" and "fails late" deterministic.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

import nbjobs
from tests.conftest import make_app
from tests.support import wait_until

TIMEOUT = 60


def strategy(spec: str) -> nbjobs.strategies.Strategy:
    kind, _, n = spec.partition(":")
    return {"fail_fast": nbjobs.FailFast, "collect_all": nbjobs.CollectAll}.get(
        kind, lambda: nbjobs.Threshold(int(n))
    )()


def define(app: nbjobs.App, *, catch: bool = True):
    """A child that doubles x (fails for x in ``bad``) and a parent that fans out to it."""

    @app.workflow
    def child(cs: nbjobs.CallState, x: int, bad: list[int]) -> int:
        if x in bad:
            raise ValueError(f"bad {x}")
        return x * 2

    @app.workflow
    def parent(cs: nbjobs.CallState, xs: list[int], bad: list[int], how: str) -> dict:
        specs = [child.spec(x, bad) for x in xs]
        try:
            outcomes = cs.fan_out("kids", specs, strategy=strategy(how))
        except nbjobs.FanOutError as exc:
            if not catch:
                raise
            return {"raised": True, "outcomes": [[o.status, o.value] for o in exc.outcomes]}
        return {"raised": False, "outcomes": [[o.status, o.value] for o in outcomes]}

    return child, parent


@pytest.mark.parametrize("how", ["fail_fast", "collect_all", "threshold:4"])
def test_all_children_succeed_in_input_order(app: nbjobs.App, how: str) -> None:
    _child, parent = define(app)
    app.start(concurrency=4)
    h = parent.submit([3, 1, 4, 1], [], how)
    result = h.result(timeout=TIMEOUT)
    assert result == {
        "raised": False,
        "outcomes": [["succeeded", 6], ["succeeded", 2], ["succeeded", 8], ["succeeded", 2]],
    }
    kids = h.children
    assert [k.input["args"][0] for k in kids] == [3, 1, 4, 1]
    for k in kids:
        info = k.info()
        assert (info["parent_id"], info["root_id"], info["fanout"]) == (h.id, h.id, "kids")
    assert h.progress == 1.0
    # The parent gave up its slot while waiting: one attempt suspended, one finished.
    assert [a["outcome"] for a in h.attempts] == ["suspended", "succeeded"]


def test_fail_fast_early_failure_cancels_queued_siblings(app: nbjobs.App) -> None:
    _child, parent = define(app, catch=False)
    app.start(concurrency=1)
    h = parent.submit([0, 1, 2, 3, 4], [0], "fail_fast")
    with pytest.raises(nbjobs.JobFailed, match="FanOutError"):
        h.result(timeout=TIMEOUT)
    kids = h.children
    assert [k.status for k in kids] == ["failed"] + ["cancelled"] * 4
    assert [k.info()["attempts"] for k in kids[1:]] == [0, 0, 0, 0]  # never started


def test_fail_fast_late_failure(app: nbjobs.App) -> None:
    _child, parent = define(app)
    app.start(concurrency=1)
    result = parent.submit([0, 1, 2, 3], [3], "fail_fast").result(timeout=TIMEOUT)
    assert result == {
        "raised": True,
        "outcomes": [["succeeded", 0], ["succeeded", 2], ["succeeded", 4], ["failed", None]],
    }


def test_collect_all_waits_for_every_child_and_never_raises(app: nbjobs.App) -> None:
    _child, parent = define(app)
    app.start(concurrency=2)
    h = parent.submit([0, 1, 2, 3], [0, 2], "collect_all")
    assert h.result(timeout=TIMEOUT) == {
        "raised": False,
        "outcomes": [["failed", None], ["succeeded", 2], ["failed", None], ["succeeded", 6]],
    }


def test_failures_beyond_threshold_raise_at_once(app: nbjobs.App) -> None:
    _child, parent = define(app)
    app.start(concurrency=1)
    h = parent.submit([0, 1, 2, 3], [0, 1], "threshold:3")
    assert h.result(timeout=TIMEOUT) == {
        "raised": True,
        "outcomes": [["failed", None], ["failed", None], ["cancelled", None], ["cancelled", None]],
    }


def test_threshold_met_cancels_the_running_rest(app: nbjobs.App) -> None:
    release = threading.Event()

    @app.workflow
    def quick(cs: nbjobs.CallState, x: int) -> int:
        return x

    @app.workflow
    def slow(cs: nbjobs.CallState, x: int) -> int:
        for k in range(2000):  # a step boundary every 20 ms, where a cancel is seen
            if cs.checkpoint(f"tick-{k}", release.wait, 0.02):
                break
        return x

    @app.workflow
    def parent(cs: nbjobs.CallState) -> list:
        specs = [slow.spec(0), quick.spec(1), slow.spec(2), quick.spec(3)]
        outcomes = cs.fan_out("kids", specs, strategy=nbjobs.Threshold(2))
        return [[o.status, o.value] for o in outcomes]

    app.start(concurrency=4)
    h = parent.submit()
    try:
        result = h.result(timeout=TIMEOUT)
        assert result == [
            ["cancelled", None],
            ["succeeded", 1],
            ["cancelled", None],
            ["succeeded", 3],
        ]
        # The running slow children stop at their next step boundary.
        kids = h.children
        wait_until(lambda: kids[0].status == kids[2].status == "cancelled", TIMEOUT, what="stop")
    finally:
        release.set()


def test_empty_fan_out_returns_at_once(app: nbjobs.App) -> None:
    _child, parent = define(app)

    @app.workflow
    def needs_one(cs: nbjobs.CallState) -> str:
        try:
            cs.fan_out("none", [], strategy=nbjobs.Threshold(1))
        except nbjobs.FanOutError as exc:
            return f"impossible: {exc.outcomes}"
        return "no"

    app.start(concurrency=1)
    for how in ("fail_fast", "collect_all"):
        h = parent.submit([], [], how)
        assert h.result(timeout=TIMEOUT) == {"raised": False, "outcomes": []}
        assert h.children == []
        assert [a["outcome"] for a in h.attempts] == ["succeeded"]  # never suspended
    assert needs_one.submit().result(timeout=TIMEOUT) == "impossible: []"


def test_concurrency_one_parent_with_fifty_children_completes(app: nbjobs.App) -> None:
    _child, parent = define(app)
    app.start(concurrency=1)
    h = parent.submit(list(range(50)), [], "fail_fast")
    result = h.result(timeout=TIMEOUT)
    assert [v for _, v in result["outcomes"]] == [2 * x for x in range(50)]
    assert len(h.children) == 50


def test_nested_fan_out_three_levels(app: nbjobs.App) -> None:
    @app.workflow
    def leaf(cs: nbjobs.CallState, x: int) -> int:
        return x

    @app.workflow
    def middle(cs: nbjobs.CallState, base: int) -> int:
        outcomes = cs.fan_out("leaves", [leaf.spec(base + i) for i in range(3)])
        return sum(o.value for o in outcomes)

    @app.workflow
    async def root(cs: nbjobs.CallState) -> int:
        outcomes = await cs.fan_out("middles", [middle.spec(10 * i) for i in range(3)])
        return sum(o.value for o in outcomes)

    app.start(concurrency=2)
    h = root.submit()
    assert h.result(timeout=TIMEOUT) == sum(10 * i + j for i in range(3) for j in range(3))
    middles = h.children
    assert len(middles) == 3
    for m in middles:
        leaves = m.children
        assert [leaf_h.result(timeout=1) for leaf_h in leaves] == [
            m.input["args"][0] + j for j in range(3)
        ]
        for leaf_h in leaves:
            assert leaf_h.info()["root_id"] == h.id
            assert leaf_h.info()["parent_id"] == m.id


def test_cancel_root_cancels_every_descendant(app: nbjobs.App) -> None:
    release = threading.Event()

    @app.workflow
    def leaf(cs: nbjobs.CallState, x: int) -> int:
        for k in range(2000):
            if cs.checkpoint(f"tick-{k}", release.wait, 0.02):
                break
        return x

    @app.workflow
    def middle(cs: nbjobs.CallState, base: int) -> int:
        return sum(o.value for o in cs.fan_out("leaves", [leaf.spec(base + i) for i in range(3)]))

    @app.workflow
    def root(cs: nbjobs.CallState) -> int:
        return sum(o.value for o in cs.fan_out("middles", [middle.spec(i) for i in range(3)]))

    app.start(concurrency=3)
    h = root.submit()
    try:
        # Every middle is waiting, the first leaves are running and the rest queued.
        wait_until(
            lambda: (
                len(h.children) == 3
                and all(m.status == "waiting" and len(m.children) == 3 for m in h.children)
                and any(leaf_h.status == "running" for m in h.children for leaf_h in m.children)
            ),
            TIMEOUT,
            what="the tree to grow",
        )
        assert h.status == "waiting"
        assert 0.0 <= h.progress < 1.0
        assert h.cancel() == "cancelled"
        everyone = [m for m in h.children] + [x for m in h.children for x in m.children]
        wait_until(lambda: all(j.status == "cancelled" for j in everyone), TIMEOUT, what="cascade")
    finally:
        release.set()
    with pytest.raises(nbjobs.JobCancelled):
        h.result(timeout=1)


def test_retrying_a_failed_parent_reruns_only_unsuccessful_children(app: nbjobs.App) -> None:
    @app.workflow
    def flaky(cs: nbjobs.CallState, x: int) -> int:
        if x == 2 and cs.attempt == 1:
            raise RuntimeError("first try fails")
        return x

    @app.workflow
    def parent(cs: nbjobs.CallState) -> list:
        return [o.value for o in cs.fan_out("kids", [flaky.spec(x) for x in range(4)])]

    app.start(concurrency=1)
    h = parent.submit()
    with pytest.raises(nbjobs.JobFailed, match="FanOutError"):
        h.result(timeout=TIMEOUT)
    assert [k.status for k in h.children] == ["succeeded", "succeeded", "failed", "cancelled"]
    h.retry()
    assert h.result(timeout=TIMEOUT) == [0, 1, 2, 3]
    kids = h.children
    assert len(kids) == 4
    assert [k.info()["attempts"] for k in kids] == [1, 1, 2, 1]


def test_async_child_and_bad_arguments(app: nbjobs.App) -> None:
    @app.workflow
    async def achild(cs: nbjobs.CallState, x: int) -> int:
        return await cs.checkpoint("square", lambda: x * x)

    @app.workflow
    def parent(cs: nbjobs.CallState) -> list:
        return [o.value for o in cs.fan_out("kids", [achild.spec(x) for x in range(5)])]

    @app.workflow
    def twice(cs: nbjobs.CallState) -> None:
        cs.fan_out("same", [achild.spec(1)])
        cs.fan_out("same", [achild.spec(2)])

    @app.workflow
    def not_specs(cs: nbjobs.CallState) -> None:
        cs.fan_out("kids", [1, 2])

    app.start(concurrency=2)
    assert parent.submit().result(timeout=TIMEOUT) == [0, 1, 4, 9, 16]
    with pytest.raises(nbjobs.JobFailed, match="DuplicateCheckpoint"):
        twice.submit().result(timeout=TIMEOUT)
    with pytest.raises(nbjobs.JobFailed, match=r"child\.spec"):
        not_specs.submit().result(timeout=TIMEOUT)


def test_strategies_are_validated_and_comparable() -> None:
    with pytest.raises(nbjobs.ConfigurationError):
        nbjobs.Threshold(0)
    assert nbjobs.Threshold(2) == nbjobs.Threshold(2) != nbjobs.Threshold(3)
    assert repr(nbjobs.FailFast()) == "FailFast()"
    assert nbjobs.Outcome("succeeded", 1).ok and not nbjobs.Outcome("failed").ok


def test_recovery_sweep_resumes_a_parent_whose_fan_in_was_missed(app: nbjobs.App) -> None:
    """Children finished by a path that skipped the fan-in (as a crash between a child's
    end and its parent's resume would): the workers' sweep decides and resumes."""
    from sqlalchemy import update

    from nbjobs.schema import jobs

    @app.workflow
    def child(cs: nbjobs.CallState, x: int) -> int:
        return x

    @app.workflow
    def parent(cs: nbjobs.CallState) -> list:
        specs = [child.options(queue="elsewhere").spec(x) for x in range(3)]
        return [o.value for o in cs.fan_out("kids", specs)]

    app.start(concurrency=1)  # serves only the default queue: the children stay queued
    h = parent.submit()
    wait_until(lambda: h.status == "waiting" and len(h.children) == 3, TIMEOUT, what="fan-out")
    with app.store._write() as conn:  # finish the children behind the fan-in's back
        for k in h.children:
            x = k.input["args"][0]
            conn.execute(
                update(jobs).where(jobs.c.id == k.id).values(status="succeeded", result=str(x))
            )
    assert h.result(timeout=TIMEOUT) == [0, 1, 2]


def test_a_decided_fanout_failure_is_not_retried_automatically(app: nbjobs.App) -> None:
    """Replaying would only replay the recorded outcomes: the parent fails at once, and
    ``h.retry()`` is the way to re-run the failed children."""
    child, _parent = define(app)

    @app.workflow(retries=3)
    def strict(cs: nbjobs.CallState) -> list:
        return cs.fan_out("kids", [child.spec(x, [2]) for x in (1, 2)], strategy=nbjobs.FailFast())

    app.start(concurrency=2)
    h = strict.submit()
    with pytest.raises(nbjobs.JobFailed, match="FanOutError"):
        h.result(timeout=TIMEOUT)
    assert [a["outcome"] for a in h.attempts][-1] == "failed"
    assert app.store.get_job(h.id).failures == 1


@pytest.mark.no_worker
def test_a_user_key_cannot_take_a_childs_key(app: nbjobs.App) -> None:
    """Children's idempotency keys live in nbjobs' own namespace: a user job submitted
    with the key a child would have had (the old ``{parent}/{fan-out}/{index}`` form)
    does not fail the fan-out, and keys in that namespace are refused."""
    _child, parent = define(app)
    h = parent.submit([1, 2], [], "collect_all")
    squatter = _child.options(key=f"{h.id}/kids/0").submit(5, [])
    app.start(concurrency=2)
    assert h.result(timeout=TIMEOUT) == {
        "raised": False,
        "outcomes": [["succeeded", 2], ["succeeded", 4]],
    }
    assert squatter.result(timeout=TIMEOUT) == 10
    assert [k.info()["key"] for k in h.children] == [f"nbjobs:{h.id}/kids/{i}" for i in (0, 1)]
    for key in (f"nbjobs:{h.id}/kids/1", "nbjobs:"):
        with pytest.raises(nbjobs.ConfigurationError, match="reserved"):
            _child.options(key=key).submit(5, [])


@pytest.mark.parametrize("strategy_", [nbjobs.FailFast(), nbjobs.CollectAll()])
def test_the_pending_shortcut_agrees_with_the_counts(
    strategy_: nbjobs.strategies.Strategy,
) -> None:
    """A child's fan-in check answers from "a sibling is still queued" and "a sibling
    failed" alone where the strategy can: that answer must be ``could_decide``'s for
    every split of the children with at least one still queued."""
    checked = 0
    for total in range(1, 8):
        for succeeded in range(total):
            for not_ok in range(total - succeeded):
                for running in range(total - succeeded - not_ok):  # >= 1 left queued
                    verdict = strategy_.could_decide_pending(not_ok > 0)
                    assert verdict is not None
                    assert verdict == strategy_.could_decide(total, succeeded, not_ok, running)
                    # The decision under the parent's lock asks the same with some child
                    # not ended (queued or running alike).
                    assert verdict == strategy_.decided(total, succeeded + running, not_ok)
                    assert verdict == strategy_.decided(total, succeeded, not_ok)
                    checked += 1
    assert checked > 100


def test_threshold_counts_its_children_while_some_are_queued() -> None:
    """Threshold(n) needs the counts (how many succeeded), so it gives no shortcut."""
    assert nbjobs.Threshold(3).could_decide_pending(True) is None
    assert nbjobs.Threshold(3).could_decide_pending(False) is None


@pytest.mark.parametrize(
    ("how", "succeeded"),
    [("fail_fast", None), ("collect_all", 29), ("threshold:20", 20)],
)
def test_the_fan_in_agrees_with_the_children_it_was_decided_from(
    app: nbjobs.App, how: str, succeeded: int | None
) -> None:
    """Thirty children, one of which fails, most of them still queued when their
    siblings end: each strategy decides exactly when its counts say so (not earlier:
    CollectAll waits for all 29 successes; not later: Threshold(20) cancels the rest at
    the 20th), and every outcome is the status the child's own row has."""

    @app.workflow
    def kid(cs: nbjobs.CallState, x: int) -> int:
        if x == 3:
            raise ValueError("bad 3")
        return x

    @app.workflow
    def boss(cs: nbjobs.CallState, how: str) -> list:
        specs = [kid.spec(x) for x in range(30)]
        try:
            outcomes = cs.fan_out("kids", specs, strategy=strategy(how))
        except nbjobs.FanOutError as exc:
            outcomes = exc.outcomes
        return [[o.status, o.job_id] for o in outcomes]

    app.start(concurrency=1)
    outcomes = boss.submit(how).result(timeout=TIMEOUT)
    statuses = [status for status, _ in outcomes]
    assert set(statuses) <= {"succeeded", "failed", "cancelled"}
    assert statuses.count("failed") <= 1 and statuses[3] in ("failed", "cancelled")
    if succeeded is None:  # FailFast: decided by the failure, the unfinished cancelled
        assert statuses[3] == "failed"
        assert statuses.count("succeeded") + statuses.count("cancelled") == 29
    else:
        assert statuses.count("succeeded") == succeeded
    for status, job_id in outcomes:
        # A child claimed ahead when the fan-in was decided is asked to stop: its row
        # ends a moment later, as the outcome already says.
        wait_until(lambda j=job_id: app.job(j).status in ("succeeded", "failed", "cancelled"))
        assert app.job(job_id).status == status


def test_children_claimed_ahead_start_in_input_order(app: nbjobs.App) -> None:
    """Short children are claimed ahead in batches (up to 16 per slot); on one slot they
    still start in input order: the jobs a finish claims queue behind those claimed
    ahead before it, never before them."""
    started: list[int] = []

    @app.workflow
    def kid(cs: nbjobs.CallState, x: int) -> int:
        started.append(x)
        return x

    @app.workflow
    def boss(cs: nbjobs.CallState, n: int, how: str) -> int:
        outcomes = cs.fan_out("kids", [kid.spec(x) for x in range(n)], strategy=strategy(how))
        return sum(o.value for o in outcomes if o.ok)

    app.start(concurrency=1)
    for how in ("collect_all", "threshold:60"):  # successes shared, and committed one by one
        started.clear()
        assert boss.submit(60, how).result(timeout=TIMEOUT) == sum(range(60))
        assert started == list(range(60))


@pytest.mark.no_worker(strict=False)
@pytest.mark.parametrize(("how", "succeeded"), [("collect_all", 6), ("threshold:2", 2)])
def test_children_recorded_in_one_group_commit(app: nbjobs.App, how: str, succeeded: int) -> None:
    """Successes of children left to one shared commit (the worker's write-behind) are
    recorded together and their fan-in decided in that commit; a fan-in that counts
    successes is still decided at the n-th (those are recorded one by one in it)."""

    @app.workflow(name="held_kid", queue="held")  # no worker serves it: claimed here
    def kid(cs: nbjobs.CallState, x: int) -> int:
        return x

    @app.workflow
    def boss(cs: nbjobs.CallState, how: str) -> list:
        outcomes = cs.fan_out("kids", [kid.spec(x) for x in range(6)], strategy=strategy(how))
        return [o.status for o in outcomes]

    app.start(concurrency=1, queues=["default"])
    h = boss.submit(how)
    wait_until(lambda: h.status == "waiting", TIMEOUT, what="the fan-out")
    store = app.store
    claimed = store.claim_jobs(
        worker_id="test", queue="held", workflows=["held_kid"], limit=6, lease_seconds=60
    )
    assert len(claimed) == 6 and {j.parent_id for j in claimed} == {h.id}
    assert {j.fanout for j in claimed} == {"kids"}
    assert list(_finish_together(store, claimed).values()) == [True] * 6
    statuses = h.result(timeout=TIMEOUT)
    assert statuses.count("succeeded") == succeeded
    assert statuses.count("cancelled") == 6 - succeeded


@pytest.mark.no_worker(strict=False)
@pytest.mark.parametrize("together", [False, True], ids=["alone", "group-commit"])
def test_a_child_that_ends_after_its_fan_in_was_decided_ends_cancelled(
    app: nbjobs.App, together: bool
) -> None:
    """Threshold(2) decided by the first two children counts the two still running as
    cancelled; when those end afterwards (they were asked to stop too late), their rows
    say cancelled as well, so a row never contradicts the outcome its parent got."""

    boss = _held_fanout(app, "late_kid", 4, nbjobs.Threshold(2))

    app.start(concurrency=1, queues=["default"])
    h = boss.submit()
    wait_until(lambda: h.status == "waiting", TIMEOUT, what="the fan-out")
    store = app.store
    claimed = store.claim_jobs(
        worker_id="test", queue="held", workflows=["late_kid"], limit=4, lease_seconds=60
    )
    assert len(claimed) == 4
    first, late = claimed[:2], claimed[2:]
    for job in first:  # the second success decides the fan-in
        assert store.finish_job(
            job_id=job.id,
            token=job.lease_token,
            attempt=job.attempt,
            status=nbjobs.Status.SUCCEEDED,
            result="1",
        )
    outcomes = dict((job_id, status) for status, job_id in h.result(timeout=TIMEOUT))
    assert [outcomes[j.id] for j in late] == ["cancelled", "cancelled"]
    if together:
        assert len(_finish_together(store, late)) == 2
    else:
        for job in late:
            store.finish_job(
                job_id=job.id,
                token=job.lease_token,
                attempt=job.attempt,
                status=nbjobs.Status.SUCCEEDED,
                result="1",
            )
    for job in claimed:
        assert app.job(job.id).status == outcomes[job.id]
    assert [app.job(j.id).error for j in late] == [
        "cancelled: the fan-out was decided without it"
    ] * 2


def _held_fanout(app: nbjobs.App, kid_name: str, count: int, strategy_: Any) -> Any:
    """A parent fanning out to ``count`` children of a queue no worker serves (the test
    claims and ends them itself); it returns each child's [status, job id]."""

    @app.workflow(name=kid_name, queue="held")
    def kid(cs: nbjobs.CallState, x: int) -> int:
        return x

    @app.workflow
    def boss(cs: nbjobs.CallState) -> list:
        try:
            outcomes = cs.fan_out("kids", [kid.spec(x) for x in range(count)], strategy=strategy_)
        except nbjobs.FanOutError as exc:
            outcomes = exc.outcomes
        return [[o.status, o.job_id] for o in outcomes]

    return boss


def _finish_together(store, claimed: list) -> dict[str, object]:
    """Leave the successes of ``claimed`` to one shared commit (as a worker's write-behind
    does), run it, and return each job's outcome by id."""
    done: dict[str, object] = {}
    for job in claimed:
        store.finish_later(
            job_id=job.id,
            token=job.lease_token,
            attempt=job.attempt,
            result="1",
            done=lambda outcome, job_id=job.id: done.__setitem__(job_id, outcome),
            parent_id=job.parent_id,
        )
    store.flush()
    return done


@pytest.mark.no_worker(strict=False)
def test_fail_fast_agrees_with_a_sibling_ending_in_a_concurrent_transaction(
    app: nbjobs.App, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child's success checks its FailFast fan-in without the parent's lock while a
    sibling is still queued.  A failing sibling deciding the fan-in between that check
    and the success's commit must not count the succeeding child "cancelled" while its
    row says succeeded: the check holds the fan-in under a shared lock until it commits,
    so the decision waits for it and then sees the success.  (The two ends are
    recorded through two stores, as two workers would: one store commits one at a time.)"""

    boss = _held_fanout(app, "racing_kid", 3, nbjobs.FailFast())

    app.start(concurrency=1, queues=["default"])
    h = boss.submit()
    wait_until(lambda: h.status == "waiting", TIMEOUT, what="the fan-out")
    store = app.store
    failing, succeeding = store.claim_jobs(  # the third stays queued
        worker_id="test", queue="held", workflows=["racing_kid"], limit=2, lease_seconds=60
    )
    checked, go = threading.Event(), threading.Event()
    real_check = store._check_fanin

    def check_then_pause(conn, parent):  # the success's check, then a pause before commit
        decided = real_check(conn, parent)
        if threading.current_thread().name == "success":
            checked.set()
            go.wait(5)
        return decided

    monkeypatch.setattr(store, "_check_fanin", check_then_pause)

    other_app = make_app(db_url)  # closed below: its pool's connections with it
    other = other_app.store

    def finish(job, status: nbjobs.Status) -> None:
        (store if status == nbjobs.Status.SUCCEEDED else other).finish_job(
            job_id=job.id,
            token=job.lease_token,
            attempt=job.attempt,
            status=status,
            result="1" if status == nbjobs.Status.SUCCEEDED else None,
            error=None if status == nbjobs.Status.SUCCEEDED else "ValueError: bad",
        )

    success = threading.Thread(target=finish, args=(succeeding, nbjobs.Status.SUCCEEDED))
    success.name = "success"
    failure = threading.Thread(target=finish, args=(failing, nbjobs.Status.FAILED))
    try:
        success.start()
        assert checked.wait(TIMEOUT)
        failure.start()
        failure.join(1.0)  # the decision, if it does not wait for the success's commit
        go.set()
        success.join(TIMEOUT)
        failure.join(TIMEOUT)
    finally:
        go.set()
        other_app.close()
    outcomes = {job_id: status for status, job_id in h.result(timeout=TIMEOUT)}
    assert outcomes[failing.id] == "failed"
    for job_id, status in outcomes.items():
        wait_until(lambda j=job_id: app.job(j).status in ("succeeded", "failed", "cancelled"))
        assert app.job(job_id).status == status, job_id
