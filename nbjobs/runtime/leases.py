"""The heartbeat of held leases, shared by a worker and by ``wf.run``'s inline runner.

Whoever runs jobs holds a lease on each and renews them together: one write per
heartbeat.  The answer says which leases were lost (another worker reaped the job) and
which jobs have a cancel request; the executions concerned are told, and stop at their
next step.  Timeouts are checked on the same beat.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .context import Runtime
    from .execution import Execution

log = logging.getLogger(__name__)


def expire_overdue(executions: Iterable[Execution], now: float) -> None:
    """Stop (fail or retry) the executions whose timeout has passed."""
    for execution in executions:
        if execution.deadline is not None and now >= execution.deadline:
            execution.expire()


def renew(
    runtime: Runtime, holder_id: str, executions: dict[str, Execution], held: dict[str, str]
) -> tuple[set[tuple[str, str]], list[str]]:
    """Renew the leases ``held`` (job id -> lease token) of ``holder_id``.

    The ``executions`` whose lease was lost are marked lost, those with a cancel request
    are asked to stop.  Returns the (job id, token) pairs lost and the job ids to cancel:
    a holder with jobs claimed ahead (not started) drops or cancels those itself.
    """
    lost, cancel = runtime.store.heartbeat(
        worker_id=holder_id, held=held, lease_seconds=runtime.settings.stale_after_seconds
    )
    # Only the lease reported lost is dropped, never a newer one of the same job.
    lost_leases = {(job_id, held[job_id]) for job_id in lost}
    for job_id in lost:
        execution = executions.get(job_id)
        if execution is None or (job_id, execution.token) not in lost_leases:
            continue
        # A run that is writing its own outcome released the lease itself: the renewal
        # raced that commit, and nothing was taken over.
        if not (execution.done.is_set() or execution.settling):
            log.warning("job %s: lease lost (another worker took it over)", job_id)
            execution.mark_lost()
    for job_id in cancel:
        execution = executions.get(job_id)
        if execution is not None:
            execution.request_cancel()
    return lost_leases, list(cancel)
