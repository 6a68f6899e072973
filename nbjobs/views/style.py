"""How the dashboard draws things: status pills, progress bars, times and the page CSS.

Cells of a Tabulator live in its shadow DOM, so what goes into a table cell carries
inline styles; the rest of the page shares :data:`CSS`.  The pill, the progress bar and
the time formats are :mod:`nbjobs.notebook.display`'s, so notebooks and the dashboard look alike.
"""

from __future__ import annotations

from ..jobs import STATUSES
from ..notebook.display import (
    colour,
    fmt_duration,
    fmt_relative,
    fmt_time,
    pill,
    progress_bar,
)


def truncate(text: str | None, limit: int = 2000, total: int | None = None) -> str:
    """Stored text cut to ``limit`` characters, saying how much was left out (``total``:
    the full length, when the database has cut ``text`` already)."""
    if text is None:
        return ""
    total = len(text) if total is None else total
    if total <= limit:
        return text
    return f"{text[:limit]}... ({total - limit:,} more characters)"


def stored_value(text: str | None, limit: int = 2000, total: int | None = None) -> str:
    """A stored value as display text, never unpickled (the dashboard may be exposed)."""
    if text is None:
        return "null"
    if text.startswith("pickle:"):
        return f"<pickled value, {len(text) if total is None else total:,} bytes>"
    return truncate(text, limit, total)


CSS = """
:host { --nbj-border: #e5e7eb; --nbj-muted: #6b7280; font-family: system-ui, sans-serif; }
.nbj-cards { display: flex; flex-wrap: wrap; gap: 12px; }
.nbj-card { flex: 1 1 120px; background: #fff; border: 1px solid var(--nbj-border);
  border-top: 4px solid var(--c); border-radius: 8px; padding: 10px 14px; }
.nbj-card .n { font-size: 26px; font-weight: 650; color: #111827; line-height: 1.2; }
.nbj-card .l { font-size: 12px; color: var(--nbj-muted); text-transform: uppercase;
  letter-spacing: .04em; }
.nbj-section { font-size: 13px; font-weight: 600; color: #374151; margin: 4px 0; }
.nbj-muted { color: var(--nbj-muted); font-size: 12px; }
.nbj-kv { border-collapse: collapse; font-size: 13px; }
.nbj-kv th { text-align: left; color: var(--nbj-muted); font-weight: 500; padding: 2px 14px 2px 0;
  vertical-align: top; white-space: nowrap; }
.nbj-kv td { padding: 2px 0; word-break: break-all; }
pre.nbj-pre { background: #f9fafb; border: 1px solid var(--nbj-border); border-radius: 6px;
  padding: 8px 10px; font-size: 12px; max-height: 260px; overflow: auto; white-space: pre-wrap;
  word-break: break-word; margin: 4px 0 10px 0; }
pre.nbj-error { background: #fef2f2; border-color: #fecaca; color: #7f1d1d; }
.nbj-steps { width: 100%; border-collapse: collapse; font-size: 12px; }
.nbj-steps td, .nbj-steps th { padding: 4px 6px; border-bottom: 1px solid var(--nbj-border);
  text-align: left; vertical-align: middle; }
.nbj-steps th { color: var(--nbj-muted); font-weight: 500; }
.nbj-artifact summary { cursor: pointer; }
.nbj-preview { max-height: 260px; overflow: auto; }
.nbj-lane { position: relative; height: 10px; background: #f3f4f6; border-radius: 3px;
  min-width: 160px; }
.nbj-lane > div { position: absolute; top: 0; height: 10px; border-radius: 3px; min-width: 2px; }
.nbj-tree details { margin-left: 16px; }
.nbj-tree > details { margin-left: 0; }
.nbj-tree summary { cursor: pointer; padding: 3px 0; font-size: 13px; list-style-position: outside; }
.nbj-tree .leaf { margin-left: 30px; padding: 3px 0; font-size: 13px; }
.nbj-tree .id { font-family: ui-monospace, monospace; font-size: 12px; color: #374151; }
.nbj-tree .more { margin-left: 30px; padding: 3px 0; font-size: 12px; color: var(--nbj-muted); }
.nbj-dot { display: inline-block; width: 9px; height: 9px; border-radius: 50%;
  margin-right: 6px; vertical-align: middle; }
.nbj-count { display: inline-block; border-radius: 8px; padding: 0 6px; margin-left: 4px;
  font-size: 11px; color: #fff; }
.nbj-empty { color: var(--nbj-muted); font-size: 13px; padding: 18px 0; text-align: center; }
.nbj-header { display: flex; align-items: center; gap: 14px; font-size: 13px; color: #374151; }
.nbj-live { display: inline-block; width: 8px; height: 8px; border-radius: 50%;
  background: #16a34a; margin-right: 5px; }
.nbj-notice { background: #fffbeb; border: 1px solid #fcd34d; border-radius: 6px;
  padding: 6px 10px; margin: 6px 0; font-size: 13px; color: #78350f; }
.nbj-notice ul { margin: 4px 0 0 0; padding-left: 18px; }
.nbj-traceback summary { cursor: pointer; font-size: 12px; color: #7f1d1d; padding: 2px 0; }
.nbj-traceback pre.nbj-pre { max-height: 360px; margin-bottom: 4px; }
.nbj-attempts tr.nbj-tb-row td { border-bottom: 1px solid var(--nbj-border); padding-top: 0; }
.nbj-said-ok { color: #166534; font-size: 13px; }
.nbj-said-error { color: #991b1b; font-size: 13px; font-weight: 600; }
.nbj-url { font-family: ui-monospace, monospace; font-size: 12px; color: var(--nbj-muted); }
"""


__all__ = [
    "CSS", "STATUSES", "colour", "fmt_duration", "fmt_relative", "fmt_time", "pill",
    "progress_bar", "stored_value", "truncate",
]  # fmt: skip
