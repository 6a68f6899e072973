"""What every dashboard component shares: the app, a cost-aware throttle, actions guard."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import panel as pn
import param

from . import actions

log = logging.getLogger(__name__)


class Throttle:
    """Runs a query again no sooner than ``factor`` times its last duration.

    Cheap queries run on every refresh; one that takes 80 ms at a million jobs runs at
    most every 1.6 s, so a dashboard never spends more than ~1/``factor`` of its time (and
    the database's) on one query, however big the tables grow.
    """

    def __init__(self, minimum_seconds: float = 0.0, factor: float = 20.0) -> None:
        self.minimum_seconds = minimum_seconds
        self.factor = factor
        self.next_at = 0.0
        self.pending = False

    def due(self) -> bool:
        return time.monotonic() >= self.next_at

    def run(self, fn: Callable[[], Any]) -> Any:
        start = time.monotonic()
        try:
            return fn()
        finally:
            spent = time.monotonic() - start
            self.next_at = start + max(self.minimum_seconds, self.factor * spent)
            self.pending = False


class Component(pn.viewable.Viewer):
    """A dashboard piece over one :class:`~nbjobs.App`; reads only through its store."""

    app = param.Parameter(doc="The nbjobs.App whose database is shown.")

    require_auth = param.Boolean(
        default=False,
        doc="Refuse actions unless the session has a logged-in user (set when served with auth).",
    )

    read_only = param.Boolean(default=False, doc="Hide the retry/cancel/pause actions.")

    operators = param.List(
        default=None, allow_None=True, item_type=str,
        doc="The users who may act (others may only look); None: every logged-in user.",
    )  # fmt: skip

    def shared(self) -> dict[str, Any]:
        """What a view passes the views it builds: the app and who may act."""
        return dict(
            app=self.app,
            require_auth=self.require_auth,
            read_only=self.read_only,
            operators=self.operators,
        )

    @property
    def store(self) -> Any:
        return self.app.store

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        """Shown in a notebook cell: load Panel's notebook support (inline, offline) first."""
        from .notebook import inline_stylesheets, load_panel_support

        load_panel_support()
        bundle = super()._repr_mimebundle_(include, exclude)
        if isinstance(bundle, tuple):
            for meta in bundle[1].values():
                if isinstance(meta, dict) and "id" in meta:
                    inline_stylesheets(meta["id"])
        return bundle

    def load(self) -> None:
        """Read what the view shows (its first render, or a reload)."""

    def refresh(self, changes: Sequence[Any]) -> None:
        """Bring the view up to date, given the jobs changed since the last refresh."""

    def show_frame(
        self,
        table: pn.widgets.Tabulator,
        frame: Any,
        empty: pn.viewable.Viewable,
        actions: Sequence[pn.widgets.Button],
    ) -> None:
        """Put ``frame`` in a small selectable ``table`` (groups, schedules), keeping the
        selection; show ``empty`` instead of an empty table, and the ``actions`` on its
        selected row to a session that may act."""
        empty.visible = frame.empty
        table.visible = not frame.empty
        allowed = not frame.empty and self.action_allowed()
        for button in actions:
            button.visible = allowed
        current = table.value
        if current is None or not frame.equals(current):
            selection = table.selection
            table.value = frame
            table.selection = [i for i in selection if i < len(frame)]

    def selected_row(self, table: pn.widgets.Tabulator, rows: Sequence[Any], what: str) -> Any:
        """The row picked in ``table`` (of ``rows``), or None after asking to pick one."""
        if not table.selection:
            self.notify(f"select a {what} first", "warning")
            return None
        return rows[table.selection[0]]

    def refusal(self) -> str | None:
        """Why this session may not act, or None (see :mod:`nbjobs.views.actions`)."""
        return actions.refusal(
            read_only=self.read_only, require_auth=self.require_auth, operators=self.operators
        )

    def action_allowed(self) -> bool:
        """May this session act: not read-only, logged in under a login, an operator
        when operators are named.  Decides what buttons show; :meth:`act` checks again."""
        return self.refusal() is None

    def notify(self, message: str, kind: str = "info") -> None:
        """A toast in a served page (escaped); the log elsewhere."""
        actions.notify(message, kind)

    def act(
        self, what: str, fn: Callable[[], Any], report: Callable[[Any], str] | None = None
    ) -> bool:
        """Run a user action if allowed, logged with the user's name; report the outcome
        either way (:func:`nbjobs.views.actions.perform`)."""
        return actions.perform(
            what,
            fn,
            report=report,
            read_only=self.read_only,
            require_auth=self.require_auth,
            operators=self.operators,
        )
