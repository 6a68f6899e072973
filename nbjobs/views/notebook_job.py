"""The executed notebook of a notebook job, in the job detail (``app.notebook``).

Each attempt of a notebook job keeps its executed ``.ipynb`` as an artifact
(:mod:`nbjobs.store.notebooks`); this view shows the latest one, rendered to HTML by
nbconvert.  The notebook's outputs are whatever its code printed or displayed, so the
HTML is sanitised twice over: nbconvert's ``SanitizeHTML`` cleans the outputs'
markup (no script is left in the page), and the page is shown in an ``<iframe sandbox>`` with no permission at all (no
script runs, the frame has an opaque origin and cannot reach the dashboard).  The
artifact's bytes are read from the store directly: nothing is unpickled.
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Sequence
from typing import Any

import panel as pn
import param

from ..artifacts.reference import find_references, read_bytes
from ..errors import UnknownJob
from .base import Component
from .style import CSS

log = logging.getLogger(__name__)

#: Height of the frame the notebook is shown in, in pixels.
FRAME_HEIGHT = 700


def notebook_html(text: str) -> str:
    """The HTML page of a notebook (its ``.ipynb`` text), with no script left in it.

    nbconvert's ``SanitizeHTML`` cleans the markup of markdown cells and outputs (tags
    and attributes outside its allow-list, such as ``<script>`` and ``onerror``, are
    stripped; JavaScript outputs dropped), and the template's own scripts (MathJax,
    require.js loaders) go too: the frame allows none anyway.
    """
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors.sanitize import SanitizeHTML

    notebook = nbformat.reads(text, as_version=4)
    notebook, _ = SanitizeHTML(strip=True).preprocess(notebook, {})
    body, _resources = HTMLExporter(embed_images=False).from_notebook_node(notebook)
    return _SCRIPT.sub("", body)


#: A ``<script>`` element of nbconvert's template (outputs are sanitised already).
_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script\s*>", re.IGNORECASE | re.DOTALL)


def notebook_frame(page: str, height: int = FRAME_HEIGHT) -> str:
    """``page`` in a sandboxed frame: no scripts, no same-origin access, no referrer."""
    return (
        f'<iframe class="nbj-notebook" sandbox="" referrerpolicy="no-referrer" '
        f'title="executed notebook" srcdoc="{html.escape(page, quote=True)}" '
        f'style="width:100%;height:{height}px;border:1px solid #d0d7de;border-radius:4px">'
        "</iframe>"
    )


def stored_notebook_text(value: str, store: Any) -> str | None:
    """The ``.ipynb`` text a notebook row holds: the bytes of its artifact, or (an app
    without artifacts) the JSON string in the row; None when neither."""
    refs = find_references(value)
    if refs and store is not None:
        return read_bytes(refs[0][1], store).decode("utf-8")
    try:
        inline = json.loads(value)
    except ValueError:
        return None
    return inline if isinstance(inline, str) else None


class NotebookPane(Component):
    """The latest executed notebook of the job ``job_id`` (a reference, from the detail)."""

    job_id = param.String(default="", allow_refs=True)

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._facts = pn.pane.HTML("", sizing_mode="stretch_width", stylesheets=[CSS])
        self._frame = pn.pane.HTML("", sizing_mode="stretch_width")
        self._shown: tuple[Any, ...] | None = None
        self.load()

    @param.depends("job_id", watch=True)
    def load(self) -> None:
        rows: Sequence[Any] = []
        if self.job_id:
            try:
                rows = self.store.job_notebooks(self.job_id)
            except UnknownJob:
                rows = []
        if not rows:
            self._shown = None
            message = (
                "This job has kept no executed notebook (not a notebook job, or no attempt "
                "has ended yet)."
                if self.job_id
                else "Select a job in the table."
            )
            self._facts.object = f'<div class="nbj-empty">{message}</div>'
            self._frame.object = ""
            return
        latest = rows[-1]
        key = (self.job_id, latest.attempt, latest.created_at)
        if key == self._shown:
            return  # rendering is not free: only a new notebook is rendered again
        self._shown = key
        failed = f" · failed at cell {latest.failed_cell}" if latest.failed_cell else ""
        others = f" · {len(rows)} attempts kept" if len(rows) > 1 else ""
        self._facts.object = (
            f'<div class="nbj-muted nbj-notebook-facts">attempt {latest.attempt} · '
            f"{latest.cells_done}/{latest.cells} code cells ran{failed}{others}</div>"
        )
        try:
            text = stored_notebook_text(latest.value, self.app.codec.artifacts)
            if text is None:
                raise ValueError("the row holds no notebook text")
            self._frame.object = notebook_frame(notebook_html(text))
        except Exception as exc:
            log.warning("cannot render the notebook of job %s", self.job_id, exc_info=True)
            self._frame.object = (
                f'<div class="nbj-empty nbj-error">The executed notebook cannot be shown: '
                f"{html.escape(f'{type(exc).__name__}: {exc}')}</div>"
            )

    def refresh(self, changes: Sequence[Any]) -> None:
        if self.job_id and any(c.id == self.job_id for c in changes):
            self.load()

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.Column(self._facts, self._frame, sizing_mode="stretch_width")
