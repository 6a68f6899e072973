"""One job: input, result, error and traceback, attempts, a step timeline, signals,
its fan-out tree, and the retry and cancel actions.

Artifacts: a step (or the input, or the result) whose value refers to artifacts shows
each one's type, shape and size, read from the references in the row, and a collapsed
preview (dtypes and first rows) read from the artifact store; previews are bounded
(:mod:`nbjobs.artifacts.artifact` reads only the first rows) and at most
:data:`MAX_PREVIEWS` per job.  Nothing is loaded whole and nothing is unpickled."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any

import panel as pn
import param

from ..artifacts.artifact import facts, preview_html
from ..artifacts.reference import Reference, find_references
from ..caching import cached_from
from ..errors import UnknownJob
from ..jobs import FINISHED, row_code_changed, row_progress
from ..notebook.display import code_mark
from .actions import action_button
from .base import Component
from .notebook_job import NotebookPane
from .style import (
    CSS,
    STATUSES,
    colour,
    fmt_duration,
    fmt_relative,
    fmt_time,
    pill,
    progress_bar,
    stored_value,
    truncate,
)


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _typed(typed: str | None, value: str | None) -> str:
    """What a text input holds: its keystrokes (``value_input``) reach the server before
    the blur that sets ``value``, so a click on "Send" right after typing sees them."""
    return typed if typed is not None else (value or "")


#: Artifacts of one job the detail previews (each preview reads a file's first rows).
MAX_PREVIEWS = 5

#: The artifacts of a job by (kind, step name): ``[(within, reference), ...]``.
Found = dict[tuple[str, str], list[tuple[str, Reference]]]


def job_artifacts(values: Sequence[Any]) -> Found:
    """The references in a job's stored values (``store.artifact_values``), by place."""
    found: Found = {}
    for v in values:
        refs = find_references(v.value)
        if refs:
            found[(v.kind, v.name)] = refs
    return found


def artifacts_cell(refs: Sequence[tuple[str, Reference]], store: Any, previews: list[int]) -> str:
    """Each artifact's facts, and its preview while ``previews[0]`` (a budget shared by
    the whole job) lasts."""
    parts = []
    for within, ref in refs:
        where = f'<span class="nbj-muted">{_esc(within)}</span> ' if within else ""
        label = (
            f'{where}<span class="nbj-artifact-facts" title="{_esc(ref.uri)}">{facts(ref)}</span>'
        )
        if previews[0] > 0:
            previews[0] -= 1
            parts.append(
                f'<details class="nbj-artifact"><summary>{label}</summary>'
                f"{preview_html(ref, store)}</details>"
            )
        else:
            parts.append(f'<div class="nbj-artifact">{label}</div>')
    return "".join(parts)


def attempt_traceback(attempt: Any, *, opened: bool = False) -> str:
    """An attempt's error and traceback as a collapsible block; a traceback longer than
    the detail reads (``DETAIL_CHARS``) says how long it is and where to read it whole."""
    text = attempt.traceback or attempt.error or ""
    total = (attempt.traceback_length if attempt.traceback else attempt.error_length) or len(text)
    cut = ""
    if total > len(text):
        cut = (
            f'<div class="nbj-muted">… {total - len(text):,} more characters: '
            f"<code>nbjobs jobs show {_esc(attempt.job_id)}</code> prints it whole</div>"
        )
    what = "Traceback" if attempt.traceback else "Error"
    return (
        f'<details class="nbj-traceback" data-attempt="{attempt.attempt}"'
        f"{' open' if opened else ''}><summary>{what} of attempt {attempt.attempt}</summary>"
        f'<pre class="nbj-pre nbj-error">{_esc(text)}</pre>{cut}</details>'
    )


def _kv(rows: Sequence[tuple[str, Any]]) -> str:
    cells = "".join(
        f"<tr><th>{_esc(k)}</th><td>{v}</td></tr>" for k, v in rows if v not in (None, "")
    )
    return f'<table class="nbj-kv">{cells}</table>'


def step_timeline(
    steps: Sequence[Any],
    job: Any,
    artifacts: Found | None = None,
    store: Any = None,
    previews: list[int] | None = None,
) -> str:
    """Checkpoints as rows with a bar placed on the run's time axis; a step that refers
    to artifacts shows them (``artifacts``, from :func:`job_artifacts`) instead of the
    reference text, previews read from ``store`` while the ``previews`` budget lasts."""
    artifacts = artifacts or {}
    previews = previews if previews is not None else [MAX_PREVIEWS]
    if not steps:
        return '<div class="nbj-empty">No checkpoints yet.</div>'
    starts = [s.started_at for s in steps if s.started_at is not None]
    ends = [s.finished_at for s in steps if s.finished_at is not None]
    t0 = min(starts + ([job.started_at] if job.started_at else [])) if starts else None
    t1 = max(ends) if ends else None
    span = (t1 - t0) if (t0 is not None and t1 is not None and t1 > t0) else None
    rows = []
    for s in steps:
        bar = ""
        if span and s.started_at is not None and s.finished_at is not None:
            left = (s.started_at - t0) / span * 100
            width = max((s.finished_at - s.started_at) / span * 100, 0.6)
            shade = colour("succeeded") if s.done else colour("waiting")
            bar = (
                f'<div class="nbj-lane"><div style="left:{left:.2f}%;width:{width:.2f}%;'
                f'background:{shade}"></div></div>'
            )
        duration = (
            fmt_duration(s.finished_at - s.started_at)
            if s.started_at is not None and s.finished_at is not None
            else ""
        )
        refs = artifacts.get(("step", s.name)) if s.done else None
        value = (
            artifacts_cell(refs, store, previews)
            if refs
            else f'<code style="font-size:11px">{_esc(stored_value(s.value, 120, s.value_length))}</code>'
        )
        source = cached_from(getattr(s, "detail", None))
        cached = (
            f' · <span class="nbj-cached" title="reused from an earlier job (cache=True)">'
            f"cached from job {_esc(source)}</span>"
            if source
            else ""
        )
        rows.append(
            f'<tr data-step="{_esc(s.name)}"><td>{s.seq}</td><td><b>{_esc(s.name)}</b>'
            f'<div class="nbj-muted">{_esc(s.kind)}'
            f"{' · attempt ' + str(s.attempt) if s.attempt else ''}{cached}</div></td>"
            f"<td>{duration}</td><td style='width:45%'>{bar}</td>"
            f"<td>{value}</td></tr>"
        )
    head = "<tr><th>#</th><th>step</th><th>took</th><th>timeline</th><th>value</th></tr>"
    return f'<table class="nbj-steps">{head}{"".join(rows)}</table>'


def tree_html(node: dict[str, Any], *, open_levels: int = 1, level: int = 0) -> str:
    """A fan-out tree as nested ``<details>``: collapsible, with status counts."""
    job = node["job"]
    counts = "".join(
        f'<span class="nbj-count" style="background:{colour(s)}" title="{s}">'
        f"{node['counts'][s]:,} {s}</span>"
        for s in STATUSES
        if node["counts"].get(s)
    )
    label = (
        f'<span class="nbj-dot" style="background:{colour(job.status)}"></span>'
        f'<span class="id">{_esc(job.id)}</span> <b>{_esc(job.workflow)}</b> '
        f'<span class="nbj-muted">{_esc(job.status)}'
        f"{' · ' + _esc(job.fanout) if job.fanout else ''}</span>"
    )
    if not node["total"]:
        return f'<div class="leaf" data-job="{_esc(job.id)}">{label}</div>'
    children = "".join(
        tree_html(c, open_levels=open_levels, level=level + 1) for c in node["children"]
    )
    hidden = node["hidden"]
    if hidden:
        parts = ", ".join(f"{n:,} {s}" for s, n in hidden.items())
        children += f'<div class="more">… and {sum(hidden.values()):,} more: {parts}</div>'
    if not node["children"] and not hidden:
        children = '<div class="more">children not loaded</div>'
    opened = " open" if level < open_levels else ""
    return (
        f'<details{opened} data-job="{_esc(job.id)}"><summary>{label} '
        f'<span class="nbj-muted">· {node["total"]:,} children</span>{counts}</summary>'
        f"{children}</details>"
    )


class FanOutTree(Component):
    """A job's children and grandchildren, at most ``cap`` listed per parent.

    ``job_id`` may be a reference (the detail passes its own); ``tree`` is the state
    read, and the pane follows it.
    """

    job_id = param.String(default="", allow_refs=True)
    cap = param.Integer(default=50, bounds=(1, 10_000))
    depth = param.Integer(default=2, bounds=(1, 5))
    tree = param.Dict(
        default=None, allow_None=True, constant=True,
        doc="The tree read for ``job_id`` (``ViewQueries.job_tree``); None without one.",
    )  # fmt: skip

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._pane = pn.pane.HTML("", sizing_mode="stretch_width", stylesheets=[CSS])
        self._ids: set[str] = set()
        # Every read redraws, even one equal to the last (a gone job, twice).
        self.param.watch(self._render, "tree", onlychanged=False)
        self.load()

    @param.depends("job_id", "cap", "depth", watch=True)
    def load(self) -> None:
        tree = None
        if self.job_id:
            try:
                tree = self.store.job_tree(self.job_id, depth=self.depth, cap=self.cap)
            except UnknownJob:
                pass
        with param.edit_constant(self):
            self.tree = tree

    def _render(self, _event: Any = None) -> None:
        tree = self.tree
        self._ids = set()
        stack = [tree] if tree else []
        while stack:
            node = stack.pop()
            self._ids.add(node["job"].id)
            stack.extend(node["children"])
        if not self.job_id:
            self._pane.object = '<div class="nbj-empty">Pick a job to see its fan-out.</div>'
        elif tree is None:
            self._pane.object = '<div class="nbj-empty">This job no longer exists.</div>'
        elif not tree["total"]:
            self._pane.object = '<div class="nbj-empty">This job has no children.</div>'
        else:
            self._pane.object = f'<div class="nbj-tree">{tree_html(tree)}</div>'

    def refresh(self, changes: Sequence[Any]) -> None:
        if self.job_id and any(c.id in self._ids or c.parent_id in self._ids for c in changes):
            self.load()

    def __panel__(self) -> pn.viewable.Viewable:
        return self._pane


class JobDetail(Component):
    """Everything about one job, and the retry and cancel actions.

    ``job_id`` may be a reference (the dashboard passes the table's ``selected``);
    ``detail`` is the state read, and the panes follow it.
    """

    job_id = param.String(default="", allow_refs=True)
    detail = param.Dict(
        default=None, allow_None=True, constant=True,
        doc="What ``ViewQueries.job_detail`` read for ``job_id``; None without one.",
    )  # fmt: skip

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.tree = FanOutTree(app=self.app, job_id=self.param.job_id)
        self.notebook = NotebookPane(app=self.app, job_id=self.param.job_id)
        self._header = pn.pane.HTML("", sizing_mode="stretch_width", stylesheets=[CSS])
        self._summary = pn.pane.HTML("", sizing_mode="stretch_width", stylesheets=[CSS])
        self._steps = pn.pane.HTML("", sizing_mode="stretch_width", stylesheets=[CSS])
        self._attempts = pn.pane.HTML("", sizing_mode="stretch_width", stylesheets=[CSS])
        self._signals = pn.pane.HTML("", sizing_mode="stretch_width", stylesheets=[CSS])
        self.retry_button = action_button(
            "Retry", "nbj-retry", self.retry, outline=False, width=90, align="end"
        )
        self.cancel_button = action_button(
            "Cancel", "nbj-cancel", self.cancel, color="danger", width=90, align="end"
        )
        self.step_select = pn.widgets.Select(
            label="Retry from step", options=[], width=190, css_classes=["nbj-retry-step"]
        )
        self.retry_from_button = action_button(
            "Retry from this step", "nbj-retry-from", self._on_retry_from, width=160, align="end"
        )
        self.signal_name = pn.widgets.TextInput(
            label="Signal name", placeholder="e.g. approval", width=170,
            css_classes=["nbj-signal-name"],
        )  # fmt: skip
        self.signal_payload = pn.widgets.TextAreaInput(
            label="Payload (JSON; empty for none)", placeholder='{"approved": true}',
            width=290, height=64, css_classes=["nbj-signal-payload"],
        )  # fmt: skip
        self.signal_button = action_button("Send signal", "nbj-signal-send", self._on_send_signal)
        self.signal_message = pn.pane.HTML(
            "", stylesheets=[CSS], css_classes=["nbj-signal-message"], sizing_mode="stretch_width"
        )
        self._signal_form = pn.Column(
            pn.Row(self.signal_name, self.signal_payload),
            pn.Row(self.signal_button, self.signal_message, sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )
        self.tabs = pn.Tabs(
            ("Summary", self._summary),
            ("Steps", self._steps),
            ("Attempts", self._attempts),
            ("Signals", pn.Column(self._signal_form, self._signals, sizing_mode="stretch_width")),
            ("Fan-out", self.tree),
            ("Notebook", self.notebook),
            sizing_mode="stretch_width",
            dynamic=False,
        )
        # Every read redraws, even one equal to the last (a gone job, twice).
        self.param.watch(self._render, "detail", onlychanged=False)
        self.load()

    # -- actions -----------------------------------------------------------------------
    def retry(self) -> bool:
        """Queue the failed or cancelled job again, keeping its checkpoints."""
        job_id = self.job_id
        done = self.act(f"retrying job {job_id}", lambda: self.app.job(job_id).retry())
        self.load()
        return done

    def retry_from(self, step: str) -> bool:
        """Re-run the finished job from ``step`` on: the checkpoints before it replay,
        that step and the later ones run again (``retry(from_checkpoint=step)``)."""
        job_id = self.job_id
        done = self.act(
            f"retrying job {job_id} from step {step!r}",
            lambda: self.app.job(job_id).retry(from_checkpoint=step),
        )
        self.load()
        return done

    def cancel(self) -> bool:
        """Cancel the job: at once when queued or waiting, at its next step when running."""
        job_id = self.job_id
        done = self.act(f"cancelling job {job_id}", lambda: self.app.cancel(job_id))
        self.load()
        return done

    def send_signal(self, name: str, payload_text: str) -> bool:
        """Send the signal ``name`` with the JSON ``payload_text`` (empty: no payload).

        Bad input (no name, text that is not JSON) is said under the form and nothing
        is sent; so is a payload the job's codec cannot store.
        """
        name = name.strip()
        if not name:
            return self._signal_said("Give the signal's name: nothing was sent.", ok=False)
        text = payload_text.strip()
        try:
            payload = json.loads(text) if text else None
        except ValueError as exc:
            return self._signal_said(
                f"The payload is not valid JSON ({exc}): nothing was sent.", ok=False
            )
        job_id = self.job_id
        failure: list[str] = []

        def send() -> None:
            try:
                self.app.signal(job_id, name, payload)
            except Exception as exc:
                failure.append(str(exc))
                raise

        done = self.act(f"sending signal {name!r} to job {job_id}", send)
        if done:
            self._signal_said(f"Sent signal {name!r} to job {job_id}.", ok=True)
        else:
            self._signal_said(
                f"Nothing was sent: {failure[0] if failure else self.refusal()}", ok=False
            )
        self.load()
        return done

    def _signal_said(self, text: str, *, ok: bool) -> bool:
        kind = "nbj-said-ok" if ok else "nbj-said-error"
        self.signal_message.object = f'<div class="{kind}">{_esc(text)}</div>'
        return ok

    def _on_retry_from(self) -> None:
        step = self.step_select.value
        if not step and self.action_allowed():
            self.notify("pick the step to retry from first", "warning")
        else:  # refused and logged when this session may not act
            self.retry_from(step or "")

    def _on_send_signal(self) -> None:
        self.send_signal(
            _typed(self.signal_name.value_input, self.signal_name.value),
            _typed(self.signal_payload.value_input, self.signal_payload.value),
        )

    # -- loading -----------------------------------------------------------------------
    @param.depends("job_id", watch=True)
    def load(self) -> None:
        detail = None
        if self.job_id:
            try:
                detail = self.store.job_detail(self.job_id)
                detail["artifacts"] = job_artifacts(self.store.artifact_values([self.job_id]))
                # Why a queued job is not running yet (a limit, a paused queue, not due):
                # the question an operator opens a queued job to answer.
                if detail["job"].status == "queued":
                    detail["hold"] = self.store.job_hold(self.job_id)
            except UnknownJob:
                pass
        with param.edit_constant(self):
            self.detail = detail

    def _render(self, _event: Any = None) -> None:
        d = self.detail
        if d is None:
            gone = (
                f"Job {_esc(self.job_id)} is gone." if self.job_id else "Select a job in the table."
            )
            self._header.object = f'<div class="nbj-empty">{gone}</div>'
            for pane in (self._summary, self._steps, self._attempts, self._signals):
                pane.object = ""
            self._show_actions(None, [])
            return
        job = d["job"]
        found, store, previews = d.get("artifacts") or {}, self.app.codec.artifacts, [MAX_PREVIEWS]
        self._header.object = self._header_html(job, d["children"], d.get("hold"))
        self._summary.object = self._summary_html(job, found, store, previews)
        self._steps.object = step_timeline(d["checkpoints"], job, found, store, previews)
        self._attempts.object = self._attempts_html(d["attempts"]) + self._step_tries_html(
            d.get("step_tries") or []
        )
        self._signals.object = self._signals_html(d["signals"])
        self._show_actions(job, d["checkpoints"])

    def _show_actions(self, job: Any, steps: Sequence[Any]) -> None:
        """Show the actions that apply to the job's status, to a session that may act."""
        allowed = job is not None and self.action_allowed()
        status = job.status if job is not None else None
        self.retry_button.visible = allowed and status in ("failed", "cancelled")
        self.cancel_button.visible = allowed and status not in FINISHED
        options = {f"{s.seq}. {s.name}": s.name for s in steps}
        if self.step_select.options != options:
            self.step_select.options = options
        replay = allowed and status in FINISHED and bool(options)
        self.step_select.visible = self.retry_from_button.visible = replay
        self._signal_form.visible = allowed and status not in FINISHED

    def refresh(self, changes: Sequence[Any]) -> None:
        if self.job_id and any(c.id == self.job_id or c.parent_id == self.job_id for c in changes):
            self.load()
        self.tree.refresh(changes)
        self.notebook.refresh(changes)

    # -- rendering ---------------------------------------------------------------------
    def _header_html(self, job: Any, children: dict[str, int], hold: str | None = None) -> str:
        fraction = row_progress(job)
        if job.children_total:
            label = f"{job.children_done}/{job.children_total} children"
        elif job.expected_steps:
            label = f"{job.steps_done}/{job.expected_steps} steps"
        else:
            label = f"{job.steps_done} step{'s' * (job.steps_done != 1)}"
        end = job.finished_at or (self.store.now() if job.started_at else None)
        took = fmt_duration(end - job.started_at) if job.started_at and end else ""
        kids = sum(children.values())
        facts = _kv(
            [
                ("workflow", f"<b>{_esc(job.workflow)}</b>"),
                (
                    "queue",
                    _esc(job.queue) + (f" · priority {job.priority}" if job.priority else ""),
                ),
                ("key", _esc(job.key)),
                ("parent", _esc(job.parent_id)),
                ("schedule", _esc(job.schedule)),
                ("attempts", f"{job.attempts} (retries allowed: {job.max_retries})"),
                ("created", f"{fmt_time(job.created_at)} UTC ({fmt_relative(job.created_at)})"),
                ("started", fmt_time(job.started_at)),
                ("finished", fmt_time(job.finished_at)),
                ("took", took),
                ("held", _esc(hold)),
                ("waiting for", _esc(job.waiting_for)),
                ("worker", _esc(job.worker_id)),
                ("message", _esc(job.message)),
                ("children", f"{kids:,}" if kids else ""),
            ]
        )
        return (
            f'<div style="display:flex;align-items:center;gap:10px;margin-bottom:6px">'
            f'<span style="font-family:ui-monospace,monospace;font-size:14px;font-weight:600">'
            f"{_esc(job.id)}</span>{pill(job.status)}</div>"
            f'<div style="max-width:420px;margin-bottom:8px">'
            f"{progress_bar(fraction, job.status, label)}</div>{facts}{self._code_notice(job)}"
        )

    def _code_notice(self, job: Any) -> str:
        """The changed-code line and its three choices, for an unfinished run of old code."""
        registered = self.app.runtime.registry.fingerprints()
        if not row_code_changed(job, registered):
            return ""
        current = registered.get(job.workflow) or job.latest_fingerprint
        count, _ids = self.store.unfinished_other_code(job.workflow, current)
        others = f"; {count:,} of its unfinished runs have older code" if count > 1 else ""
        return (
            f'<div class="nbj-notice">{code_mark()} <b>{_esc(job.workflow)}</b> has new code '
            f"since this run was submitted{others}. Choose:<ul>"
            "<li><b>resume with the new code</b>: do nothing; a worker with the new "
            "definition replays the finished steps from their checkpoints;</li>"
            "<li><b>retry from a checkpoint</b>: once it has finished, "
            "<code>app.job(id).retry(from_checkpoint=...)</code> re-runs from that step;</li>"
            "<li><b>cancel</b> it: the Cancel button, or <code>app.job(id).cancel()</code>."
            "</li></ul></div>"
        )

    def _summary_html(
        self, job: Any, found: Found | None = None, store: Any = None, previews: Any = None
    ) -> str:
        found = found or {}
        previews = previews if previews is not None else [MAX_PREVIEWS]
        parts = [
            '<div class="nbj-section">Input</div>',
            f'<pre class="nbj-pre">{_esc(stored_value(job.input, total=job.input_length))}</pre>',
        ]
        if ("input", "input") in found:
            parts.append(artifacts_cell(found["input", "input"], store, previews))
        if job.status == "succeeded":
            parts += [
                '<div class="nbj-section">Result</div>',
                f'<pre class="nbj-pre">{_esc(stored_value(job.result, total=job.result_length))}</pre>',
            ]
            if ("result", "result") in found:
                parts.append(artifacts_cell(found["result", "result"], store, previews))
        if job.error:
            parts += [
                '<div class="nbj-section">Error</div>',
                f'<pre class="nbj-pre nbj-error">{_esc(truncate(job.error, 2000, job.error_length))}</pre>',
            ]
        if job.traceback:
            parts += [
                '<div class="nbj-section">Traceback</div>',
                f'<pre class="nbj-pre nbj-error">{_esc(truncate(job.traceback, 8000, job.traceback_length))}</pre>',
            ]
        return "".join(parts)

    def _attempts_html(self, attempts: Sequence[Any]) -> str:
        """One row per attempt, and under each failed one its error and whole traceback,
        collapsed (the newest open): a retried job's first failure often explains the
        second."""
        if not attempts:
            return '<div class="nbj-empty">Not started yet.</div>'
        outcome_colour = {"running": "running", "succeeded": "succeeded", "suspended": "waiting",
                          "released": "queued"}  # fmt: skip
        rows = []
        last = attempts[-1].attempt
        for a in attempts:
            took = fmt_duration(a.finished_at - a.started_at) if a.finished_at else ""
            error = (a.error or "").strip().splitlines()
            shade = colour(outcome_colour.get(a.outcome, "failed"))
            rows.append(
                f'<tr data-attempt="{a.attempt}"><td>{a.attempt}</td>'
                f'<td><span class="nbj-dot" style="background:{shade}"></span>{_esc(a.outcome)}</td>'
                f"<td>{fmt_time(a.started_at)}</td><td>{took}</td>"
                f"<td>{_esc(a.worker_id)}</td><td>{_esc(error[-1][:200] if error else '')}</td></tr>"
            )
            if a.traceback or a.error:
                rows.append(
                    f'<tr class="nbj-tb-row"><td></td><td colspan="5">'
                    f"{attempt_traceback(a, opened=a.attempt == last)}</td></tr>"
                )
        head = (
            "<tr><th>#</th><th>outcome</th><th>started (UTC)</th><th>took</th>"
            "<th>worker</th><th>error</th></tr>"
        )
        return f'<table class="nbj-steps nbj-attempts">{head}{"".join(rows)}</table>'

    def _step_tries_html(self, tries: Sequence[Any]) -> str:
        """The tries of steps with retries: "fetch, try 1: failed ConnectionError"."""
        if not tries:
            return ""
        rows = []
        for t in tries:
            error = (t.error or "").strip().splitlines()
            shade = colour("succeeded" if t.outcome == "succeeded" else "failed")
            rows.append(
                f"<tr><td>{t.attempt}</td><td><b>{_esc(t.step)}</b></td><td>{t.try_number}</td>"
                f'<td><span class="nbj-dot" style="background:{shade}"></span>{_esc(t.outcome)}</td>'
                f"<td>{fmt_duration(t.finished_at - t.started_at)}</td>"
                f"<td>{_esc(error[0][:200] if error else '')}</td></tr>"
            )
        head = (
            "<tr><th>attempt</th><th>step</th><th>try</th><th>outcome</th><th>took</th>"
            "<th>error</th></tr>"
        )
        return (
            '<div class="nbj-empty">Step tries</div>'
            f'<table class="nbj-steps">{head}{"".join(rows)}</table>'
        )

    def _signals_html(self, signals: Sequence[Any]) -> str:
        if not signals:
            return '<div class="nbj-empty">No signals.</div>'
        rows = "".join(
            f"<tr><td><b>{_esc(s.name)}</b></td><td>{fmt_time(s.sent_at)}</td>"
            f"<td>{fmt_time(s.consumed_at) or 'buffered'}</td>"
            f'<td><code style="font-size:11px">{_esc(stored_value(s.payload, 200, s.payload_length))}</code></td></tr>'
            for s in signals
        )
        head = "<tr><th>name</th><th>sent (UTC)</th><th>consumed</th><th>payload</th></tr>"
        return f'<table class="nbj-steps">{head}{rows}</table>'

    def __panel__(self) -> pn.viewable.Viewable:
        actions = pn.Row(
            self.retry_button, self.cancel_button, self.step_select, self.retry_from_button,
            margin=(0, 0, 4, 0),
        )  # fmt: skip
        return pn.Column(self._header, actions, self.tabs, sizing_mode="stretch_width")
