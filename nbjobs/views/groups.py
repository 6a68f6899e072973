"""Groups: the sweeps (``wf.map``, ``app.submit_many``), one progress bar each, with
their jobs shown in the jobs table and bulk cancel and retry."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import pandas as pd
import panel as pn
import param

from ..jobs import FINISHED
from .actions import action_button
from .base import Component, Throttle
from .style import CSS, fmt_time, progress_bar

COLUMNS = ["label", "id", "created", "jobs", "progress", "counts"]
#: Groups listed, newest first.
GROUPS_SHOWN = 50


def group_rows(rows: Sequence[Any], counts: dict[str, dict[str, int]]) -> pd.DataFrame:
    """The table of groups: label, id, creation, size, one progress bar, the counts."""
    records = []
    for r in rows:
        by_status = counts.get(r.id, {})
        total = sum(by_status.values())
        done = sum(by_status.get(s, 0) for s in FINISHED)
        worst = next(
            (s for s in ("failed", "cancelled", "running", "queued") if by_status.get(s)),
            "succeeded",
        )
        shown = " · ".join(f"{n} {s}" for s, n in by_status.items() if n) or "no jobs"
        records.append(
            [
                html.escape(r.label or ""),
                r.id,
                fmt_time(r.created_at),
                r.size,
                progress_bar(done / total if total else 1.0, worst, f"{done}/{total}"),
                html.escape(shown),
            ]
        )
    return pd.DataFrame(records, columns=COLUMNS)


class Groups(Component):
    """The groups table: pick one to list its jobs, cancel it or retry its failures."""

    shown_group = param.String(default="", doc="The group whose jobs the table should list.")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.rows: list[Any] = []
        self.table = pn.widgets.Tabulator(
            pd.DataFrame(columns=COLUMNS),
            show_index=False,
            disabled=True,
            selectable=1,
            sortable=False,
            formatters={
                "label": {"type": "html"},
                "progress": {"type": "html"},
                "counts": {"type": "html"},
            },
            widths={"id": 200, "progress": 180, "jobs": 70},
            layout="fit_data_stretch",
            sizing_mode="stretch_width",
            theme="simple",
            css_classes=["nbj-groups-table"],
        )
        self.show_button = action_button("Show jobs", "nbj-group-show", self.show_jobs, width=120)
        self.cancel_button = action_button(
            "Cancel group", "nbj-group-cancel", self.cancel, width=120
        )
        self.retry_button = action_button(
            "Retry failed", "nbj-group-retry", self.retry_failed, width=120
        )
        self._empty = pn.pane.HTML(
            '<div class="nbj-empty">No groups. Submit one with <code>wf.map(items)</code> '
            "or <code>app.submit_many(specs)</code>.</div>",
            stylesheets=[CSS],
            sizing_mode="stretch_width",
            visible=False,
        )
        self._throttle = Throttle(minimum_seconds=1.0)

    def _read(self) -> tuple[list[Any], dict[str, dict[str, int]]]:
        rows = list(self.store.list_groups(GROUPS_SHOWN))
        return rows, self.store.group_status_counts([r.id for r in rows])

    def load(self) -> None:
        self.rows, counts = self._throttle.run(self._read)
        frame = group_rows(self.rows, counts)
        self.show_frame(self.table, frame, self._empty, [self.cancel_button, self.retry_button])
        self.show_button.visible = not frame.empty

    def refresh(self, changes: Sequence[Any]) -> None:
        if changes and self._throttle.due():
            self.load()

    def _selected(self) -> str | None:
        row = self.selected_row(self.table, self.rows, "group")
        return None if row is None else str(row.id)

    def show_jobs(self) -> None:
        """List the selected group's jobs in the jobs table."""
        group_id = self._selected()
        if group_id is not None:
            self.shown_group = group_id

    def cancel(self) -> bool:
        group_id = self._selected()
        if group_id is None:
            return False
        done = self.act(f"cancelling group {group_id}", lambda: self.app.group(group_id).cancel())
        self.load()
        return done

    def retry_failed(self) -> bool:
        group_id = self._selected()
        if group_id is None:
            return False
        done = self.act(
            f"retrying the failed jobs of group {group_id}",
            lambda: self.app.group(group_id).retry_failed(),
        )
        self.load()
        return done

    def __panel__(self) -> pn.viewable.Viewable:
        actions = pn.Row(self.show_button, self.cancel_button, self.retry_button)
        return pn.Column(self.table, self._empty, actions, sizing_mode="stretch_width")
