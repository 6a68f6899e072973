"""Dashboard actions: who may act, a log line naming who did, and a confirmation.

Every button that changes the database (retry, cancel, signal, bulk actions, schedules,
groups) goes through :func:`perform`, on the server, inside the Python callback the
click runs: a hidden button hides nothing from a script that sends the click over the
websocket itself, so the check is made again for every action, never only by hiding.

Who may act:

* nobody on a ``read_only`` view;
* with a login configured (``nbjobs dashboard --basic-auth``, ``panel serve
  --basic-auth/--oauth-*``), only a logged-in user (not Panel's ``guest``);
* with a list of operators (``nbjobs dashboard --operator NAME``, or
  ``NBJOBS_DASHBOARD_OPERATORS=alice,bob`` in the server's environment), only those
  users: everyone else who can log in may look but not act;
* otherwise (a notebook, a local dashboard behind its access token) whoever has the page.

Each action is logged on ``nbjobs.views.actions`` with the user's name (``extra``:
``nbjobs_user``, ``nbjobs_action``), refused ones at WARNING.  The store keeps no action
record of its own; the job rows show the effect (a new attempt, ``cancel_requested``,
a signal with its send time).

:class:`Confirmation` asks a question in the page before a bulk action and runs the
action (through :func:`perform`, so checked again) only on "yes".
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import panel as pn

from .access import auth_configured, session_user
from .style import CSS

log = logging.getLogger(__name__)

#: The environment variable naming the users who may act (comma separated).
OPERATORS_ENV = "NBJOBS_DASHBOARD_OPERATORS"

#: The name logged for an action when the session has no logged-in user.
NO_USER = "(no login)"


def operators_from_env() -> list[str] | None:
    """The operators named in :data:`OPERATORS_ENV`; None when it is unset or empty."""
    names = [n.strip() for n in os.environ.get(OPERATORS_ENV, "").split(",") if n.strip()]
    return names or None


def refusal(*, read_only: bool, require_auth: bool, operators: Sequence[str] | None) -> str | None:
    """Why this session may not act, or None when it may (see the module's rules)."""
    if read_only:
        return "this dashboard is read-only"
    user = session_user()
    if auth_configured(require_auth) and (not user or user == "guest"):
        return "log in first"
    if operators is not None and user not in operators:
        return f"{user or 'this session'} may look but not act (not an operator)"
    return None


def acting_user() -> str:
    """The name logged for this session's actions."""
    return session_user() or NO_USER


def notify(message: str, kind: str = "info") -> None:
    """A toast in a served page; the log elsewhere (notebooks, tests).

    ``message`` is plain text, often with names anyone who can write to the database
    chose (a schedule, a job id, an exception's text), and the toast library sets it as
    ``innerHTML``: so it is escaped here, once, for every caller.
    """
    log.debug("%s", message)
    notifications = getattr(pn.state, "notifications", None)
    if notifications is not None:
        try:
            getattr(notifications, kind)(html.escape(message), duration=4000)
        except Exception:
            log.debug("notification failed", exc_info=True)


def perform(
    what: str,
    fn: Callable[[], Any],
    *,
    read_only: bool = False,
    require_auth: bool = False,
    operators: Sequence[str] | None = None,
    report: Callable[[Any], str] | None = None,
) -> bool:
    """Run the action ``fn`` if this session may act; log and report the outcome.

    ``what`` names the action for the log and the toast ("retrying job 01H..."); with
    ``report``, the success toast (and a second log line) says ``report(fn())``
    instead ("cancelled 37 of 37 jobs").  Returns whether the action ran and succeeded.
    """
    user = acting_user()
    extra = {"nbjobs_user": user, "nbjobs_action": what}
    reason = refusal(read_only=read_only, require_auth=require_auth, operators=operators)
    if reason is not None:
        log.warning("refused %s to %s: %s", what, user, reason, extra=extra)
        notify(f"{what}: not allowed ({reason})", "error")
        return False
    log.info("%s by %s", what, user, extra=extra)
    try:
        outcome = fn()
    except Exception as exc:
        log.warning("%s by %s failed: %s", what, user, exc, extra=extra)
        notify(f"{what} failed: {exc}", "error")
        return False
    if report is not None:
        said = report(outcome)
        log.info("%s by %s: %s", what, user, said, extra=extra)
        notify(said, "success")
    else:
        notify(what, "success")
    return True


def action_button(
    label: str,
    css_class: str,
    on_click: Callable[[], Any],
    *,
    color: str = "primary",
    outline: bool = True,
    width: int = 110,
    **params: Any,
) -> pn.widgets.Button:
    """A dashboard action button: a CSS class for tests and styles, and a click
    handler that takes no event."""
    button = pn.widgets.Button(
        label=label,
        color=color,
        variant="outline" if outline else "solid",
        width=width,
        css_classes=[css_class],
        **params,
    )
    button.on_click(lambda _event: on_click())
    return button


class Confirmation(pn.viewable.Viewer):
    """A question in the page ("Retry 37 failed jobs?") with a yes and a no button.

    :meth:`ask` shows it and keeps the action on the server; "yes" runs it once.  The
    action must check authorisation itself (:func:`perform` does): the question is only
    a guard against a slip of the mouse.
    """

    def __init__(self, css_class: str = "nbj-confirm", **params: Any) -> None:
        super().__init__(**params)
        self._pending: Callable[[], Any] | None = None
        self._question = pn.pane.HTML("", stylesheets=[CSS], margin=(12, 8, 0, 8))
        self.yes_button = action_button(
            "Yes", f"{css_class}-yes", self.confirm, color="danger", outline=False, width=150
        )
        self.no_button = action_button("No", f"{css_class}-no", self.dismiss, width=80)
        self._row = pn.Row(
            self._question,
            self.yes_button,
            self.no_button,
            visible=False,
            css_classes=[css_class],
            styles={"background": "#fef3c7", "border-radius": "6px"},
            margin=(4, 0),
        )

    @property
    def question(self) -> str:
        """The question shown, or "" when none is."""
        return self._question.object if self._pending is not None else ""

    def ask(self, question: str, yes_label: str, action: Callable[[], Any]) -> None:
        """Show ``question`` (plain text) with a ``yes_label`` button that runs ``action``."""
        self._pending = action
        self._question.object = f"<b>{html.escape(question)}</b>"
        self.yes_button.label = yes_label
        self._row.visible = True

    def confirm(self) -> Any:
        """The "yes" button: run the pending action once, and close the question."""
        action, self._pending = self._pending, None
        self._row.visible = False
        return None if action is None else action()

    def dismiss(self) -> None:
        """The "no" button: forget the pending action."""
        self._pending = None
        self._row.visible = False

    def __panel__(self) -> pn.viewable.Viewable:
        return self._row
