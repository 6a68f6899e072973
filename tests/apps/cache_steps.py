"""Cached steps shared by a test process and a worker process (``cache_app``): the
same code in both, so the same fingerprints, and a ledger line per step that runs."""

from __future__ import annotations

import nbjobs
from tests.apps.events import record


@nbjobs.step(cache=True)
def square(x: int) -> int:
    record(f"square {x}")
    return x * x


def plus_one(x: int) -> int:
    record(f"plus_one {x}")
    return x + 1


def define(app: nbjobs.App) -> nbjobs.workflow.Workflow:
    """Register the pipeline on ``app``: a cached step, then an uncached one."""

    @app.workflow(name="cached_pipeline")
    def pipeline(cs: nbjobs.CallState, x: int) -> int:
        squared = cs.checkpoint("square", square, x)
        return cs.checkpoint("plus_one", plus_one, squared)

    return pipeline
