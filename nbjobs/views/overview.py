"""The overview: counters per status, throughput per minute, queue depths and workers."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import pandas as pd
import panel as pn
import param

from ..jobs import FINISHED, limits_text
from .access import session_user
from .base import Component, Throttle
from .style import CSS, STATUSES, colour, fmt_relative

log = logging.getLogger(__name__)

#: Minutes of history the throughput plot shows.
WINDOW_MINUTES = 60
#: Workflows drawn in their own colour; the rest are summed as "other".
TOP_WORKFLOWS = 6
PALETTE = ["#2563eb", "#0891b2", "#7c3aed", "#db2777", "#ca8a04", "#059669", "#9ca3af"]


def show_rows(
    table: pn.widgets.Tabulator, frame: pd.DataFrame, empty: pn.viewable.Viewable
) -> None:
    """Put ``frame`` in ``table``; when it has no rows, hide the table and show ``empty``.

    A hidden table keeps its last rows instead of going empty: a page can still send
    back the rows it shows, and Panel (1.9) fails to compare those with an empty
    table's columns (a traceback in the notebook cell, seen in JupyterLab when the last
    worker stopped).
    """
    if not frame.empty and not frame.equals(table.value):
        table.value = frame
    empty.visible = frame.empty
    table.visible = not frame.empty


class Counters(Component):
    """One card per status with its job count."""

    counts = param.Dict(default={}, doc="status -> number of jobs")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._pane = pn.pane.HTML(self._html(), sizing_mode="stretch_width", stylesheets=[CSS])
        self._throttle = Throttle(minimum_seconds=0.5)

    def load(self) -> None:
        self.counts = self._throttle.run(self.store.job_counts)

    def refresh(self, changes: Sequence[Any]) -> None:
        if changes:
            self._throttle.pending = True
        if self._throttle.pending and self._throttle.due():
            self.load()

    @param.depends("counts", watch=True)
    def _update(self) -> None:
        self._pane.object = self._html()

    def _html(self) -> str:
        cards = "".join(
            f'<div class="nbj-card nbj-count-{s}" style="--c:{colour(s)}">'
            f'<div class="n" data-status="{s}">{self.counts.get(s, 0):,}</div>'
            f'<div class="l">{s}</div></div>'
            for s in STATUSES
        )
        return f'<div class="nbj-cards">{cards}</div>'

    def __panel__(self) -> pn.viewable.Viewable:
        return self._pane


class Throughput(Component):
    """Jobs finished per minute over the last hour, stacked by workflow, failures in red."""

    bucket_seconds = param.Integer(default=60, bounds=(1, None))

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._buckets: dict[float, dict[tuple[str, str], int]] = {}
        self._workflows: list[str] = []
        self._pane = pn.pane.Bokeh(self._figure([]), sizing_mode="stretch_width", height=260)
        self._throttle = Throttle(minimum_seconds=1.0)

    def load(self) -> None:
        since = time.time() - WINDOW_MINUTES * 60
        self._merge(self.store.throughput(since=since, bucket_seconds=self.bucket_seconds), since)

    def refresh(self, changes: Sequence[Any]) -> None:
        if any(c.status in FINISHED for c in changes):
            self._throttle.pending = True
        if self._throttle.pending and self._throttle.due():
            # Only the latest buckets change: ask for them alone.
            since = (max(self._buckets) if self._buckets else time.time()) - self.bucket_seconds
            rows = self._throttle.run(
                lambda: self.store.throughput(since=since, bucket_seconds=self.bucket_seconds)
            )
            self._merge(rows, since)

    def _merge(self, rows: Sequence[Any], since: float) -> None:
        for bucket in [b for b in self._buckets if b >= since]:
            del self._buckets[bucket]
        for r in rows:
            cell = self._buckets.setdefault(float(r.bucket), {})
            cell[(r.workflow, r.status)] = int(r.n)
        oldest = time.time() - WINDOW_MINUTES * 60
        for bucket in [b for b in self._buckets if b < oldest]:
            del self._buckets[bucket]
        self._draw()

    def frame(self) -> pd.DataFrame:
        """Finished per bucket: ``time``, one column per drawn workflow, ``other``, ``failed``.

        The workflow columns are named by position (``w0``, ``w1``, ...), their workflows
        listed in ``frame.attrs["workflows"]``, and never by the workflow's name: any
        name is valid, ``time``, ``other`` and ``failed`` included, and the legend shows
        the names apart from the columns.
        """
        totals: dict[str, int] = {}
        for cell in self._buckets.values():
            for (wf, _), n in cell.items():
                totals[wf] = totals.get(wf, 0) + n
        top = sorted(totals, key=lambda w: -totals[w])[:TOP_WORKFLOWS]
        column = {wf: f"w{i}" for i, wf in enumerate(top)}
        records = []
        for bucket in sorted(self._buckets):
            rec: dict[str, Any] = {"time": pd.Timestamp(bucket, unit="s")}
            rec.update(dict.fromkeys(column.values(), 0))
            rec["other"] = 0
            rec["failed"] = 0
            for (wf, status), n in self._buckets[bucket].items():
                rec[column.get(wf, "other")] += n
                if status == "failed":
                    rec["failed"] += n
            records.append(rec)
        columns = ["time", *column.values(), "other", "failed"]
        frame = pd.DataFrame.from_records(records, columns=columns)
        frame.attrs["workflows"] = top
        return frame

    def _figure(self, workflows: list[str]) -> Any:
        from bokeh.models import ColumnDataSource, DataRange1d, HoverTool, Range1d
        from bokeh.models.annotations import Legend, LegendItem, Title
        from bokeh.models.renderers import GlyphRenderer
        from bokeh.plotting import figure

        start, end = self._window()
        self._x_range = Range1d(start=start, end=end)
        fig = figure(
            x_range=self._x_range,
            x_axis_type="datetime",
            height=260,
            sizing_mode="stretch_width",
            toolbar_location=None,
            tools="",
            title="Finished per minute (last hour)",
        )
        self._source = ColumnDataSource(self.frame())
        width = self.bucket_seconds * 1000 * 0.8
        if workflows:
            # Legend items are built one per renderer: a label is display text only, so
            # a workflow called "other" or "failed" gets its own entry and colour rather
            # than being merged with the fixed series of the same label.
            stack = [*(f"w{i}" for i in range(len(workflows))), "other"]
            bars = fig.vbar_stack(
                stack,
                x="time",
                width=width,
                source=self._source,
                color=[*PALETTE[: len(stack) - 1], PALETTE[-1]],
            )
            failed = fig.line(
                "time", "failed", source=self._source, color=colour("failed"), line_width=2
            )
            labels = [*(w[-28:] for w in workflows), "other", "failed"]
            renderers: list[GlyphRenderer] = [*bars, failed]
            legend = Legend(
                items=[
                    LegendItem(label=label, renderers=[r])
                    for label, r in zip(labels, renderers, strict=True)
                ],
                label_text_font_size="11px",
                border_line_color=None,
            )
            fig.add_layout(legend, "right")
            fig.add_tools(HoverTool(tooltips=[("time", "@time{%H:%M}"), ("failed", "@failed")],
                                    formatters={"@time": "datetime"}))  # fmt: skip
        else:
            fig.text(x=[0], y=[0], text=["no job finished in the last hour"],
                     text_color="#6b7280", text_align="center", text_font_size="13px")  # fmt: skip
            fig.xaxis.visible = False
            fig.yaxis.visible = False
        title, y_range = fig.title, fig.y_range
        assert isinstance(title, Title) and isinstance(y_range, DataRange1d)  # figure()'s own
        title.text_font_size = "13px"
        title.text_color = "#374151"
        y_range.start = 0
        fig.grid.grid_line_alpha = 0.4
        fig.outline_line_color = None
        return fig

    def _draw(self) -> None:
        frame = self.frame()
        workflows = frame.attrs["workflows"]
        if workflows != self._workflows or frame.empty != (not self._workflows):
            self._workflows = workflows if not frame.empty else []
            self._pane.object = self._figure(self._workflows)
        else:
            self._source.data = {c: frame[c].to_numpy() for c in frame.columns}
            self._x_range.start, self._x_range.end = self._window()

    def _window(self) -> tuple[float, float]:
        """The plot's x range: the last hour, in Bokeh's milliseconds."""
        now = time.time()
        return ((now - WINDOW_MINUTES * 60) * 1000, (now + self.bucket_seconds) * 1000)

    def __panel__(self) -> pn.viewable.Viewable:
        return self._pane


QUEUE_COLUMNS = [
    "queue", "queued", "ready", "running", "waiting", "paused", "limits", "held",
]  # fmt: skip


class QueueDepths(Component):
    """Per queue: queued (and ready now), running, waiting, paused, its fleet-wide
    limits and the ready jobs they hold back; an operator sets the selected queue's
    limits and pauses or resumes it."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.rows: list[dict[str, Any]] = []
        self._table = pn.widgets.Tabulator(
            pd.DataFrame(columns=QUEUE_COLUMNS),
            show_index=False,
            disabled=True,
            selectable=1,
            sortable=False,
            sizing_mode="stretch_width",
            layout="fit_columns",
            height=180,
            theme="simple",
            titles={"ready": "ready now", "held": "held by limits"},
            css_classes=["nbj-queues-table"],
        )
        self.concurrency = pn.widgets.IntInput(
            label="concurrency", value=None, start=1, width=110, placeholder="no limit"
        )
        self.rate = pn.widgets.TextInput(label="rate", width=130, placeholder="e.g. 100/minute")
        self.limit_button = pn.widgets.Button(
            label="Set limits", width=100, color="primary", variant="outline"
        )
        self.pause_button = pn.widgets.Button(
            label="Pause", width=80, color="primary", variant="outline"
        )
        self.resume_button = pn.widgets.Button(
            label="Resume", width=80, color="primary", variant="outline"
        )
        self.limit_button.on_click(self._on_limit)
        self.pause_button.on_click(self._on_pause)
        self.resume_button.on_click(self._on_resume)
        self._table.param.watch(self._selected, "selection")
        self._empty = pn.pane.HTML(
            '<div class="nbj-empty">No job is queued, running or waiting.</div>',
            stylesheets=[CSS],
            sizing_mode="stretch_width",
            visible=False,
        )
        self._actions = pn.Row(
            self.concurrency,
            self.rate,
            self.limit_button,
            self.pause_button,
            self.resume_button,
            visible=not self.read_only,
            align="end",
        )
        self._throttle = Throttle(minimum_seconds=1.0)

    def load(self) -> None:
        self.rows = self._throttle.run(self.store.queue_depths)
        frame = pd.DataFrame(
            [
                [
                    q["queue"], q["queued"], q["ready"], q["running"], q["waiting"],
                    "paused" if q["paused"] else "",
                    limits_text(q["concurrency"], q["rate"]),
                    q["held"],
                ]
                for q in self.rows
            ],
            columns=QUEUE_COLUMNS,
        )  # fmt: skip
        selection = self._table.selection
        show_rows(self._table, frame, self._empty)
        self._table.selection = [i for i in selection if i < len(frame)]
        self._actions.visible = not (frame.empty or self.read_only)

    def _on_limit(self, _event: Any) -> None:
        self.set_limits()

    def _on_pause(self, _event: Any) -> None:
        self.set_paused(True)

    def _on_resume(self, _event: Any) -> None:
        self.set_paused(False)

    def selected(self) -> dict[str, Any] | None:
        """The selected queue's row, or None."""
        chosen = self._table.selection
        return self.rows[chosen[0]] if chosen and chosen[0] < len(self.rows) else None

    def _selected(self, _event: Any) -> None:
        """A queue was selected: show its limits in the inputs, to edit."""
        row = self.selected()
        if row is not None:
            self.concurrency.value = row["concurrency"]
            self.rate.value = row["rate"] or ""

    def set_limits(self) -> bool:
        """Store the inputs as the selected queue's limits (empty: no limit)."""
        row = self.selected()
        if row is None:
            self.notify("select a queue first", "warning")
            return False
        name = row["queue"]
        concurrency, rate = self.concurrency.value, (self.rate.value or "").strip() or None
        shown = limits_text(concurrency, rate) or "no limits"
        done = self.act(
            f"setting queue {name} to {shown}",
            lambda: self.app.set_queue(name, concurrency=concurrency, rate=rate),
        )
        if done:
            log.info("queue %s set to %s by %s", name, shown, session_user() or "a local user")
        self._throttle.pending = True
        self.load()
        return done

    def set_paused(self, paused: bool) -> bool:
        """Pause or resume the selected queue."""
        row = self.selected()
        if row is None:
            self.notify("select a queue first", "warning")
            return False
        name = row["queue"]
        fn = self.app.pause_queue if paused else self.app.resume_queue
        word = "pausing" if paused else "resuming"
        done = self.act(f"{word} queue {name}", lambda: fn(name))
        if done:
            log.info("queue %s %s by %s", name, "paused" if paused else "resumed",
                     session_user() or "a local user")  # fmt: skip
        self.load()
        return done

    def refresh(self, changes: Sequence[Any]) -> None:
        if changes:
            self._throttle.pending = True
        if self._throttle.pending and self._throttle.due():
            self.load()

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.Column(
            pn.pane.HTML('<div class="nbj-section">Queues</div>', stylesheets=[CSS]),
            self._table,
            self._empty,
            self._actions,
            sizing_mode="stretch_width",
        )


class Workers(Component):
    """Live workers from the registry, with the age of their last heartbeat."""

    columns = ["worker", "host", "pid", "queues", "concurrency", "jobs held", "heartbeat"]

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._table = pn.widgets.Tabulator(
            pd.DataFrame(columns=self.columns),
            show_index=False,
            disabled=True,
            selectable=False,
            sortable=False,
            sizing_mode="stretch_width",
            layout="fit_columns",
            height=180,
            theme="simple",
        )
        self._empty = pn.pane.HTML(
            '<div class="nbj-empty">No live workers. Start one with <code>app.start()</code> '
            "or <code>nbjobs worker module:app</code>.</div>",
            stylesheets=[CSS],
            sizing_mode="stretch_width",
        )
        self._throttle = Throttle(minimum_seconds=1.0)

    def load(self) -> None:
        window = 2 * self.app.stale_after_seconds
        rows = self._throttle.run(lambda: self.store.list_workers(alive_within=window))
        now = self.store.now()
        frame = pd.DataFrame(
            [
                [
                    r.id,
                    r.host,
                    r.pid,
                    r.queues.replace(",", ", "),
                    r.concurrency,
                    r.jobs_held,
                    fmt_relative(r.heartbeat_at, now),
                ]
                for r in rows
            ],
            columns=self.columns,
        )
        show_rows(self._table, frame, self._empty)

    def refresh(self, changes: Sequence[Any]) -> None:
        if self._throttle.due():
            self.load()

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.Column(
            pn.pane.HTML('<div class="nbj-section">Workers</div>', stylesheets=[CSS]),
            self._table,
            self._empty,
            sizing_mode="stretch_width",
        )


class Overview(Component):
    """Counters, throughput, queues and workers on one page."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        shared = self.shared()
        self.counters = Counters(**shared)
        self.throughput = Throughput(**shared)
        self.queues = QueueDepths(**shared)
        self.workers = Workers(**shared)
        self.parts: list[Component] = [self.counters, self.throughput, self.queues, self.workers]

    def load(self) -> None:
        for part in self.parts:
            part.load()

    def refresh(self, changes: Sequence[Any]) -> None:
        for part in self.parts:
            part.refresh(changes)

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.Column(
            self.counters,
            self.throughput,
            pn.Row(self.queues, self.workers, sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )
