"""h.watch(): the live ipywidgets display, driven by real jobs on a real worker."""

from __future__ import annotations

import threading

import ipywidgets
import pytest

from nbjobs.notebook.widgets import JobWatch

WAIT = 60


def test_watch_follows_a_job_to_its_result(sqlite_app):
    gate = [threading.Event() for _ in range(3)]
    entered = [threading.Event() for _ in range(3)]

    def step(i):
        entered[i].set()
        assert gate[i].wait(WAIT)
        return i

    @sqlite_app.workflow(steps=3)
    def three(cs):
        return sum(cs.checkpoint(f"part-{i}", step, i) for i in range(3))

    sqlite_app.start()
    h = three.submit()
    view = h.watch()
    assert isinstance(view, JobWatch) and isinstance(view, ipywidgets.VBox)

    assert entered[0].wait(WAIT)
    gate[0].set()
    assert entered[1].wait(WAIT)
    view.refresh()
    # Mid-run: one step of three finished, the second running, the kernel not blocked.
    assert abs(view.bar.value - 1 / 3) < 1e-9
    assert "1 of 3 steps done" in view.step.value
    assert "running step 2 after &#x27;part-0&#x27;" in view.step.value
    assert "running" in view.header.value
    assert not view.finished.is_set()

    gate[1].set()
    gate[2].set()
    assert view.wait(WAIT)
    assert view.bar.value == 1.0
    assert view.bar.bar_style == "success"
    assert "result: 3" in view.outcome.value
    assert "succeeded" in view.header.value


def test_watch_ends_with_the_error_and_traceback(sqlite_app):
    @sqlite_app.workflow
    def broken(cs):
        cs.checkpoint("fine", lambda: 1)
        raise ValueError("bad <input>")

    sqlite_app.start()
    h = broken.submit()
    view = h.watch()
    assert view.wait(WAIT)
    assert view.bar.bar_style == "danger"
    assert "ValueError: bad &lt;input&gt;" in view.outcome.value  # escaped HTML
    assert "<details><summary>traceback</summary>" in view.outcome.value
    assert "raise ValueError" in view.outcome.value


@pytest.mark.no_worker
def test_watch_of_a_cancelled_job(sqlite_app):
    @sqlite_app.workflow
    def never_claimed(cs):
        return 1

    h = never_claimed.submit()  # no worker: it stays queued until cancelled
    view = h.watch()
    view.refresh()
    assert "queued" in view.header.value
    assert view.bar.value == 0.0
    h.cancel()
    assert view.wait(WAIT)
    assert view.bar.bar_style == "warning"
    assert "cancelled" in view.outcome.value


def test_watch_learns_expected_steps_from_the_last_success(sqlite_app):
    release = threading.Event()

    @sqlite_app.workflow
    def learned(cs, block):
        cs.checkpoint("a", lambda: 1)
        if block:
            cs.checkpoint("wait", release.wait, WAIT)
        cs.checkpoint("b", lambda: 2)
        return "ok"

    sqlite_app.start()
    learned.submit(False).result(timeout=WAIT)  # two steps: that is now the expectation
    h = learned.submit(True)
    view = h.watch()
    while "1 of 2 steps done" not in view.step.value:
        assert not view.finished.wait(0.05)
        view.refresh()
    assert view.bar.value == 0.5
    release.set()
    assert view.wait(WAIT)


@pytest.mark.no_worker
def test_stop_ends_the_background_thread(sqlite_app):
    @sqlite_app.workflow
    def idle(cs):
        return 1

    view = idle.submit().watch()
    view.stop()
    view._thread.join(WAIT)
    assert not view._thread.is_alive()
    view.close()
