"""How the dashboard draws things: status pills, progress bars, times and the page CSS.

Cells of a Tabulator live in its shadow DOM, so what goes into a table cell carries
inline styles; the rest of the page shares :data:`CSS`.
"""

from __future__ import annotations

import html
import time
from datetime import datetime, timezone

from ..handle import STATUS_COLOURS

STATUSES = ("queued", "running", "waiting", "succeeded", "failed", "cancelled")


def colour(status: str | None) -> str:
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
        f'<span style="font-size:11px;color:#4b5563;min-width:30px">'
        f"{html.escape(label or f'{pct:.0f}%')}</span></div>"
    )


def fmt_time(epoch: float | None) -> str:
    """An epoch time as ``2024-05-01 12:00:03`` UTC, or an empty string."""
    if epoch is None:
        return ""
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


def fmt_relative(epoch: float | None, now: float | None = None) -> str:
    """``12 s ago`` or ``in 4.0 min``."""
    if epoch is None:
        return ""
    delta = epoch - (time.time() if now is None else now)
    if abs(delta) < 1:
        return "now"
    text = fmt_duration(abs(delta))
    return f"in {text}" if delta > 0 else f"{text} ago"


def truncate(text: str | None, limit: int = 2000) -> str:
    """Stored text cut to ``limit`` characters, saying how much was left out."""
    if text is None:
        return ""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters)"


def stored_value(text: str | None, limit: int = 2000) -> str:
    """A stored value as display text, never unpickled (the dashboard may be exposed)."""
    if text is None:
        return "null"
    if text.startswith("pickle:"):
        return f"<pickled value, {len(text):,} bytes>"
    return truncate(text, limit)


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
.nbj-url { font-family: ui-monospace, monospace; font-size: 12px; color: var(--nbj-muted); }
"""
