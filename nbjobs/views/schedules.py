"""Schedules: cron text, timezone, next and last run, the last run's status, paused."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import panel as pn

from .actions import action_button
from .base import Component, Throttle
from .style import CSS, colour, fmt_relative, fmt_time, pill

COLUMNS = ["name", "workflow", "cron", "timezone", "next run", "last run", "last status", "state"]


class Schedules(Component):
    """The schedules table with pause and resume for the selected one."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.rows: list[Any] = []
        self.table = pn.widgets.Tabulator(
            pd.DataFrame(columns=COLUMNS),
            show_index=False,
            disabled=True,
            selectable=1,
            sortable=False,
            formatters={"last status": {"type": "html"}, "state": {"type": "html"}},
            layout="fit_data_stretch",
            sizing_mode="stretch_width",
            theme="simple",
            css_classes=["nbj-schedules-table"],
        )
        self.pause_button = action_button(
            "Pause", "nbj-pause", lambda: self.set_paused(True), width=90
        )
        self.resume_button = action_button(
            "Resume", "nbj-resume", lambda: self.set_paused(False), width=90
        )
        self._empty = pn.pane.HTML(
            '<div class="nbj-empty">No schedules. Create one with '
            '<code>app.schedule("name", workflow, cron="0 3 * * *")</code>.</div>',
            stylesheets=[CSS],
            sizing_mode="stretch_width",
            visible=False,
        )
        self._throttle = Throttle(minimum_seconds=2.0)

    def load(self) -> None:
        self.rows = self._throttle.run(self.store.schedules_overview)
        now = self.store.now()
        frame = pd.DataFrame(
            [
                [
                    r.name,
                    r.workflow,
                    r.cron,
                    r.timezone,
                    ""
                    if r.paused or r.next_fire_at is None
                    else f"{fmt_time(r.next_fire_at)} ({fmt_relative(r.next_fire_at, now)})",
                    fmt_time(r.last_fire_at),
                    pill(r.last_status) if r.last_status else "",
                    f'<span style="color:{colour("waiting")};font-weight:600">paused</span>'
                    if r.paused
                    else f'<span style="color:{colour("succeeded")}">active</span>',
                ]
                for r in self.rows
            ],
            columns=COLUMNS,
        )
        self.show_frame(self.table, frame, self._empty, [self.pause_button, self.resume_button])

    def refresh(self, changes: Sequence[Any]) -> None:
        if self._throttle.due():
            self.load()

    def set_paused(self, paused: bool) -> bool:
        row = self.selected_row(self.table, self.rows, "schedule")
        if row is None:
            return False
        name = row.name
        fn = self.app.pause_schedule if paused else self.app.resume_schedule
        done = self.act(f"{'pausing' if paused else 'resuming'} schedule {name}", lambda: fn(name))
        self.load()
        return done

    def __panel__(self) -> pn.viewable.Viewable:
        actions = pn.Row(self.pause_button, self.resume_button)
        return pn.Column(self.table, self._empty, actions, sizing_mode="stretch_width")
