"""The dashboard: the views on tabs, one live refresh per session, and ``serve``.

Live updates come from the database, never from an in-process event stream: once a
second the session asks which jobs changed since its watermark (an index range scan of
``updated_at``) and hands that list to every view, which re-reads only what it shows.
So several dashboards and workers in different processes all see the same state.
"""

from __future__ import annotations

import html
import logging
import threading
import time
import webbrowser
from collections.abc import Sequence
from typing import Any

import panel as pn
import param

from .access import (
    TOKEN_OPTIONS,
    LoginName,
    TokenAuth,
    is_loopback,
    refusal,
    refusal_page,
    remote_allowed,
)
from .base import Component
from .detail import JobDetail
from .jobs import JobsTable
from .overview import Overview
from .schedules import Schedules
from .style import CSS

log = logging.getLogger(__name__)

#: A write may commit after a later one is already visible (its ``updated_at`` was taken
#: before the commit); re-reading this much history behind the watermark catches it.
OVERLAP_SECONDS = 2.0
#: Changes read per refresh at most; a busier second still refreshes every view.
CHANGES_PER_REFRESH = 2000


class Dashboard(Component):
    """Overview, jobs (table, detail and fan-out tree) and schedules, updated live."""

    live = param.Boolean(default=True, doc="Refresh about once a second while shown.")
    period_ms = param.Integer(default=1000, bounds=(100, None))
    title = param.String(default="nbjobs")

    def __init__(self, **params: Any) -> None:
        if isinstance(params.get("app"), str):
            from ..app import App

            params["app"] = App(params["app"])
        super().__init__(**params)
        shared = dict(app=self.app, require_auth=self.require_auth, read_only=self.read_only)
        self.overview = Overview(**shared)
        self.jobs = JobsTable(**shared)
        self.detail = JobDetail(**shared)
        self.schedules = Schedules(**shared)
        self.views: list[Component] = [self.overview, self.jobs, self.detail, self.schedules]
        self.jobs.param.watch(lambda e: setattr(self.detail, "job_id", e.new), "selected")
        self._watermark = self.store.latest_update() or self.store.now()
        self._seen: dict[str, float] = {}
        self.changes()  # what the first load below reads anyway: not news on the first tick
        self._callback: Any = None  # a served session's periodic callback
        self._refresher: Any = None  # a notebook kernel's NotebookRefresher
        self._status = pn.pane.HTML("", stylesheets=[CSS], margin=(0, 10))
        self._layout: pn.viewable.Viewable | None = None
        self.refreshed_at = 0.0
        self.load()

    # -- data --------------------------------------------------------------------------
    def load(self) -> None:
        """Read everything once (the first render)."""
        self.overview.load()
        self.jobs.counts = self.overview.counters.counts
        self.jobs.set_options(self.store.workflow_names(), self.store.queue_names())
        self.jobs.load()
        self.schedules.load()
        self._mark()

    def changes(self) -> list[Any]:
        """Jobs changed since the last call, each change once (the watermark moves on)."""
        rows = self.store.jobs_changed_since(
            self._watermark - OVERLAP_SECONDS, limit=CHANGES_PER_REFRESH
        )
        fresh = [r for r in rows if self._seen.get(r.id) != r.updated_at]
        if rows:
            self._watermark = max(self._watermark, rows[-1].updated_at)
        floor = self._watermark - OVERLAP_SECONDS
        self._seen = {k: v for k, v in self._seen.items() if v > floor}
        self._seen.update((r.id, r.updated_at) for r in rows if r.updated_at > floor)
        return fresh

    def refresh(self, changes: Sequence[Any] | None = None) -> None:
        """One live tick: read the change feed, then let each view catch up."""
        try:
            if changes is None:
                changes = self.changes()
            if changes:
                known = set(self.jobs._workflow_w.options)
                if any(c.workflow not in known for c in changes):
                    self.jobs.set_options(self.store.workflow_names(), self.store.queue_names())
            self.overview.refresh(changes)
            self.jobs.counts = self.overview.counters.counts
            self.jobs.refresh(changes)
            self.detail.refresh(changes)
            self.schedules.refresh(changes)
            self._mark()
        except Exception:
            # A database hiccup must not kill the periodic callback; the next tick retries.
            log.exception("dashboard refresh failed")
            self._status.object = '<span class="nbj-muted">database unreachable; retrying</span>'

    def _mark(self) -> None:
        self.refreshed_at = time.time()
        live = '<span class="nbj-live"></span>live' if self.live else "snapshot"
        self._status.object = f'<span class="nbj-muted">{live} · {time.strftime("%H:%M:%S")}</span>'

    # -- life cycle --------------------------------------------------------------------
    def start(self) -> None:
        """Start the live refresh (once): per session when served, per kernel in a notebook.

        A served page gets its own periodic callback, stopped when the session ends.  A
        dashboard shown in a notebook cell joins the kernel's one refresher
        (:class:`~nbjobs.views.notebook.NotebookRefresher`), at each render: the
        refresher drops the dashboards an earlier run of the same cell showed, so
        re-running the cell does not add a refresh.
        """
        if not self.live or self._callback is not None:
            return
        if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
            self._callback = pn.state.add_periodic_callback(self.refresh, period=self.period_ms)
            pn.state.on_session_destroyed(lambda _ctx: self.stop())
            return
        from .notebook import NotebookRefresher

        refresher = NotebookRefresher.shared()
        if refresher.add(self):
            self._refresher = refresher

    def stop(self) -> None:
        """Stop the live refresh (the dashboard keeps its last state)."""
        if self._callback is not None:
            self._callback.stop()
            self._callback = None
        if self._refresher is not None:
            self._refresher.remove(self)
            self._refresher = None

    def views_shown(self) -> list[str]:
        """The root ids of the dashboard's rendered views (pages or cell outputs)."""
        return [] if self._layout is None else list(self._layout._models)

    def shown(self) -> bool:
        """True while some view of the dashboard is rendered (a page or a cell output)."""
        return bool(self.views_shown())

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        """Shown in a cell: its comm messages are handled where its refresh runs."""
        from .notebook import serve_on_kernel_loop

        bundle = super()._repr_mimebundle_(include, exclude)
        serve_on_kernel_loop(*self.views_shown())
        return bundle

    # -- layout ------------------------------------------------------------------------
    def _header(self) -> pn.viewable.Viewable:
        url = pn.pane.HTML(
            f'<span class="nbj-url" title="database">{html.escape(self.store.safe_url)}</span>',
            stylesheets=[CSS],
        )
        return pn.Row(url, pn.layout.HSpacer(), self._status, sizing_mode="stretch_width")

    def __panel__(self) -> pn.viewable.Viewable:
        if self._layout is None:
            # The detail sits beside the table, or under it when the space is narrow
            # (a notebook cell is about 1000 px wide).
            table = self.jobs.body()
            table.styles = {"flex": "1 1 600px"}
            jobs_page = pn.Column(
                self.jobs.controls(),
                pn.FlexBox(
                    table,
                    pn.Column(self.detail, width=500, css_classes=["nbj-detail"]),
                    flex_wrap="wrap",
                    sizing_mode="stretch_width",
                ),
                sizing_mode="stretch_width",
            )
            self.tabs = pn.Tabs(
                ("Overview", self.overview),
                ("Jobs", jobs_page),
                ("Schedules", self.schedules),
                sizing_mode="stretch_width",
                dynamic=True,
            )
            self._layout = pn.Column(self._header(), self.tabs, sizing_mode="stretch_width")
        self.start()
        return self._layout

    def template(self) -> pn.template.BaseTemplate:
        """The dashboard in a page template, for ``panel serve``."""
        return pn.template.FastListTemplate(
            title=self.title,
            main=[self],
            header_background="#1f2937",
            accent_base_color="#2563eb",
            theme_toggle=False,
            main_layout=None,
        )


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
    **kwargs: Any,
) -> Any:
    """Serve the dashboard of the database at ``url`` (what ``nbjobs dashboard`` runs).

    Binds to 127.0.0.1 unless ``address`` says otherwise.  With ``basic_auth`` (a
    password, or a JSON file of user: password) the page asks for a login, and actions
    are refused to sessions without a user; the cookie secret is ``cookie_secret``, else
    ``PANEL_COOKIE_SECRET``, else a random one (logins then end with the server).

    Without a login, sessions from other hosts are refused (see :mod:`.access`) unless
    ``allow_remote`` (or ``NBJOBS_DASHBOARD_ALLOW_REMOTE=1``).  ``websocket_origin``
    adds the browser origins (``host[:port]``) allowed besides this host's own, as when
    the page is reached through a reverse proxy under another name.  The session token
    embedded in the page never carries the login cookies (:data:`.access.TOKEN_OPTIONS`).

    With ``token`` and no ``basic_auth``, nothing is served without the token: the URL
    printed (and opened by ``show``) carries it, as Jupyter's does (:class:`.TokenAuth`).
    """
    import secrets

    from panel.config import config
    from panel.io.application import build_applications

    from ..app import App

    app = App(url)
    pn.extension("tabulator", notifications=True)
    cookie_secret = cookie_secret or config.cookie_secret
    if basic_auth and not cookie_secret:
        cookie_secret = secrets.token_hex(32)
    require_auth = bool(basic_auth)
    allow_remote = allow_remote or remote_allowed()
    if not (require_auth or allow_remote or is_loopback(address) or address == "localhost"):
        log.warning(
            "the dashboard listens on %s without a login: sessions from other hosts are "
            "refused; add --basic-auth, or --allow-remote behind a proxy that logs users in",
            address,
        )

    def session() -> pn.viewable.Viewable:
        reason = refusal(require_auth=require_auth, allow_remote=allow_remote)
        if reason is not None:
            return refusal_page(reason)
        return Dashboard(app=app, require_auth=require_auth).template()

    origins = [f"{address}:{port}", f"localhost:{port}", f"127.0.0.1:{port}"]
    if isinstance(websocket_origin, str):
        websocket_origin = [websocket_origin]
    origins += [o for o in websocket_origin or () if o not in origins]
    applications = build_applications({"/": session}, title="nbjobs")
    applications["/"].add(LoginName())
    options = {**TOKEN_OPTIONS, **kwargs}
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
