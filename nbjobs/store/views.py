"""Read-only queries for the dashboard and history frames."""

from __future__ import annotations

from .core import CoreStore


class ViewQueries(CoreStore):
    """Read-only queries for the dashboard and history frames."""
