"""``/metrics`` on the dashboard's server: a tornado route, guarded like the dashboard.

The route serves a ``prometheus_client`` registry (built by :mod:`nbjobs.metrics`) in the
format the scraper asks for (OpenMetrics for Prometheus, else the classic text format),
reading the database on a thread so the server's event loop never waits on it.

Who may read it follows the dashboard's rules (:mod:`nbjobs.views.access`):

* with a login (``--basic-auth``, OAuth): a logged-in browser, or, for a scraper, an
  HTTP ``Authorization: Basic`` header with a user and password of ``--basic-auth``;
* with ``nbjobs dashboard``'s access token: ``?token=...`` (Prometheus ``params``), the
  token cookie, or ``Authorization: Bearer <token>``;
* without either: loopback clients only, unless remote sessions are allowed
  (``--allow-remote``, ``NBJOBS_DASHBOARD_ALLOW_REMOTE=1``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from bokeh.server.views.auth_request_handler import AuthRequestHandler
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from .access import TokenAuth, is_loopback, remote_allowed

log = logging.getLogger(__name__)

#: The path the dashboard serves the metrics on.
METRICS_PATH = "/metrics"


def _basic_auth_ok(header: str, basic_auth: str | None) -> str | None:
    """The user of an ``Authorization: Basic`` header valid for ``basic_auth`` (a
    password for any user, or a JSON file of user: password), else None."""
    if not basic_auth or not header.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:].strip()).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    expected: Any = basic_auth
    if os.path.isfile(basic_auth):
        with open(basic_auth, encoding="utf-8") as f:
            expected = json.load(f)
    if isinstance(expected, dict):
        expected = expected.get(user)
    if not isinstance(expected, str):
        return None
    return user or "metrics" if hmac.compare_digest(password.encode(), expected.encode()) else None


class MetricsHandler(AuthRequestHandler):
    """Serves ``registry()`` (built on first use) to the clients the dashboard admits."""

    def initialize(
        self,
        registry: Callable[[], Collector],
        basic_auth: str | None = None,
        allow_remote: bool = False,
    ) -> None:
        self._registry = registry
        self._basic_auth = basic_auth
        self._allow_remote = allow_remote

    @property
    def _provider(self) -> Any:
        """The server's Bokeh ``AuthProvider`` (``NullAuth`` without a login)."""
        return self.application.auth_provider  # type: ignore[attr-defined]

    def _login_configured(self) -> bool:
        provider = self._provider
        return bool(provider.get_user or provider.get_user_async)

    def _admitted(self) -> bool:
        if not self._login_configured():
            remote = self.request.remote_ip
            return self._allow_remote or remote_allowed() or is_loopback(remote)
        header = self.request.headers.get("Authorization", "")
        provider = self._provider
        if isinstance(provider, TokenAuth) and header.lower().startswith("bearer "):
            return provider.accepts(header[7:].strip())
        if header.lower().startswith("basic "):
            from panel.config import config

            return _basic_auth_ok(header, self._basic_auth or config.basic_auth) is not None
        return bool(self.current_user)

    async def get(self) -> None:
        if not self._admitted():
            if self._login_configured():
                self.set_status(401)
                self.set_header("WWW-Authenticate", 'Basic realm="nbjobs metrics"')
            else:
                log.warning(
                    "refused /metrics to %s: no login is configured (see --allow-remote)",
                    self.request.remote_ip,
                )
                self.set_status(403)
            self.finish("not allowed\n")
            return
        encoder, content_type = choose_encoder(self.request.headers.get("Accept", ""))
        registry = self._registry()
        body = await asyncio.get_running_loop().run_in_executor(None, encoder, registry)
        self.set_header("Content-Type", content_type)
        self.finish(body)


def metrics_route(
    registry: Callable[[], Collector],
    *,
    basic_auth: str | None = None,
    allow_remote: bool = False,
) -> tuple[str, type, dict[str, Any]]:
    """The tornado route of ``/metrics`` (for ``pn.serve(extra_patterns=[...])``)."""
    return (
        METRICS_PATH,
        MetricsHandler,
        dict(registry=registry, basic_auth=basic_auth, allow_remote=allow_remote),
    )
