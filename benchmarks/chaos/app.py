"""The worker app of the chaos harness: ``nbjobs worker benchmarks.chaos.app:app``.

It reads ``NBJOBS_URL``.  Fast timings so that a killed worker's jobs come back within a
few seconds; ``max_reclaims`` is high because the harness kills workers on purpose, often
several times while one job runs (poison jobs are tested in tests/test_poison.py).
"""

from __future__ import annotations

import asyncio
import os

import nbjobs
from benchmarks.chaos.ledger import CAPPED_QUEUE, RATED_QUEUE, body, effect, flaky

app = nbjobs.App(
    os.environ["NBJOBS_URL"],
    heartbeat_seconds=0.5,
    stale_after_seconds=3.0,
    poll_seconds=0.2,
    retry_backoff_seconds=0.05,
    retry_backoff_max_seconds=0.5,
    max_reclaims=1000,
)

STRATEGIES = {
    "fail_fast": lambda n, m: nbjobs.FailFast(),
    "collect_all": lambda n, m: nbjobs.CollectAll(),
    "threshold": lambda n, m: nbjobs.Threshold(m),
}


def _steps(cs: nbjobs.CallState, plan: dict) -> None:
    for i in range(plan["steps"]):
        cs.checkpoint(f"fx-{i}", effect, cs.job_id, f"fx-{i}", cs.attempt, plan["work"])


@app.workflow(name="chaos.pipeline", retries=3)
def pipeline(cs: nbjobs.CallState, plan: dict) -> dict:
    """Steps with effects, then optionally a flaky step, a timer and signals."""
    _steps(cs, plan)
    if plan.get("flaky"):
        cs.checkpoint("flaky", flaky, cs.job_id)
    if plan.get("sleep"):
        cs.sleep("nap", plan["sleep"])
        cs.checkpoint("fx-woke", effect, cs.job_id, "fx-woke", cs.attempt)
    got = [cs.wait_signal("go") for _ in range(plan.get("signals", 0))]
    return {"signals": got}


@app.workflow(name="chaos.async", retries=3)
async def async_pipeline(cs: nbjobs.CallState, plan: dict) -> dict:
    for i in range(plan["steps"]):
        await cs.checkpoint(f"fx-{i}", effect, cs.job_id, f"fx-{i}", cs.attempt, plan["work"])
        await asyncio.sleep(0)
    if plan.get("sleep"):
        await cs.sleep("nap", plan["sleep"])
        await cs.checkpoint("fx-woke", effect, cs.job_id, "fx-woke", cs.attempt)
    got = [await cs.wait_signal("go") for _ in range(plan.get("signals", 0))]
    return {"signals": got}


@app.workflow(name="chaos.leaf", retries=1)
def leaf(cs: nbjobs.CallState, plan: dict) -> int:
    _steps(cs, plan)
    if plan.get("fail"):
        raise ValueError("this leaf fails on purpose")
    return plan["steps"]


@app.workflow(name="chaos.fanout", retries=2)
def fanout(cs: nbjobs.CallState, plan: dict) -> dict:
    """A step, a fan-out under the plan's strategy (children may fan out again), a step."""
    cs.checkpoint("fx-before", effect, cs.job_id, "fx-before", cs.attempt)
    specs = [(fanout if child.get("children") else leaf).spec(child) for child in plan["children"]]
    strategy = STRATEGIES[plan["strategy"]](len(specs), plan.get("threshold", 1))
    try:
        outcomes = cs.fan_out("kids", specs, strategy=strategy)
        raised = False
    except nbjobs.FanOutError as exc:
        outcomes, raised = exc.outcomes, True
    cs.checkpoint("fx-after", effect, cs.job_id, "fx-after", cs.attempt)
    return {"raised": raised, "statuses": [o.status for o in outcomes]}


@app.workflow(name="chaos.tick")
def tick(cs: nbjobs.CallState) -> str:
    cs.checkpoint("fx-tick", effect, cs.job_id, "fx-tick", cs.attempt)
    return "ticked"


@app.workflow(name="chaos.capped", queue=CAPPED_QUEUE)
def capped(cs: nbjobs.CallState, plan: dict) -> str:
    """A body under the queue's concurrency limit, in the bodies ledger."""
    body(cs.job_id, cs.attempt, CAPPED_QUEUE, plan["work"])
    return "capped"


@app.workflow(name="chaos.rated", queue=RATED_QUEUE)
def rated(cs: nbjobs.CallState, plan: dict) -> str:
    """A body under the queue's rate limit, in the bodies ledger."""
    body(cs.job_id, cs.attempt, RATED_QUEUE, plan["work"])
    return "rated"
