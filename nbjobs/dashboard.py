"""The servable dashboard: ``panel serve nbjobs/dashboard.py --args --url URL``.

Panel runs this file as a script, once per browser session, so it uses absolute
imports.  The database URL comes from ``--url`` after ``--args``, else ``NBJOBS_URL``,
else ``sqlite:///nbjobs.db``.  One :class:`~nbjobs.App` per URL is shared by the
sessions of the server process (``pn.state.cache``); each session gets its own
dashboard and its own once-a-second refresh.

Without a login (``--basic-auth``, OAuth) ``panel serve`` listens on every interface
unless given ``--address``, and its websocket origin check does not stop scripts: so a
session from another host gets a refusal, not the dashboard, unless the operator sets
``NBJOBS_DASHBOARD_ALLOW_REMOTE=1`` (see :mod:`nbjobs.views.access`).

Both serve Prometheus metrics on ``/metrics`` (:mod:`nbjobs.metrics`), guarded like
the dashboard (:mod:`nbjobs.views.metrics`); under ``panel serve`` the route comes from
this module as a Panel plugin: ``panel serve nbjobs/dashboard.py --plugins
nbjobs.dashboard --args --url URL``.

It is also the dashboard's entry from Python: :func:`serve` (what ``nbjobs dashboard``
runs) and :class:`Dashboard`, which also takes a database URL for ``app``.  This is the
one place of the dashboard that builds an :class:`~nbjobs.App`: the views under
:mod:`nbjobs.views` are handed one.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
import threading
import webbrowser
from collections.abc import Callable, Sequence
from typing import Any

import panel as pn

from nbjobs.app import DEFAULT_URL, App
from nbjobs.views import dashboard as views
from nbjobs.views.access import (
    TOKEN_OPTIONS,
    LoginName,
    TokenAuth,
    is_loopback,
    refusal,
    refusal_page,
    remote_allowed,
)
from nbjobs.views.actions import operators_from_env
from nbjobs.views.metrics import metrics_route

__all__ = ["ROUTES", "Dashboard", "serve"]

log = logging.getLogger(__name__)


class Dashboard(views.Dashboard):
    """:class:`nbjobs.views.Dashboard`, whose ``app`` may also be a database URL."""

    def __init__(self, **params: Any) -> None:
        if isinstance(params.get("app"), str):
            params["app"] = App(params["app"])
        super().__init__(**params)


def _url(argv: list[str]) -> str:
    parser = argparse.ArgumentParser(prog="nbjobs/dashboard.py", add_help=False)
    parser.add_argument("--url")
    known, _ = parser.parse_known_args(argv)
    return known.url or os.environ.get("NBJOBS_URL") or DEFAULT_URL


def _shared_app(url: str) -> App:
    return pn.state.as_cached(f"nbjobs-app:{url}", lambda: App(url))


def _registry(app: App | None = None) -> Callable[[], Any]:
    """The metrics registry of ``app`` (else of the served script's ``--url``), built on
    the first scrape and kept: its collector keeps the settled counts between scrapes."""
    built: list[Any] = []
    lock = threading.Lock()

    def registry() -> Any:
        with lock:
            if not built:
                from nbjobs.metrics import metrics_registry

                built.append(metrics_registry(app or _shared_app(_url(sys.argv[1:]))))
            return built[0]

    return registry


#: ``panel serve nbjobs/dashboard.py --plugins nbjobs.dashboard``: Panel adds these
#: tornado routes (``/metrics``) to the server.
ROUTES = [metrics_route(_registry())]


def _quiet_closed_sockets(record: logging.LogRecord) -> bool:
    """Drop asyncio's "Task exception was never retrieved" for a browser tab that closed
    while the server pushed it an update: tornado raises ``WebSocketClosedError`` in a
    task nobody awaits, and its traceback in the server's log would look like a fault."""
    from tornado.iostream import StreamClosedError
    from tornado.websocket import WebSocketClosedError

    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, (WebSocketClosedError, StreamClosedError)):
        log.debug("a browser closed its connection during an update")
        return False
    return True


def serve(
    url: str,
    port: int = 5006,
    address: str = "127.0.0.1",
    show: bool = False,
    basic_auth: str | None = None,
    cookie_secret: str | None = None,
    websocket_origin: str | Sequence[str] | None = None,
    allow_remote: bool = False,
    token: str | None = None,
    operators: Sequence[str] | None = None,
    **kwargs: Any,
) -> Any:
    """Serve the dashboard of the database at ``url`` (what ``nbjobs dashboard`` runs).

    Binds to 127.0.0.1 unless ``address`` says otherwise.  With ``basic_auth`` (a
    password, or a JSON file of user: password) the page asks for a login, and actions
    are refused to sessions without a user; the cookie secret is ``cookie_secret``, else
    ``PANEL_COOKIE_SECRET``, else a random one (logins then end with the server).

    Without a login, sessions from other hosts are refused (see :mod:`nbjobs.views.access`) unless
    ``allow_remote`` (or ``NBJOBS_DASHBOARD_ALLOW_REMOTE=1``).  ``websocket_origin``
    adds the browser origins (``host[:port]``) allowed besides this host's own, as when
    the page is reached through a reverse proxy under another name.  The session token
    embedded in the page never carries the login cookies (:data:`nbjobs.views.access.TOKEN_OPTIONS`).

    With ``token`` and no ``basic_auth``, nothing is served without the token: the URL
    printed (and opened by ``show``) carries it, as Jupyter's does (:class:`~nbjobs.views.access.TokenAuth`).

    ``operators`` (else ``NBJOBS_DASHBOARD_OPERATORS``, comma separated) names the
    logged-in users who may act; the others may only look (see
    :mod:`nbjobs.views.actions`).

    ``/metrics`` serves Prometheus metrics of the database to the same clients (a
    scraper passes ``Authorization: Basic`` for ``basic_auth``, or the token as
    ``?token=`` or ``Authorization: Bearer``).
    """
    from panel.config import config
    from panel.io.application import build_applications

    app = App(url)
    pn.extension("tabulator", notifications=True)
    cookie_secret = cookie_secret or config.cookie_secret
    if basic_auth and not cookie_secret:
        cookie_secret = secrets.token_hex(32)
    require_auth = bool(basic_auth)
    operators = list(operators) if operators else operators_from_env()
    allow_remote = allow_remote or remote_allowed()
    if not (require_auth or allow_remote or is_loopback(address) or address == "localhost"):
        log.warning(
            "the dashboard listens on %s without a login: sessions from other hosts are "
            "refused; add --basic-auth, or --allow-remote behind a proxy that logs users in",
            address,
        )

    def session() -> pn.viewable.Viewable | pn.template.BaseTemplate:
        reason = refusal(require_auth=require_auth, allow_remote=allow_remote)
        if reason is not None:
            return refusal_page(reason)
        return Dashboard(app=app, require_auth=require_auth, operators=operators).template()

    origins = [f"{address}:{port}", f"localhost:{port}", f"127.0.0.1:{port}"]
    if isinstance(websocket_origin, str):
        websocket_origin = [websocket_origin]
    origins += [o for o in websocket_origin or () if o not in origins]
    applications = build_applications({"/": session}, title="nbjobs")
    applications["/"].add(LoginName())
    options = {**TOKEN_OPTIONS, **kwargs}
    route = metrics_route(_registry(app), basic_auth=basic_auth, allow_remote=allow_remote)
    options["extra_patterns"] = [*options.get("extra_patterns", ()), route]
    launch = f"http://{address}:{port}/"
    if token and not basic_auth:
        options["auth_provider"] = TokenAuth(token)
        cookie_secret = cookie_secret or secrets.token_hex(32)
        launch += f"?token={token}"
        if show:  # Panel would open the bare address, which asks for the token
            threading.Timer(1.0, webbrowser.open, [launch]).start()
            show = False
    # Panel would also print its own "Launching server at" URL, without the token.
    options.setdefault("verbose", False)
    logging.getLogger("asyncio").addFilter(_quiet_closed_sockets)
    print(f"nbjobs dashboard for {app.store.safe_url} on {launch}", flush=True)
    return pn.serve(
        applications,
        port=port,
        address=address,
        show=show,
        basic_auth=basic_auth,
        cookie_secret=cookie_secret,
        websocket_origin=origins,
        **options,
    )


if __name__.startswith("bokeh_app") or __name__ == "__main__":
    pn.extension("tabulator", notifications=True)
    reason = refusal()
    if reason is not None:
        refusal_page(reason).servable(title="nbjobs")
    else:
        Dashboard(
            app=_shared_app(_url(sys.argv[1:])), operators=operators_from_env()
        ).template().servable(title="nbjobs")
