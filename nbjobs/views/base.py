"""What every dashboard component shares: the app, a cost-aware throttle, actions guard."""

from __future__ import annotations

import html
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import panel as pn
import param

from .access import auth_configured, session_user

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

    def action_allowed(self) -> bool:
        """Actions need a logged-in user when the dashboard is served with auth."""
        if self.read_only:
            return False
        if not auth_configured(self.require_auth):
            return True
        user = session_user()
        return bool(user) and user != "guest"

    def notify(self, message: str, kind: str = "info") -> None:
        """A toast in a served page; the log elsewhere (notebooks, tests).

        ``message`` is plain text, often with names anyone who can write to the database
        chose (a schedule, a job id, an exception's text), and the toast library sets it
        as ``innerHTML``: so it is escaped here, once, for every caller.
        """
        log.info("%s", message)
        notifications = getattr(pn.state, "notifications", None)
        if notifications is not None:
            try:
                getattr(notifications, kind)(html.escape(message), duration=4000)
            except Exception:
                log.debug("notification failed", exc_info=True)

    def act(self, what: str, fn: Callable[[], Any]) -> bool:
        """Run a user action if allowed; report the outcome either way."""
        if not self.action_allowed():
            self.notify(f"{what}: not allowed (log in first)", "error")
            return False
        try:
            fn()
        except Exception as exc:
            self.notify(f"{what} failed: {exc}", "error")
            return False
        self.notify(what, "success")
        return True
