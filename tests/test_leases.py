"""The lease renewal (nbjobs/runtime/leases.py): a lease the run released itself is not
a takeover."""

from __future__ import annotations

import dataclasses
import logging

import nbjobs
from nbjobs.options import Options
from nbjobs.runtime.execution import Execution
from nbjobs.runtime.leases import renew

HOLDER = "test-holder"


def _running(app: nbjobs.App, wf) -> Execution:
    """A job of ``wf`` claimed by HOLDER, and its (not started) run."""
    runtime = app.runtime
    fields = runtime.job_fields(wf, (), {}, Options())
    claim, _ = runtime.store.enqueue_running(worker_id=HOLDER, lease_seconds=30, **fields)
    assert claim is not None
    return Execution(runtime, claim, wf)


def test_a_lease_released_by_the_runs_own_outcome_is_not_reported_lost(app, caplog):
    @app.workflow(name="flaky", retries=2)
    def flaky(cs: nbjobs.CallState) -> int:
        return 1

    execution = _running(app, flaky)
    job_id = execution.job.id
    # The run commits its outcome, a retry (the job is queued again, its lease gone);
    # the heartbeat, which took its list of leases before that, renews after it and
    # before the run is done: the race wf.run's retries hit.
    execution._record_exception(ValueError("boom"))
    assert not execution.done.is_set()
    with caplog.at_level(logging.WARNING, logger="nbjobs"):
        lost, _ = renew(app.runtime, HOLDER, {job_id: execution}, {job_id: execution.token})
    assert lost == {(job_id, execution.token)}  # the store no longer knows the lease...
    assert not execution.lost  # ...but the run is not stopped
    assert "lease lost" not in caplog.text
    assert app.store.get_job(job_id).status == "queued"


def test_a_lease_taken_over_stops_the_run_with_a_warning(app, caplog):
    @app.workflow(name="slow")
    def slow(cs: nbjobs.CallState) -> int:
        return 1

    execution = _running(app, slow)
    job_id = execution.job.id
    # Another holder took the job over: the lease this run holds is not the row's.
    stale = "0" * len(execution.token)
    execution.job = dataclasses.replace(execution.job, lease_token=stale)
    with caplog.at_level(logging.WARNING, logger="nbjobs"):
        lost, _ = renew(app.runtime, HOLDER, {job_id: execution}, {job_id: stale})
    assert lost == {(job_id, stale)}
    assert execution.lost and execution.stopping.is_set()
    assert f"job {job_id}: lease lost" in caplog.text
