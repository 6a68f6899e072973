"""Who may see a served dashboard, and what of the login reaches the page.

Two rules, shared by ``nbjobs dashboard`` and ``panel serve nbjobs/dashboard.py``:

* **No login, no remote viewers.** A dashboard served without authentication shows
  everything and lets anyone retry, cancel and pause; the websocket origin check only
  stops browsers (a script sends no ``Origin``).  So a session from an address that is
  not loopback gets a refusal instead of the dashboard, unless the operator opts in with
  ``NBJOBS_DASHBOARD_ALLOW_REMOTE=1`` (``nbjobs dashboard --allow-remote``), typically
  behind a reverse proxy that does the login itself.
* **Credentials stay on the server.** Bokeh copies the request's cookies and headers
  into the session token, which is embedded in the page where any script can read it.
  :data:`TOKEN_OPTIONS` keeps every cookie but Panel's ``is_guest`` flag, and the
  ``Cookie``/``Authorization`` headers, out of the token; the logged-in user's *name*
  (no credential) travels instead, added on the server by :class:`LoginName`.

And ``nbjobs dashboard`` without a login asks for a random access token, as Jupyter
does (:class:`TokenAuth`), since 127.0.0.1 is every local user's too.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from typing import Any

import panel as pn
from bokeh.application.handlers.handler import Handler
from bokeh.server.auth_provider import AuthProvider

log = logging.getLogger(__name__)

#: The environment variable that lets sessions without a login come from other hosts.
ALLOW_REMOTE_ENV = "NBJOBS_DASHBOARD_ALLOW_REMOTE"

#: Where :class:`LoginName` puts the verified user name in the session token.
USER_KEY = "nbjobs_user"

#: Server options that keep credentials out of the session token the page embeds:
#: the only cookie a session needs is Panel's guest flag; the raw ``Cookie`` header
#: would otherwise carry the rest (also the cookies of other apps on the same host,
#: such as a Jupyter server's), and ``Authorization`` a proxy's basic-auth password.
TOKEN_OPTIONS: dict[str, Any] = {
    "include_cookies": ["is_guest"],
    "exclude_headers": ["Cookie", "Authorization", "Proxy-Authorization"],
}


def truthy(value: str | None) -> bool:
    """An environment flag: ``1``, ``true``, ``yes`` or ``on`` (any case)."""
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def remote_allowed() -> bool:
    """Has the operator opted in to sessions without a login from other hosts?"""
    return truthy(os.environ.get(ALLOW_REMOTE_ENV))


def is_loopback(address: str | None) -> bool:
    """127.0.0.0/8, ::1 and IPv4-mapped loopback; anything unparsable is not."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool((mapped or ip).is_loopback)


def _session_context() -> Any:
    doc = pn.state.curdoc
    return None if doc is None else doc.session_context


def session_remote_ip() -> str | None:
    """The peer address of the request that opened this session; None outside a server."""
    context = _session_context()
    request = None if context is None else getattr(context, "request", None)
    return None if request is None else getattr(request, "remote_ip", None)


def auth_configured(require_auth: bool = False) -> bool:
    """Does the server ask for a login (ours, or ``panel serve --basic-auth/--oauth-*``)?"""
    from panel.config import config

    return require_auth or bool(config.basic_auth or config.oauth_provider)


def refusal(require_auth: bool = False, allow_remote: bool = False) -> str | None:
    """Why this session may not see the dashboard, or None when it may.

    Refused: a served session without a login whose peer is not loopback, unless the
    operator allowed it (``allow_remote`` or :func:`remote_allowed`).  Notebooks and
    tests (no server session) are never refused.
    """
    if _session_context() is None or auth_configured(require_auth):
        return None
    if allow_remote or remote_allowed():
        return None
    address = session_remote_ip()
    if is_loopback(address):
        return None
    log.warning(
        "refused a dashboard session from %s: no login is configured; add one "
        "(--basic-auth, OAuth) or set %s=1 to allow it",
        address,
        ALLOW_REMOTE_ENV,
    )
    return (
        "This nbjobs dashboard is served without a login, so it only answers on this "
        "machine (127.0.0.1). To open it from elsewhere, the operator configures a login "
        f"(--basic-auth or OAuth) or sets {ALLOW_REMOTE_ENV}=1 behind a proxy that does."
    )


def refusal_page(reason: str) -> pn.viewable.Viewable:
    """The page a refused session gets: the reason, and no data at all."""
    return pn.pane.Alert(reason, alert_type="danger", sizing_mode="stretch_width")


def session_user() -> str | None:
    """The logged-in user of this session, or None.

    ``pn.state.user`` reads the signed ``user`` cookie from the session token (as under
    ``panel serve --basic-auth``); ``nbjobs dashboard`` keeps that cookie out of the
    token and passes the name verified by :class:`LoginName` instead.
    """
    user = pn.state.user
    if user:
        return user
    context = _session_context()
    if context is None or not _has_login_name(context):
        # Only a server that runs LoginName vouches for the name: elsewhere (panel serve
        # with guests allowed) a client could put any name in a token it made itself.
        return None
    try:
        payload = context.token_payload
    except (AssertionError, AttributeError, KeyError, ValueError):
        return None
    name = payload.get(USER_KEY)
    return name if isinstance(name, str) and name else None


def _has_login_name(context: Any) -> bool:
    """Does this session's application run :class:`LoginName`?"""
    try:
        handlers = context.server_context.application_context.application.handlers
    except AttributeError:
        return False
    return any(isinstance(h, LoginName) for h in handlers)


class LoginName(Handler):
    """Adds the request's verified login name to the session token (no document change).

    Runs on the server with the request's real cookies, so the token carries the name
    but never the signed cookie that would let a script on the page log in elsewhere.
    """

    def modify_document(self, doc: Any) -> None:
        """Nothing to add to the document: this handler only processes requests."""

    def process_request(self, request: Any) -> dict[str, Any]:
        from panel.config import config
        from tornado.web import decode_signed_value

        cookie = request.cookies.get("user")
        secret = config.cookie_secret
        if cookie is None or not secret:
            return {}
        name = decode_signed_value(secret, "user", cookie.value)
        return {USER_KEY: name.decode("utf-8")} if name else {}


#: The cookie that remembers a browser which opened the URL with the token.
TOKEN_COOKIE = "nbjobs_token"

_TOKEN_PAGE = """<!doctype html><html><head><title>nbjobs</title></head>
<body style="font-family: system-ui, sans-serif; margin: 3em; color: #374151">
<h3>This nbjobs dashboard needs its access token</h3>
<p>Open the URL that <code>nbjobs dashboard</code> printed when it started
(<code>http://HOST:PORT/?token=...</code>), or ask the person who started it.</p>
</body></html>"""


class TokenAuth(AuthProvider):
    """Jupyter's rule for a dashboard without a login: the URL printed at start-up
    carries a random token, and nothing is served without it.

    127.0.0.1 is reachable by every user and every process of the machine (a shared
    JupyterHub node, a lab server), and a script sends no ``Origin``: the token is what
    tells the person who started the server from everyone else there.  A browser that
    opened the URL once keeps a signed, http-only cookie, so reloads need no token.
    """

    def __init__(self, token: str) -> None:
        import hashlib

        self._token = token
        # The cookie names the token it was given for: a new token voids old cookies.
        self._mark = hashlib.sha256(token.encode()).hexdigest()[:32]
        super().__init__()

    def accepts(self, token: str) -> bool:
        """Is ``token`` this server's token (a scraper's ``Authorization: Bearer``)?"""
        import hmac

        return hmac.compare_digest(token.encode(), self._token.encode())

    @property
    def get_user(self) -> Any:
        import hmac

        from tornado.websocket import WebSocketHandler

        def get_user(handler: Any) -> str | None:
            given = handler.get_argument("token", None)
            if given is not None and hmac.compare_digest(given.encode(), self._token.encode()):
                if not isinstance(handler, WebSocketHandler):
                    handler.set_secure_cookie(
                        TOKEN_COOKIE, self._mark, httponly=True, samesite="Strict",
                        expires_days=30,
                    )  # fmt: skip
                return "token"
            remembered = handler.get_secure_cookie(TOKEN_COOKIE)
            return "token" if remembered == self._mark.encode() else None

        return get_user

    @property
    def login_url(self) -> str:
        return "/token"

    @property
    def login_handler(self) -> Any:
        from tornado.web import RequestHandler

        class TokenPage(RequestHandler):
            def get(self) -> None:
                self.write(_TOKEN_PAGE)

        return TokenPage
