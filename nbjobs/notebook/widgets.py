"""ipywidgets displays for notebooks: ``h.watch()``.

The display is updated by a daemon thread that reads the job's row a few times a second,
so the kernel stays free while a job runs (widget state changes are sent from that
thread, which ipykernel supports).  It works for a job run by any worker, in this process
or another, because it reads the database and nothing else.  This module imports
ipywidgets; ``import nbjobs`` does not import this module.
"""

from __future__ import annotations

import html
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from ..errors import UnknownJob
from ..jobs import FINISHED, STATUS_COLOURS, Status, row_progress

if TYPE_CHECKING:
    from .display import Group, Job

log = logging.getLogger(__name__)

#: Seconds between two reads of the job's row.
POLL_SECONDS = 0.25
_BAR_STYLE = {
    Status.SUCCEEDED.value: "success",
    Status.FAILED.value: "danger",
    Status.CANCELLED.value: "warning",
}


class _LiveDisplay(w.VBox):
    """What the watches share: a thread follows the database until the end it shows
    (``finished``); ``wait`` blocks for it, ``stop`` ends the following."""

    def __init__(self, children: list[w.Widget]) -> None:
        super().__init__(children)
        self.finished = threading.Event()
        self._stop = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the display shows the end (the job's, or every job's of the
        group); True when it did in time."""
        return self.finished.wait(timeout)

    def stop(self) -> None:
        """Stop following (the display keeps its last state)."""
        self._stop.set()

    def close(self) -> None:
        self.stop()
        super().close()


class JobWatch(_LiveDisplay):
    """A live progress display of one job: status, progress bar, current step, outcome.

    ``wait(timeout)`` blocks until the display has shown the job's end (for scripts and
    tests; a notebook just displays the widget and carries on).
    """

    def __init__(self, handle: Job, poll_seconds: float = POLL_SECONDS) -> None:
        self.handle = handle
        self.poll_seconds = poll_seconds
        self.header = w.HTML()
        self.bar = w.FloatProgress(value=0.0, min=0.0, max=1.0, layout=w.Layout(width="320px"))
        self.step = w.HTML()
        self.outcome = w.HTML()
        super().__init__([self.header, w.HBox([self.bar, self.step]), self.outcome])
        self._last_steps = -1
        self._last_step_name: str | None = None
        self._refreshing = threading.Lock()
        self.refresh()
        self._thread = threading.Thread(
            target=self._follow, name=f"nbjobs-watch-{handle.id}", daemon=True
        )
        self._thread.start()

    # -- updating ----------------------------------------------------------------------
    def _follow(self) -> None:
        while not self.finished.is_set() and not self._stop.is_set():
            try:
                self.refresh()
            except Exception as exc:  # the database went away, the app was closed...
                log.debug("watch of job %s stopped", self.handle.id, exc_info=True)
                self.outcome.value = _box(STATUS_COLOURS["cancelled"], f"watch stopped: {exc}")
                self.finished.set()
                return
            self._stop.wait(self.poll_seconds)

    def refresh(self) -> None:
        """Read the job once and update the display (the following thread and a caller
        may both refresh: one at a time, or one could show the step count the other
        read without the step name it was still reading)."""
        with self._refreshing:
            self._refresh()

    def _refresh(self) -> None:
        store = self.handle.engine.store
        rows = store.jobs_rows([self.handle.id])  # a table row: the dashboard's progress
        if not rows:
            raise UnknownJob(f"no job with id {self.handle.id!r}")
        row = rows[0]
        if row.steps_done != self._last_steps:
            self._last_steps = row.steps_done
            steps = store.history_steps([row.id])
            self._last_step_name = steps[-1].name if steps else None
        status = row.status
        self.header.value = (
            f'<span style="font-family:system-ui,sans-serif"><b>{html.escape(row.workflow)}</b> '
            f"<code>{html.escape(row.id)}</code> {_badge(status)}</span>"
        )
        self.bar.value = row_progress(row) or 0.0
        self.bar.bar_style = _BAR_STYLE.get(status, "info")
        self.step.value = self._step_text(row)
        if status in FINISHED:
            self.outcome.value = self._outcome_html(status)
            self.finished.set()

    def _step_text(self, row: Any) -> str:
        total = f" of {row.expected_steps}" if row.expected_steps else ""
        parts = [f"{row.steps_done}{total} steps done"]
        if row.status == Status.RUNNING.value:
            after = f" after {self._last_step_name!r}" if self._last_step_name else ""
            parts.append(f"running step {row.steps_done + 1}{after}")
        elif row.status == Status.WAITING.value and row.waiting_for:
            parts.append(f"waiting for {row.waiting_for}")
        elif row.status == Status.QUEUED.value and row.attempts:
            parts.append(f"queued for attempt {row.attempts + 1}")
        if row.message and row.status == Status.RUNNING.value:
            parts.append(row.message)
        if row.attempts > 1:
            parts.append(f"attempt {row.attempts}")
        return (
            '<span style="font-family:system-ui,sans-serif;font-size:13px;margin-left:8px">'
            + html.escape(" · ".join(parts))
            + "</span>"
        )

    def _outcome_html(self, status: str) -> str:
        outcome = self.handle.engine.store.job_outcome(self.handle.id)
        if status == Status.SUCCEEDED.value:
            try:
                value = repr(self.handle.engine.codec.loads(outcome.result))
            except Exception as exc:
                value = f"(the result cannot be loaded here: {exc})"
            if len(value) > 2000:
                value = value[:2000] + " ..."
            return _box(STATUS_COLOURS[status], f"result: {value}")
        if status == Status.CANCELLED.value:
            return _box(STATUS_COLOURS[status], "cancelled")
        text = _box(STATUS_COLOURS[status], outcome.error or "failed")
        if outcome.traceback:
            text += (
                "<details><summary>traceback</summary><pre style='font-size:12px'>"
                f"{html.escape(outcome.traceback)}</pre></details>"
            )
        return text


class GroupWatch(_LiveDisplay):
    """A live display of a group of jobs: one progress bar and the count of jobs in each
    status.  One count query per refresh, whatever the group's size (a thousand bars
    would cost the kernel and the browser far more than the jobs' progress is worth)."""

    def __init__(self, group: Group, poll_seconds: float = 1.0) -> None:
        self.group = group
        self.poll_seconds = poll_seconds
        label = f"<b>{html.escape(group.label)}</b> " if group.label else ""
        self.header = w.HTML(
            f'<span style="font-family:system-ui,sans-serif">{label}group '
            f"<code>{html.escape(group.id)}</code></span>"
        )
        self.bar = w.IntProgress(value=0, min=0, max=1, layout=w.Layout(width="320px"))
        self.counts = w.HTML()
        super().__init__([self.header, w.HBox([self.bar, self.counts])])
        self.refresh()
        self._thread = threading.Thread(
            target=self._follow, name=f"nbjobs-watch-group-{group.id}", daemon=True
        )
        self._thread.start()

    def _follow(self) -> None:
        pause = self.poll_seconds
        while not self.finished.is_set() and not self._stop.wait(pause):
            try:
                started = time.monotonic()
                self.refresh()
                # No more often than 20 times what a read costs (a big group's count).
                pause = max(self.poll_seconds, 20 * (time.monotonic() - started))
            except Exception as exc:  # the database went away, the app was closed...
                log.debug("watch of group %s stopped", self.group.id, exc_info=True)
                self.counts.value = _box(STATUS_COLOURS["cancelled"], f"watch stopped: {exc}")
                self.finished.set()

    def refresh(self) -> None:
        """Read the group's counts once and update the display."""
        counts = self.group.status_counts()
        total = sum(counts.values())
        done = sum(counts[s] for s in FINISHED)
        self.bar.max = max(total, 1)
        self.bar.value = done
        bad = counts.get(Status.FAILED.value, 0) or counts.get(Status.CANCELLED.value, 0)
        if done == total:
            self.bar.bar_style = "warning" if bad else "success"
            self.finished.set()
        else:
            self.bar.bar_style = "danger" if bad else "info"
        shown = " · ".join(f"{n} {s}" for s, n in counts.items() if n) or "no jobs"
        self.counts.value = (
            '<span style="font-family:system-ui,sans-serif;font-size:13px;margin-left:8px">'
            f"{done}/{total} finished · {html.escape(shown)}</span>"
        )


def _badge(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#666")
    return (
        f'<span style="background:{colour};color:white;border-radius:8px;padding:1px 8px">'
        f"{html.escape(status)}</span>"
    )


def _box(colour: str, text: str) -> str:
    return (
        f'<pre style="border-left:3px solid {colour};padding:2px 8px;margin:4px 0;'
        f'white-space:pre-wrap;font-size:12px">{html.escape(text)}</pre>'
    )


def watch(handle: Job, poll_seconds: float = POLL_SECONDS) -> JobWatch:
    """A live ipywidgets display of ``handle``'s job; display it in a notebook cell."""
    return JobWatch(handle, poll_seconds=poll_seconds)
