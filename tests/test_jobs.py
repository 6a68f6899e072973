"""nbjobs.jobs: the statuses and the one progress rule that the store, the dashboard's
table and the notebook's widget all read."""

from __future__ import annotations

import threading
import time

import nbjobs
from nbjobs.jobs import ACTIVE, FINISHED, STATUS_COLOURS, TERMINAL, Status, progress, row_progress
from nbjobs.notebook.widgets import JobWatch

WAIT = 60


def test_the_statuses_split_into_finished_and_active():
    assert FINISHED == ("succeeded", "failed", "cancelled")
    assert ACTIVE == ("queued", "running", "waiting")
    assert set(FINISHED) | set(ACTIVE) == {s.value for s in Status} == set(STATUS_COLOURS)
    assert all(s in TERMINAL for s in FINISHED)  # plain strings test true against it
    assert nbjobs.Status is Status


def test_progress_takes_its_cases_in_one_order():
    # succeeded is complete, whatever else the row says
    assert progress("succeeded", 1, 4, reported=0.1, children=(1, 8)) == 1.0
    # a fan-out parent's children come before the steps, a report before the steps
    assert progress("waiting", 1, 4, children=(3, 4)) == 0.75
    assert progress("running", 1, 4, reported=0.9) == 0.9
    assert progress("queued", 1, 4, reported=0.9) == 0.25  # a report counts while running
    assert progress("waiting", 1, 4, children=(0, 0)) == 0.25  # no children yet: the steps
    assert progress("running", 6, 4) == 1.0
    assert progress("running", 2, None) is None


def _wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not reached in time"
        time.sleep(0.02)


def test_a_waiting_fan_out_reads_the_same_progress_everywhere(app):
    """The handle, the dashboard's table row and the notebook's widget used three rules:
    the widget showed a fan-out parent at 0 while the table showed its children done."""
    gate = threading.Event()

    @app.workflow
    def part(cs: nbjobs.CallState, i: int) -> int:
        if i:
            gate.wait(WAIT)
        return i

    @app.workflow
    def whole(cs: nbjobs.CallState) -> int:
        return sum(o.value for o in cs.fan_out("parts", [part.spec(i) for i in range(4)]))

    app.start(concurrency=2)
    h = whole.submit()
    try:
        # part 0 finished; two more hold both slots; the last is queued
        _wait_until(
            lambda: (
                h.status == "waiting" and [c.status for c in h.children].count("succeeded") == 1
            ),
            "one child of four finished",
        )
        rows = app.store.jobs_rows([h.id])
        view = JobWatch(h, poll_seconds=WAIT)
        view.stop()
        view.refresh()
        assert h.progress == row_progress(rows[0]) == view.bar.value == 0.25
    finally:
        gate.set()
    assert h.result(timeout=WAIT) == 6
    assert h.progress == 1.0
