"""The dashboard: the views on tabs, wired by their parameters, one live refresh per session.

Live updates come from the database, never from an in-process event stream: once a
second the session asks which jobs changed since its watermark (an index range scan of
``updated_at``) and hands that list to every view, which re-reads only what it shows.
So several dashboards and workers in different processes all see the same state.

The views share state through ``param`` references, not assignments: the jobs table's
totals follow the counters' ``counts``, the detail follows the table's ``selected`` and
its fan-out tree the detail's ``job_id``.  The dashboard gets an App; building one from
a URL, and serving it, is :mod:`nbjobs.dashboard`'s job.
"""

from __future__ import annotations

import html
import logging
import time
from collections.abc import Sequence
from typing import Any

import panel as pn
import param

from .base import Component
from .detail import JobDetail
from .groups import Groups
from .jobs import JobsTable
from .overview import Overview
from .schedules import Schedules
from .style import CSS

log = logging.getLogger(__name__)

#: A write may commit after a later one is already visible (its ``updated_at`` was taken
#: before the commit); re-reading this much history behind the watermark catches it.
OVERLAP_SECONDS = 2.0
#: Changes read per refresh at most; a busier second still refreshes every view.
CHANGES_PER_REFRESH = 2000


class Dashboard(Component):
    """Overview, jobs (table, detail and fan-out tree), groups and schedules, updated live."""

    live = param.Boolean(default=True, doc="Refresh about once a second while shown.")
    period_ms = param.Integer(default=1000, bounds=(100, None))
    title = param.String(default="nbjobs")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        shared = self.shared()
        self.overview = Overview(**shared)
        # References, not copies: the table's totals follow the counters, the detail the
        # table's selection.
        self.jobs = JobsTable(counts=self.overview.counters.param.counts, **shared)
        self.detail = JobDetail(job_id=self.jobs.param.selected, **shared)
        self.schedules = Schedules(**shared)
        self.groups = Groups(**shared)
        self.groups.param.watch(self._show_group, "shown_group")
        self.views: list[Component] = [
            self.overview,
            self.jobs,
            self.detail,
            self.schedules,
            self.groups,
        ]
        self._watermark = self.store.latest_update() or self.store.now()
        self._seen: dict[str, float] = {}
        self.changes()  # what the first load below reads anyway: not news on the first tick
        self._callback: Any = None  # a served session's periodic callback
        self._refresher: Any = None  # a notebook kernel's NotebookRefresher
        self._status = pn.pane.HTML("", stylesheets=[CSS], margin=(0, 10))
        self._layout: pn.viewable.Viewable | None = None
        self.refreshed_at = 0.0
        self.load()

    # -- data --------------------------------------------------------------------------
    def load(self) -> None:
        """Read everything once (the first render)."""
        self.overview.load()
        self.jobs.set_options(self.store.workflow_names(), self.store.queue_names())
        self.jobs.load()
        self.schedules.load()
        self.groups.load()
        self._mark()

    def changes(self) -> list[Any]:
        """Jobs changed since the last call, each change once (the watermark moves on)."""
        rows = self.store.jobs_changed_since(
            self._watermark - OVERLAP_SECONDS, limit=CHANGES_PER_REFRESH
        )
        fresh = [r for r in rows if self._seen.get(r.id) != r.updated_at]
        if rows:
            self._watermark = max(self._watermark, rows[-1].updated_at)
        floor = self._watermark - OVERLAP_SECONDS
        self._seen = {k: v for k, v in self._seen.items() if v > floor}
        self._seen.update((r.id, r.updated_at) for r in rows if r.updated_at > floor)
        return fresh

    def refresh(self, changes: Sequence[Any] | None = None) -> None:
        """One live tick: read the change feed, then let each view catch up."""
        try:
            if changes is None:
                changes = self.changes()
            if changes:
                known = set(self.jobs.workflows)
                if any(c.workflow not in known for c in changes):
                    self.jobs.set_options(self.store.workflow_names(), self.store.queue_names())
            self.overview.refresh(changes)
            self.jobs.refresh(changes)
            self.detail.refresh(changes)
            self.schedules.refresh(changes)
            self.groups.refresh(changes)
            self._mark()
        except Exception:
            # A database hiccup must not kill the periodic callback; the next tick retries.
            log.exception("dashboard refresh failed")
            self._status.object = '<span class="nbj-muted">database unreachable; retrying</span>'

    def _mark(self) -> None:
        self.refreshed_at = time.time()
        live = '<span class="nbj-live"></span>live' if self.live else "snapshot"
        self._status.object = f'<span class="nbj-muted">{live} · {time.strftime("%H:%M:%S")}</span>'

    def _show_group(self, event: Any) -> None:
        """ "Show jobs" in the groups tab: the jobs table filtered by that group."""
        if not event.new:
            return
        self.jobs.group_id = event.new
        self.groups.shown_group = ""  # the same group can be shown again later
        if self._layout is not None:
            self.tabs.active = 1

    # -- life cycle --------------------------------------------------------------------
    def start(self) -> None:
        """Start the live refresh (once): per session when served, per kernel in a notebook.

        A served page gets its own periodic callback, stopped when the session ends.  A
        dashboard shown in a notebook cell joins the kernel's one refresher
        (:class:`~nbjobs.views.notebook.NotebookRefresher`), at each render: the
        refresher drops the dashboards an earlier run of the same cell showed, so
        re-running the cell does not add a refresh.
        """
        if not self.live or self._callback is not None:
            return
        if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
            self._callback = pn.state.add_periodic_callback(self.refresh, period=self.period_ms)
            pn.state.on_session_destroyed(lambda _ctx: self.stop())
            return
        from .notebook import NotebookRefresher

        refresher = NotebookRefresher.shared()
        if refresher.add(self):
            self._refresher = refresher

    def stop(self) -> None:
        """Stop the live refresh (the dashboard keeps its last state)."""
        if self._callback is not None:
            self._callback.stop()
            self._callback = None
        if self._refresher is not None:
            self._refresher.remove(self)
            self._refresher = None

    def views_shown(self) -> list[str]:
        """The root ids of the dashboard's rendered views (pages or cell outputs)."""
        return [] if self._layout is None else list(self._layout._models)

    def shown(self) -> bool:
        """True while some view of the dashboard is rendered (a page or a cell output)."""
        return bool(self.views_shown())

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        """Shown in a cell: its comm messages are handled where its refresh runs."""
        from .notebook import serve_on_kernel_loop

        bundle = super()._repr_mimebundle_(include, exclude)
        serve_on_kernel_loop(*self.views_shown())
        return bundle

    # -- layout ------------------------------------------------------------------------
    def _header(self) -> pn.viewable.Viewable:
        url = pn.pane.HTML(
            f'<span class="nbj-url" title="database">{html.escape(self.store.safe_url)}</span>',
            stylesheets=[CSS],
        )
        return pn.Row(url, pn.layout.HSpacer(), self._status, sizing_mode="stretch_width")

    def __panel__(self) -> pn.viewable.Viewable:
        if self._layout is None:
            # The detail sits beside the table, or under it when the space is narrow
            # (a notebook cell is about 1000 px wide).
            table = self.jobs.body()
            table.styles = {"flex": "1 1 600px"}
            jobs_page = pn.Column(
                self.jobs.controls(),
                pn.FlexBox(
                    table,
                    pn.Column(self.detail, width=500, css_classes=["nbj-detail"]),
                    flex_wrap="wrap",
                    sizing_mode="stretch_width",
                ),
                sizing_mode="stretch_width",
            )
            self.tabs = pn.Tabs(
                ("Overview", self.overview),
                ("Jobs", jobs_page),
                ("Groups", self.groups),
                ("Schedules", self.schedules),
                sizing_mode="stretch_width",
                dynamic=True,
            )
            self._layout = pn.Column(self._header(), self.tabs, sizing_mode="stretch_width")
        self.start()
        return self._layout

    def template(self) -> pn.template.BaseTemplate:
        """The dashboard in a page template, for ``panel serve``."""
        return pn.template.FastListTemplate(
            title=self.title,
            main=[self],
            header_background="#1f2937",
            accent_base_color="#2563eb",
            theme_toggle=False,
            main_layout=None,
        )
