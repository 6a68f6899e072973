"""The jobs table: database-side pages, filters, sorting, progress bars, live patches.

A page is one indexed ``LIMIT``/``OFFSET`` query, so the table is as fast at a million
jobs as at ten; Tabulator only ever holds the rows on screen.  When the change feed
reports jobs changed, the page is read again (throttled by its cost) and only the cells
that differ are patched into the table; the whole page is replaced only when the set of
rows on it changed (a new job arrived on page 1, a job left a status filter).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import panel as pn
import param

from ..jobs import ACTIVE, Status, row_code_changed, row_progress
from ..notebook.display import code_mark, no_worker_mark, progress_label
from ..store.cancel import RETRYABLE
from ..store.views import SORTS, JobFilter
from ..store.workers import runner_problem
from .actions import Confirmation, action_button
from .base import Component, Throttle
from .style import CSS, STATUSES, fmt_duration, fmt_time, pill, progress_bar

COLUMNS = [
    "id", "workflow", "queue", "status", "progress", "attempts", "created", "duration",
    "error", "status_value", "progress_value",
]  # fmt: skip
HIDDEN = ["status_value", "progress_value"]
SORT_LABELS = {
    "created": "Created",
    "updated": "Last change",
    "finished": "Finished",
    "priority": "Priority",
    "workflow": "Workflow",
}


#: The bulk actions on the jobs matching the table's filter: (verb, statuses it acts on).
BULK: dict[str, tuple[str, tuple[str, ...]]] = {
    "retry": ("retry", RETRYABLE),
    "cancel": ("cancel", ACTIVE),
}

#: How a bulk action's outcome reads ("cancelled 3 of 3 jobs").
DONE = {"retry": "retried", "cancel": "cancelled"}

#: Jobs one bulk action reaches at most (the newest of those matching).
BULK_CAP = 10_000


def describe_filter(filters: JobFilter) -> str:
    """The filter in words, for the log line of a bulk action."""
    parts = [f"{name}={value!r}" for name, value in vars(filters).items() if value]
    return ", ".join(parts) or "no filter"


def bulk_question(verb: str, rows: Sequence[Any], complete: bool) -> str:
    """ "Retry 37 failed jobs?": the count and statuses of what a bulk action reaches."""
    present = [s.value for s in Status if any(r.status == s.value for r in rows)]
    what = " or ".join(present)
    n = len(rows)
    more = "" if complete else f" (the newest {n:,}: more match, run it again for the rest)"
    return f"{verb.capitalize()} {n:,} {what} job{'s' * (n != 1)}{more}?"


#: How often the table reads which workflows and queues live workers serve.
RUNNERS_REFRESH_SECONDS = 5.0


def table_rows(
    rows: Sequence[Any],
    now: float,
    registered: Mapping[str, str] | None = None,
    runners: dict[str, tuple[set, set]] | None = None,
) -> pd.DataFrame:
    """Store rows (``ViewQueries.jobs_page``) as the table's frame.

    ``registered`` (workflow -> fingerprint in this process) decides which unfinished
    rows get the "code changed" mark; see :func:`~nbjobs.store.views.row_code_changed`.
    ``runners`` (``live_worker_capabilities``) marks the queued jobs no live worker will
    run, with the reason in the badge's tooltip.
    """
    records = []
    for r in rows:
        status = pill(r.status)
        if runners is not None and r.status == "queued":
            problem = runner_problem(r.workflow, r.queue, runners)
            if problem is not None:
                status += no_worker_mark(problem)
        fraction = row_progress(r)
        label = progress_label(r)
        mark = code_mark() if row_code_changed(r, registered) else ""
        end = r.finished_at if r.finished_at is not None else (now if r.started_at else None)
        duration = end - r.started_at if (end is not None and r.started_at) else None
        error = (r.error or "").strip().splitlines()
        records.append(
            [
                r.id,
                html.escape(r.workflow) + mark,
                r.queue,
                status,
                progress_bar(fraction, r.status, label),
                r.attempts,
                fmt_time(r.created_at),
                fmt_duration(duration),
                error[-1][:160] if error else "",
                r.status,
                -1.0 if fraction is None else round(fraction, 4),
            ]
        )
    return pd.DataFrame.from_records(records, columns=COLUMNS)


def _no_rows(total: int) -> bool:
    return total == 0


class JobsTable(Component):
    """Filters, a page of jobs and a pager; ``selected`` is the id of the clicked job."""

    status = param.ListSelector(default=[], objects=list(STATUSES))
    workflow = param.String(default="")
    queue = param.String(default="")
    search = param.String(default="")
    parent_id = param.String(default="", doc="Only the children of this job.")
    group_id = param.String(default="", doc="Only the jobs of this group (a sweep).")
    sort: param.Selector = param.Selector(default="created", objects=list(SORTS))
    descending = param.Boolean(default=True)
    page = param.Integer(default=1, bounds=(1, None))
    page_size = param.Integer(default=25, bounds=(5, 500))
    selected = param.String(default="", doc="The id of the job picked in the table.")
    total = param.Integer(default=0, doc="Jobs matching the filters (capped).")
    total_exact = param.Boolean(default=True)
    counts = param.Dict(
        default={},
        allow_refs=True,
        doc="status -> jobs (the counters' ``counts``, passed as a reference): the total "
        "of a status-only filter, without a count query.",
    )
    workflows = param.List(default=[], item_type=str, doc="The workflow filter's choices.")
    queues = param.List(default=[], item_type=str, doc="The queue filter's choices.")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._throttle = Throttle(minimum_seconds=0.25)
        self._runners: dict[str, tuple[set, set]] | None = None
        self._runners_at = float("-inf")
        self.table = pn.widgets.Tabulator(
            pd.DataFrame(columns=COLUMNS),
            show_index=False,
            disabled=True,
            selectable=1,
            sortable=False,
            hidden_columns=HIDDEN,
            formatters={
                "workflow": {"type": "html"},
                "status": {"type": "html"},
                "progress": {"type": "html"},
                "error": {"type": "plaintext"},
            },
            widths={
                "id": 200,
                "status": 96,
                "progress": 140,
                "attempts": 70,
                "created": 150,
                "duration": 80,
            },
            text_align={"attempts": "right", "duration": "right"},
            layout="fit_data_stretch",
            sizing_mode="stretch_width",
            theme="simple",
            css_classes=["nbj-jobs-table"],
            stylesheets=[
                ".tabulator-row.tabulator-selected { background-color: #dbeafe !important; }"
                ".tabulator-row.tabulator-selected .tabulator-cell { color: #111827 !important; }"
                ".tabulator-cell { font-size: 13px; }"
                ".tabulator-col-title { font-size: 12px; color: #374151; }"
            ],
        )
        self.table.param.watch(self._on_selection, "selection")
        self._status_w = pn.widgets.MultiChoice.from_param(
            self.param.status, label="Status", width=220, placeholder="any status"
        )
        self._workflow_w = pn.widgets.Select(
            label="Workflow", options=["", *self.workflows], width=190
        )
        self._queue_w = pn.widgets.Select(label="Queue", options=["", *self.queues], width=120)
        self._search_w = pn.widgets.TextInput(
            label="Search", placeholder="id, key or error text", width=200
        )
        self._sort_w = pn.widgets.Select(
            label="Sort by", options={v: k for k, v in SORT_LABELS.items()}, value="created",
            width=130,
        )  # fmt: skip
        self._order_w = pn.widgets.Select(
            label="Order", options={"newest first": True, "oldest first": False}, width=120
        )
        self._workflow_w.link(self, value="workflow")
        self._queue_w.link(self, value="queue")
        self._search_w.link(self, value="search")
        self._sort_w.link(self, value="sort")
        self._order_w.link(self, value="descending")
        self._prev = pn.widgets.Button(
            label="\u2039 Prev", width=80, color="primary", variant="outline"
        )
        self._next = pn.widgets.Button(
            label="Next \u203a", width=80, color="primary", variant="outline"
        )
        self._prev.on_click(lambda _e: self._turn(-1))
        self._next.on_click(lambda _e: self._turn(+1))
        self._pager_text = pn.pane.HTML("", stylesheets=[CSS], margin=(12, 10))
        self._group_w = pn.widgets.Button(
            label="", width=260, color="primary", variant="outline", visible=False
        )
        self._group_w.on_click(lambda _e: setattr(self, "group_id", ""))
        self.bulk_retry_button = action_button(
            "Retry all matching…", "nbj-bulk-retry", lambda: self.ask_bulk("retry"), width=170
        )
        self.bulk_cancel_button = action_button(
            "Cancel all matching…", "nbj-bulk-cancel", lambda: self.ask_bulk("cancel"),
            color="danger", width=170,
        )  # fmt: skip
        self.confirmation = Confirmation("nbj-bulk-confirm")
        self._group_changed()

    # -- queries -----------------------------------------------------------------------
    def filters(self) -> JobFilter:
        return JobFilter(
            status=tuple(self.status),
            workflow=self.workflow or None,
            queue=self.queue or None,
            search=self.search or None,
            parent_id=self.parent_id or None,
            group_id=self.group_id or None,
        )

    def load(self) -> None:
        """Read the page and its total; patch the table when only cells changed.

        Only the queries count towards the throttle: putting a page into the table is
        browser-side work whose time (long on a busy host) says nothing of the database.
        """
        rows = self._throttle.run(self._read_page)
        runners = self._live_runners()
        self.show_page(
            table_rows(rows, self.store.now(), self.app.runtime.registry.fingerprints(), runners)
        )

    def _live_runners(self) -> dict[str, tuple[set, set]] | None:
        """What live workers run, read at most every ``RUNNERS_REFRESH_SECONDS``."""
        now = self.store.now()
        if now - self._runners_at >= RUNNERS_REFRESH_SECONDS:
            try:
                self._runners = self.store.live_worker_capabilities(
                    alive_within=2 * self.app.stale_after_seconds
                )
            except Exception:
                self._runners = None
            self._runners_at = now
        return self._runners

    def _read_page(self) -> list[Any]:
        filters = self.filters()
        rows = self.store.jobs_page(
            filters,
            sort=self.sort,
            descending=self.descending,
            limit=self.page_size,
            offset=(self.page - 1) * self.page_size,
        )
        if filters.only_status and self.counts:
            wanted = filters.status or tuple(self.counts)
            self.total, self.total_exact = sum(self.counts.get(s, 0) for s in wanted), True
        else:
            self.total, self.total_exact = self.store.count_matching(filters)
        return rows

    def show_page(self, frame: pd.DataFrame) -> None:
        """Put a page in the table: patch changed cells, or replace a different page."""
        current = self.table.value
        same_rows = (
            current is not None
            and len(current) == len(frame)
            and list(current["id"]) == list(frame["id"])
        )
        if not same_rows:
            self.table.value = frame
            self._reselect()
        else:
            frame.index = current.index
            patch: dict[str, list[tuple[int, Any]]] = {}
            for column in COLUMNS:
                differs = current[column].astype(object) != frame[column].astype(object)
                for index in current.index[differs.to_numpy()]:
                    patch.setdefault(column, []).append((index, frame.at[index, column]))
            if patch:
                self.table.patch(patch, as_index=True)
        self._update_pager()

    def refresh(self, changes: Sequence[Any]) -> None:
        if changes:
            self._throttle.pending = True
        if self._throttle.pending and self._throttle.due():
            self.load()

    def set_options(self, workflows: list[str], queues: list[str]) -> None:
        """The choices of the workflow and queue filters (see :meth:`_options_changed`)."""
        self.param.update(workflows=list(workflows), queues=list(queues))

    # -- events ------------------------------------------------------------------------
    @param.depends(
        "status", "workflow", "queue", "search", "parent_id", "group_id", "sort",
        "descending", "page_size", watch=True,
    )  # fmt: skip
    def _filters_changed(self) -> None:
        # A question about what the old filter matched no longer describes the table.
        self.confirmation.dismiss()
        if self.page != 1:
            self.page = 1  # triggers _page_changed
        else:
            self.load()

    @param.depends("page", watch=True)
    def _page_changed(self) -> None:
        self.load()

    @param.depends("workflows", "queues", watch=True)
    def _options_changed(self) -> None:
        self._workflow_w.options = ["", *self.workflows]
        self._queue_w.options = ["", *self.queues]

    def _turn(self, step: int) -> None:
        last = self._last_page()
        self.page = max(1, min(self.page + step, last))

    def _last_page(self) -> int:
        return max(1, -(-self.total // self.page_size))

    def _on_selection(self, event: Any) -> None:
        value = self.table.value
        if event.new and value is not None and event.new[0] < len(value):
            self.selected = str(value.iloc[event.new[0]]["id"])

    def _reselect(self) -> None:
        value = self.table.value
        ids = list(value["id"]) if value is not None else []
        wanted = [ids.index(self.selected)] if self.selected in ids else []
        if self.table.selection != wanted:
            self.table.selection = wanted

    def _update_pager(self) -> None:
        n = len(self.table.value) if self.table.value is not None else 0
        first = (self.page - 1) * self.page_size + 1 if n else 0
        last = first + n - 1 if n else 0
        total = f"{self.total:,}" + ("" if self.total_exact else "+")
        self._pager_text.object = (
            f'<span class="nbj-muted">jobs {first:,}-{last:,} of {total}'
            f" · page {self.page:,}</span>"
        )
        self._prev.disabled = self.page <= 1
        self._next.disabled = n < self.page_size or (
            self.total_exact and self.page >= self._last_page()
        )

    # -- bulk actions ----------------------------------------------------------------
    def ask_bulk(self, action: str) -> str:
        """Ask to retry or cancel (``action``) every job the filter matches that the
        action applies to; returns the question ("" when there is nothing to ask).

        The ids are read now and kept: "yes" acts on exactly the jobs counted (those of
        them still in a status the action takes), not on what matches by then.
        """
        verb, statuses = BULK[action]
        reason = self.refusal()
        if reason is not None:  # also for a click on a hidden button, sent by a script
            self.act(f"bulk {verb}", lambda: None)
            return ""
        filters = self.filters()
        rows, complete = self.store.jobs_matching(filters, statuses, cap=BULK_CAP)
        if not rows:
            self.notify(
                f"nothing to {verb}: no {' or '.join(statuses)} job matches the filter", "warning"
            )
            self.confirmation.dismiss()
            return ""
        ids = [r.id for r in rows]
        question = bulk_question(verb, rows, complete)
        self.confirmation.ask(
            question, f"Yes, {verb} {len(ids):,}", lambda: self.bulk(action, ids, filters)
        )
        return question

    def bulk(self, action: str, ids: Sequence[str], filters: JobFilter | None = None) -> bool:
        """Retry or cancel (``action``) the jobs ``ids`` in bulk (a few transactions, not
        one per job), authorised and logged with the filter that chose them."""
        verb, _statuses = BULK[action]
        fn = self.app.retry_jobs if action == "retry" else self.app.cancel_jobs
        where = describe_filter(filters or self.filters())

        done = self.act(
            f"bulk {verb} of {len(ids):,} jobs matching {where}",
            lambda: fn(list(ids)),
            report=lambda reached: f"{DONE[action]} {len(reached):,} of {len(ids):,} jobs",
        )
        self.load()
        return done

    @param.depends("group_id", watch=True)
    def _group_changed(self) -> None:
        """The group filter shows as a button that clears it."""
        self._group_w.label = f"group {self.group_id} \u2715" if self.group_id else ""
        self._group_w.visible = bool(self.group_id)

    def controls(self) -> pn.viewable.Viewable:
        """The filter and sort widgets (a row above the table), the bulk actions on what
        the filter matches, and their confirmation."""
        allowed = self.action_allowed()
        filters = pn.FlexBox(
            self._status_w, self._workflow_w, self._queue_w, self._search_w, self._sort_w,
            self._order_w, self._group_w, flex_wrap="wrap", sizing_mode="stretch_width",
        )  # fmt: skip
        bulk = pn.Row(
            self.bulk_retry_button,
            self.bulk_cancel_button,
            self.confirmation,
            visible=allowed,
            sizing_mode="stretch_width",
        )
        self.bulk_retry_button.visible = self.bulk_cancel_button.visible = allowed
        return pn.Column(filters, bulk, sizing_mode="stretch_width")

    def body(self) -> pn.viewable.Viewable:
        """The table and its pager."""
        empty = pn.pane.HTML(
            '<div class="nbj-empty">No jobs match.</div>',
            stylesheets=[CSS],
            visible=pn.bind(_no_rows, self.param.total),
            sizing_mode="stretch_width",
        )
        pager = pn.Row(self._prev, self._next, self._pager_text)
        return pn.Column(self.table, empty, pager, sizing_mode="stretch_width", min_width=600)

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.Column(self.controls(), self.body(), sizing_mode="stretch_width")
