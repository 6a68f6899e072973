"""Rich HTML for notebooks: one job, a list of jobs and the schedules, in one look.

Jupyter shows an object's ``_repr_html_`` when it is the last expression of a cell, so
``h``, ``app.jobs()`` and ``app.schedules()`` render as compact tables.  The badge, the
progress bar and the time formats here are also the dashboard's (``nbjobs.views.style``
imports them), so a job looks the same in a cell and on the page.  Everything shown is
escaped: job errors, names, keys and artifact previews are user data.  A list of N jobs is read in one
query (:meth:`~nbjobs.store.views.ViewQueries.jobs_rows`), never one per row.

Styles are inline because a notebook's output area has no stylesheet of ours; text
colours are left to the theme where possible, so a dark JupyterLab theme stays readable.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol, SupportsIndex, overload, runtime_checkable

from ..caching import cached_from
from ..jobs import FINISHED, STATUS_COLOURS, row_code_changed, row_progress

if TYPE_CHECKING:
    from ..clock import Clock

#: Rows a list shows at most; the rest are counted in its footer.
MAX_ROWS = 100
#: Characters of an error's first line a table cell shows.
ERROR_CHARS = 120
#: Artifacts a job's repr lists, and previews it reads (each reads a file's first rows).
MAX_ARTIFACTS = 20
MAX_PREVIEWS = 3

FONT = "font-family:system-ui,-apple-system,'Segoe UI',sans-serif;font-size:13px"
MONO = "font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px"
MUTED = "color:#6b7280"
CELL = "text-align:left;padding:3px 10px 3px 0;vertical-align:middle;white-space:nowrap"
HEAD = f"{CELL};{MUTED};font-weight:500;border-bottom:1px solid #d1d5db"


# -- what the renderers read of an app and a job handle ---------------------------------
class Workflows(Protocol):
    """The workflow registry of an app: the fingerprint of each registered workflow."""

    def fingerprints(self) -> dict[str, str]: ...


class EngineView(Protocol):
    """What the notebook renderers use of a handle's engine: its store (table rows, the
    database's clock, outcomes), its codec (results) and its workflow registry."""

    @property
    def store(self) -> Any: ...

    @property
    def codec(self) -> Any: ...

    @property
    def registry(self) -> Workflows: ...


@runtime_checkable
class Job(Protocol):
    """A job as the renderers see it (a :class:`~nbjobs.JobHandle`): an id and the
    engine of its app."""

    id: str

    @property
    def engine(self) -> EngineView: ...


# -- pieces shared with the dashboard ---------------------------------------------------
class Group(Protocol):
    """What the group renderers read of a :class:`~nbjobs.JobGroup`."""

    id: str

    @property
    def label(self) -> str | None: ...

    def status_counts(self) -> dict[str, int]: ...


def colour(status: str | None) -> str:
    """The project's colour for a status (grey for anything unknown)."""
    return STATUS_COLOURS.get(status or "", "#6b7280")


def pill(status: str | None) -> str:
    """A status as a coloured pill."""
    text = html.escape(status or "-")
    return (
        f'<span class="nbj-pill" style="display:inline-block;min-width:64px;text-align:center;'
        f"background:{colour(status)};color:#fff;border-radius:9px;padding:0 8px;"
        f'font-size:11px;line-height:17px;font-weight:600">{text}</span>'
    )


def progress_bar(fraction: float | None, status: str | None, label: str = "") -> str:
    """A thin bar in the status colour, with a label such as ``3/4``; empty when unknown."""
    if fraction is None:
        return f'<span style="color:#9ca3af;font-size:11px">{html.escape(label)}</span>'
    pct = max(0.0, min(1.0, fraction)) * 100
    return (
        f'<div class="nbj-progress" data-pct="{pct:.0f}" style="display:flex;align-items:center;'
        f'gap:6px"><div style="flex:1;min-width:60px;height:7px;background:#e5e7eb;'
        f'border-radius:4px;overflow:hidden"><div class="nbj-progress-fill" '
        f'style="width:{pct:.1f}%;height:7px;background:{colour(status)}"></div></div>'
        f'<span style="font-size:11px;color:#6b7280;min-width:30px">'
        f"{html.escape(label or f'{pct:.0f}%')}</span></div>"
    )


def code_mark() -> str:
    """The small "code changed" badge on an unfinished run whose workflow code changed."""
    return (
        '<span class="nbj-code-changed" title="submitted with other code than the '
        "workflow's current code: resume with the new code, retry from a checkpoint, "
        'or cancel" style="display:inline-block;margin-left:6px;border:1px solid #d97706;'
        "color:#b45309;background:#fffbeb;border-radius:8px;padding:0 6px;font-size:10px;"
        'line-height:15px;font-weight:600;white-space:nowrap">code changed</span>'
    )


def no_worker_mark(reason: str) -> str:
    """The badge on a queued job that no live worker will run; ``reason`` says why."""
    return (
        f'<span class="nbj-no-worker" title="{html.escape(reason, quote=True)}" '
        'style="display:inline-block;margin-left:6px;border:1px solid #dc2626;'
        "color:#b91c1c;background:#fef2f2;border-radius:8px;padding:0 6px;font-size:10px;"
        'line-height:15px;font-weight:600;white-space:nowrap">no worker</span>'
    )


def progress_label(row: Any) -> str:
    """``2/5`` children or steps, ``3 steps`` when the total is unknown, else empty."""
    if row.children_total:
        return f"{row.children_done or 0}/{row.children_total}"
    if row.expected_steps:
        return f"{row.steps_done}/{row.expected_steps}"
    return f"{row.steps_done} step{'s' * (row.steps_done != 1)}" if row.steps_done else ""


def fmt_time(value: float | datetime | None) -> str:
    """An epoch time (or aware datetime) as ``2024-05-01 12:00:03`` UTC; empty for None."""
    if value is None:
        return ""
    epoch = value.timestamp() if isinstance(value, datetime) else value
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def fmt_relative(value: float | datetime | None, now: float | None = None) -> str:
    """``12 s ago`` or ``in 4.0 min``."""
    if value is None:
        return ""
    epoch = value.timestamp() if isinstance(value, datetime) else value
    delta = epoch - (time.time() if now is None else now)
    if abs(delta) < 1:
        return "now"
    text = fmt_duration(abs(delta))
    return f"in {text}" if delta > 0 else f"{text} ago"


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= ERROR_CHARS else line[: ERROR_CHARS - 1] + "\u2026"


def _duration(row: Any, now: float) -> float | None:
    end = row.finished_at if row.finished_at is not None else (now if row.started_at else None)
    return end - row.started_at if (end is not None and row.started_at) else None


def _utc(epoch: float | None) -> str:
    return f"{fmt_time(epoch)} UTC" if epoch is not None else ""


def _when(value: datetime | None, now: float | None) -> str:
    """``2024-05-01 03:00:00 (in 4.0 h)``, or empty."""
    if value is None:
        return ""
    return f'{fmt_time(value)} <span style="{MUTED}">({fmt_relative(value, now)})</span>'


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _muted(text: str) -> str:
    return f'<div style="{FONT};{MUTED};padding:4px 0">{text}</div>'


# -- one job ----------------------------------------------------------------------------
def job_html(handle: Job) -> str:
    """A job as a header (id, status, progress) over a small table of facts and its
    artifacts (with previews of the first :data:`MAX_PREVIEWS`); four queries: the
    row, its steps (which were reused from a cache), then the stored values that hold
    artifact references."""
    engine = handle.engine
    rows = engine.store.jobs_rows([handle.id])
    if not rows:
        return _muted(f"job <b>{_esc(handle.id)}</b> not found (purged, or another database)")
    r = rows[0]
    changed = row_code_changed(r, engine.registry.fingerprints())
    took = fmt_duration(_duration(r, engine.store.now()))
    facts = [
        ("workflow", _esc(r.workflow) + (code_mark() if changed else "")),
        ("queue", _esc(r.queue) + (f" · priority {r.priority}" if r.priority else "")),
        ("key", _esc(r.key)),
        ("parent", _esc(r.parent_id)),
        ("attempts", str(r.attempts)),
        ("created", _utc(r.created_at)),
        ("started", _utc(r.started_at)),
        ("finished", _utc(r.finished_at)),
        ("took", took),
        ("cached", _cached_steps(engine.store.history_steps([r.id]))),
        ("waiting for", _esc(r.waiting_for)),
        ("message", _esc(r.message)),
    ]
    cells = "".join(
        f'<tr><th style="{CELL};{MUTED};font-weight:500">{k}</th><td style="{CELL}">{v}</td></tr>'
        for k, v in facts
        if v
    )
    error = ""
    if r.error:
        error = (
            f'<pre style="{MONO};border-left:3px solid {colour("failed")};padding:2px 8px;'
            f'margin:4px 0;white-space:pre-wrap;max-height:12em;overflow:auto">'
            f"{_esc(r.error)}</pre>"
        )
    return (
        f'<div class="nbj-job" style="{FONT}">'
        f'<div style="display:flex;align-items:center;gap:8px;margin-bottom:4px">'
        f'<b style="{MONO};font-size:13px">job {_esc(r.id)}</b>{pill(r.status)}</div>'
        f'<div style="max-width:320px">{progress_bar(row_progress(r), r.status, progress_label(r))}'
        f'</div><table style="{FONT};border-collapse:collapse;margin-top:4px">{cells}</table>'
        f"{error}{artifacts_html(engine.store.artifact_values([r.id]), engine.codec.artifacts)}"
        "</div>"
    )


def _cached_steps(steps: Iterable[Any]) -> str:
    """Which steps reused an earlier job's value (``cache=True``): "load, clean (cached
    from job X)", grouped by source; empty when none did."""
    by_source: dict[str, list[str]] = {}
    for s in steps:
        source = cached_from(s.detail)
        if source:
            by_source.setdefault(source, []).append(s.name)
    return "; ".join(
        f'{_esc(", ".join(names))} <span style="{MUTED}">(cached from job {_esc(source)})</span>'
        for source, names in by_source.items()
    )


def artifacts_html(
    values: Iterable[Any], store: Any, *, previews: int = MAX_PREVIEWS, limit: int = MAX_ARTIFACTS
) -> str:
    """The artifacts that stored values (``store.artifact_values``) refer to: where,
    type, shape and size of each, read from the references, and a collapsed preview
    (first rows and dtypes) of the first ``previews``; empty when there are none."""
    from ..artifacts.artifact import facts, preview_html
    from ..artifacts.reference import find_references

    found = [(v, within, ref) for v in values for within, ref in find_references(v.value)]
    if not found:
        return ""
    rows = []
    for i, (v, within, ref) in enumerate(found[:limit]):
        where = _esc(v.name if v.kind == "step" else v.kind) + _esc(within)
        title = f'<span title="{_esc(ref.uri)}">{facts(ref)}</span>'
        if i < previews:
            title = (
                f'<details class="nbj-artifact"><summary style="cursor:pointer">{title}</summary>'
                f"{preview_html(ref, store)}</details>"
            )
        rows.append(
            f'<tr data-step="{_esc(v.name)}"><th style="{CELL};{MUTED};font-weight:500;'
            f'vertical-align:top">{where}</th><td style="{CELL}">{title}</td></tr>'
        )
    more = len(found) - len(rows)
    footer = f'<div style="{MUTED};font-size:12px">and {more:,} more</div>' if more else ""
    return (
        f'<div class="nbj-artifacts" style="margin-top:4px"><div style="{MUTED}">artifacts</div>'
        f'<table style="{FONT};border-collapse:collapse">{"".join(rows)}</table>{footer}</div>'
    )


# -- lists ------------------------------------------------------------------------------
def _job_rows(handles: Sequence[Job]) -> dict[str, Any]:
    """Table rows of the handles by id: one query per database (one for an app's list)."""
    out: dict[str, Any] = {}
    engines = {id(h.engine): h.engine for h in handles}
    for engine in engines.values():
        ids = [h.id for h in handles if h.engine is engine]
        out.update((r.id, r) for r in engine.store.jobs_rows(ids))
    return out


def _table(head: Sequence[str], body: Iterable[str], footer: str, kind: str) -> str:
    heads = "".join(f'<th style="{HEAD}">{h}</th>' for h in head)
    return (
        f'<div class="nbj-{kind}" style="{FONT};overflow-x:auto">'
        f'<table style="{FONT};border-collapse:collapse;width:auto">'
        f"<thead><tr>{heads}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        f'<div style="{MUTED};font-size:12px;margin-top:3px">{footer}</div></div>'
    )


def jobs_html(handles: Sequence[Any]) -> str:
    """A compact table of jobs, newest first as given; at most :data:`MAX_ROWS` rows."""
    if not handles:
        return _muted("No jobs.")
    shown = list(handles[:MAX_ROWS])
    jobs = [h for h in shown if isinstance(h, Job)]
    rows = _job_rows(jobs)
    now = {id(h.engine): h.engine.store.now() for h in jobs}
    fingerprints = {id(h.engine): h.engine.registry.fingerprints() for h in jobs}
    body = []
    for h in shown:
        r = rows.get(h.id) if isinstance(h, Job) else None
        if r is None:
            what = h.id if isinstance(h, Job) else repr(h)
            body.append(
                f'<tr><td style="{CELL};{MONO}">{_esc(what)}</td>'
                f'<td style="{CELL};{MUTED}" colspan="9">not found</td></tr>'
            )
            continue
        mark = code_mark() if row_code_changed(r, fingerprints[id(h.engine)]) else ""
        line = _first_line(r.error)
        error = (
            f'<span title="{_esc(r.error)}" style="color:{colour("failed")}">{_esc(line)}</span>'
            if line
            else ""
        )
        cells = [
            f'<td style="{CELL};{MONO}">{_esc(r.id)}</td>',
            f'<td style="{CELL}">{_esc(r.workflow)}{mark}</td>',
            f'<td style="{CELL}">{pill(r.status)}</td>',
            f'<td style="{CELL};min-width:130px">'
            f"{progress_bar(row_progress(r), r.status, progress_label(r))}</td>",
            f'<td style="{CELL};text-align:right">{r.attempts}</td>',
            f'<td style="{CELL}">{fmt_time(r.started_at)}</td>',
            f'<td style="{CELL}">{fmt_time(r.finished_at)}</td>',
            f'<td style="{CELL};text-align:right">'
            f"{fmt_duration(_duration(r, now[id(h.engine)]))}</td>",
            f'<td style="{CELL};white-space:normal;min-width:220px;max-width:480px">{error}</td>',
        ]
        body.append(f'<tr data-job="{_esc(r.id)}">{"".join(cells)}</tr>')
    total = len(handles)
    footer = f"{total:,} job{'s' * (total != 1)}"
    if total > len(shown):
        footer = f"the first {len(shown):,} of {total:,} jobs"
    head = ["id", "workflow", "status", "progress", "attempts", "started (UTC)",
            "finished (UTC)", "took", "error"]  # fmt: skip
    return _table(head, body, footer, "jobs")


def schedules_html(items: Sequence[Mapping[str, Any]], now: float | None = None) -> str:
    """The schedules (as ``app.schedules()`` returns them) as a compact table."""
    if not items:
        return _muted(
            'No schedules. Create one with <code>app.schedule("name", workflow, '
            'cron="0 3 * * *")</code>.'
        )
    body = []
    for s in items:
        paused = bool(s.get("paused"))
        state = (
            f'<span style="{MUTED};font-weight:600">paused</span>'
            if paused
            else f'<span style="color:{colour("succeeded")}">active</span>'
        )
        next_run, last_run = s.get("next_run"), s.get("last_run")
        last_status = s.get("last_status")
        cells = [
            f'<td style="{CELL};font-weight:600">{_esc(s.get("name"))}</td>',
            f'<td style="{CELL}">{_esc(s.get("workflow"))}</td>',
            f'<td style="{CELL}"><code style="{MONO}">{_esc(s.get("cron"))}</code></td>',
            f'<td style="{CELL}">{_esc(s.get("timezone"))}</td>',
            f'<td style="{CELL}">{_when(next_run, now)}</td>',
            f'<td style="{CELL}">{_when(last_run, now)}</td>',
            f'<td style="{CELL}">{pill(last_status) if last_status else ""}</td>',
            f'<td style="{CELL}">{state}</td>',
        ]
        body.append(f'<tr data-schedule="{_esc(s.get("name"))}">{"".join(cells)}</tr>')
    head = ["name", "workflow", "cron", "timezone", "next run (UTC)", "last run (UTC)",
            "last status", "state"]  # fmt: skip
    n = len(items)
    return _table(head, body, f"{n:,} schedule{'s' * (n != 1)}", "schedules")


def group_counts_text(counts: Mapping[str, int]) -> str:
    """``3 succeeded · 1 failed · 6 queued``: the non-zero counts of a group, in status order."""
    return " · ".join(f"{n} {s}" for s, n in counts.items() if n) or "no jobs"


def group_html(group_id: str, label: str | None, counts: Mapping[str, int]) -> str:
    """A group of jobs: its label and id, one progress bar and its counts by status."""
    total = sum(counts.values())
    done = sum(counts.get(s, 0) for s in FINISHED)
    worst = next(
        (s for s in ("failed", "cancelled", "running", "queued") if counts.get(s)), "succeeded"
    )
    title = f"<b>{_esc(label)}</b> " if label else ""
    return (
        '<div class="nbj-group" style="font-family:system-ui,sans-serif;font-size:13px;'
        f'max-width:520px">{title}<code>{_esc(group_id)}</code>'
        f"{progress_bar(done / total if total else 1.0, worst, f'{done}/{total}')}"
        f"{_muted(_esc(group_counts_text(counts)))}</div>"
    )


class JobList(list):
    """``app.jobs()``: a plain list of :class:`~nbjobs.JobHandle` that renders as a table.

    Slices stay ``JobList``; everything else is ``list``'s.
    """

    @overload
    def __getitem__(self, index: SupportsIndex) -> Job: ...
    @overload
    def __getitem__(self, index: slice) -> JobList: ...
    def __getitem__(self, index: Any) -> Any:
        item = super().__getitem__(index)
        return type(self)(item) if isinstance(index, slice) else item

    def _repr_html_(self) -> str:
        return jobs_html(self)


class ScheduleList(list):
    """``app.schedules()``: a plain list of dicts that renders as a table.

    ``clock`` (the app's) dates the "in 4.0 min" of the next runs.
    """

    def __init__(self, items: Iterable[Mapping[str, Any]] = (), *, clock: Clock | None = None):
        super().__init__(items)
        self.clock = clock

    def __getitem__(self, index: Any) -> Any:
        item = super().__getitem__(index)
        return type(self)(item, clock=self.clock) if isinstance(index, slice) else item

    def _repr_html_(self) -> str:
        return schedules_html(self, None if self.clock is None else self.clock.now())


__all__ = [
    "JobList",
    "ScheduleList",
    "artifacts_html",
    "code_mark",
    "colour",
    "fmt_duration",
    "fmt_relative",
    "fmt_time",
    "job_html",
    "jobs_html",
    "pill",
    "progress_bar",
    "progress_label",
    "schedules_html",
]
