"""The dashboard in a notebook cell: Panel's notebook support, loaded offline, and one
live refresh per kernel.

Panel draws nothing in a notebook until its JavaScript (BokehJS, Panel's models and
Tabulator) is in the page.  ``pn.extension()`` puts it there, from a CDN unless told
otherwise, which an offline or firewalled machine cannot reach; without it JupyterLab
shows a text repr and Panel's "requires the panel extension" warning.  So a component
shown in a cell loads that support itself, once per kernel, with the scripts and styles
inline in the cell's output (``pn.extension("tabulator", inline=True)``): nothing is
fetched from the internet.  The ``@pyviz/jupyterlab_pyviz`` extension that comes with
Panel (through pyviz_comms) runs them and carries the updates both ways over a comm.

Live updates in a cell come from one periodic callback per kernel, on the kernel's own
running event loop (never a loop of ours, never ``run_until_complete``; LESSONS.md #1).
It refreshes every dashboard shown in a cell.  When the cell runs again, JupyterLab
replaces its output, and the kernel knows it: each execute request names its cell.  So
the dashboards an earlier run of that cell showed stop, and re-running
``app.dashboard()`` leaves one refresh, for the new dashboard.  (The pyviz extension
does not reliably tell the kernel when an output goes away, so the cell is the key.)
Because the refresh runs on the kernel's loop, the Bokeh models are only ever touched
from the kernel's thread; a cell that blocks (``h.result()``) holds the refresh until it
returns, and the dashboard then catches up at once.

A comm message from a cell's dashboard (a tab or a row clicked) is handled on the kernel's
event loop too.  JupyterLab 4.4 and later send comm messages to a kernel *subshell* when
the kernel has them (ipykernel 7), so Panel's handler would run on a thread of its own,
at the same time as a refresh: two threads changing one Bokeh document and writing the
parts of their update messages into one comm, interleaved.  The page's Bokeh receiver
then reads them out of step and drops every later update (counters that stop, a tab
that comes back empty).  :func:`serve_on_kernel_loop` hands each message to the loop and
waits for it, as a kernel without subshells would.  And a dashboard is refreshed only
once its page listens (:func:`listening`): Panel holds back an update made before and
retries each on its own, so they could arrive out of order and fail there.

Panel's inline mode inlines the stylesheets of a cell's first render only; the ones a
later update sends point at its CDN again.  :class:`InlineStylesheets` makes those
data: URLs, so the page fetches nothing from the internet, ever.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import functools
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

import panel as pn
from panel.io.state import set_curdoc

from ..errors import NbjobsError

log = logging.getLogger(__name__)

#: The Panel extensions nbjobs' components need in the page.
EXTENSIONS = ("tabulator",)


class Dashboard(Protocol):
    """What the refresh uses of a :class:`~nbjobs.views.Dashboard` (a protocol, so that
    this module, which the dashboard imports, need not import it back)."""

    @property
    def name(self) -> str | None: ...

    @property
    def refreshed_at(self) -> float: ...

    @property
    def period_ms(self) -> int: ...

    def shown(self) -> bool: ...

    def stop(self) -> None: ...

    def views_shown(self) -> list[str]: ...

    def refresh(self) -> None: ...


#: Seconds between two looks at the shown dashboards (each refreshes at its own period).
TICK_SECONDS = 0.25
#: The ``pn.state.cache`` key of the kernel's refresher.
REFRESHER_KEY = "nbjobs-notebook-refresher"

_loaded = False


def in_kernel() -> bool:
    """True in a Jupyter kernel (an IPython shell with a kernel behind it)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return getattr(shell, "kernel", None) is not None


def load_panel_support() -> None:
    """Load Panel's notebook support with inline resources, once per kernel.

    Called by every nbjobs component just before it renders in a cell, so a notebook
    needs no ``pn.extension()`` of its own, and one that made a CDN-only call before is
    loaded again offline.  Outside a kernel it does nothing.
    """
    global _loaded
    if _loaded or not in_kernel():
        return
    pn.extension(*EXTENSIONS, inline=True)
    _loaded = True
    log.debug("Panel notebook support loaded inline")


@functools.lru_cache(maxsize=256)
def _data_url(url: str) -> str | None:
    """Panel's own stylesheet at ``url`` as a data: URL; None if ``url`` is not one of them.

    Panel addresses its CSS files on its CDN, or relative to a Panel server
    (``static/extensions/panel/``) when it renders outside a resource-mode block.
    """
    from panel.io.resources import CDN_DIST, DIST_DIR, LOCAL_DIST

    for prefix in (CDN_DIST, LOCAL_DIST):
        if url.startswith(prefix):
            path = DIST_DIR / url[len(prefix) :].split("?")[0]
            if path.suffix == ".css" and path.is_file():
                return "data:text/css;base64," + base64.b64encode(path.read_bytes()).decode()
    return None


class InlineStylesheets(dict):
    """Panel's stylesheet cache of one notebook document, that points Panel's CSS at data: URLs.

    In inline mode Panel inlines the stylesheets of a cell's first render, but a pane
    updated later (an HTML pane's new text: the counters, the "live" line) is sent again
    with stylesheets that point at Panel's CDN, which the browser then fetches.  Panel
    takes those stylesheets from this per-document cache (``state._stylesheets``), keyed
    by address: every one that goes in or comes out gets the file's content as a data:
    URL, so the page never fetches one, online or not.
    """

    def __init__(self, existing: dict[str, Any]) -> None:
        super().__init__()
        for url, sheet in existing.items():
            self[url] = sheet

    @staticmethod
    def _inline(sheet: Any) -> Any:
        url = getattr(sheet, "url", None)
        data = _data_url(url) if isinstance(url, str) else None
        if data is not None:
            sheet.url = data
        return sheet

    def __setitem__(self, url: str, sheet: Any) -> None:
        super().__setitem__(url, self._inline(sheet))

    def __getitem__(self, url: str) -> Any:
        return self._inline(super().__getitem__(url))


def documents(*refs: str) -> list[Any]:
    """The Bokeh documents of the rendered views ``refs`` (root ids) still known to Panel."""
    from panel.io.state import state

    return [view[2] for ref in refs if (view := state._views.get(ref)) is not None]


def listening(*refs: str) -> list[str]:
    """The views among ``refs`` (root ids) whose page listens: their comm is open.

    Panel opens a view's comm when the page has drawn the view, which can take seconds
    on a busy machine (the output carries all of Panel's JavaScript).  An update made
    before that is held back and retried on its own, so two of them can reach the page
    in either order: one that names a model defined in an earlier one the page has not
    had yet fails there, and the view never shows it (counters that stay behind).
    """
    from panel.io.state import state

    return [
        ref
        for ref in refs
        if (view := state._views.get(ref)) is not None
        and getattr(view[3], "_comm", None) is not None
    ]


def inline_stylesheets(*refs: str) -> None:
    """Serve Panel's CSS inline to the notebook documents of the views ``refs`` (root ids)."""
    from panel.io.state import state

    for doc in documents(*refs):
        cache = state._stylesheets.get(doc)
        if not isinstance(cache, InlineStylesheets):
            state._stylesheets[doc] = InlineStylesheets(cache or {})


def on_loop(fn: Callable[..., Any], loop: asyncio.AbstractEventLoop) -> Callable[..., Any]:
    """``fn`` that runs on ``loop``'s thread whatever thread calls it; the caller waits.

    Called on the loop itself it runs at once.  A caller on another thread waits for as
    long as the loop is busy (a cell that blocks holds it, as it holds the refresh), and
    gets ``fn``'s exception if it raises; if the loop stops meanwhile it gets an error.
    """

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return fn(*args, **kwargs)
        done: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            if done.set_running_or_notify_cancel():
                try:
                    done.set_result(fn(*args, **kwargs))
                except BaseException as exc:
                    done.set_exception(exc)

        loop.call_soon_threadsafe(run)
        while True:
            try:
                return done.result(timeout=1.0)
            except concurrent.futures.TimeoutError:
                if not loop.is_running() and done.cancel():
                    raise NbjobsError("the kernel's event loop stopped") from None

    return call


def serve_on_kernel_loop(*refs: str) -> None:
    """Handle the comm messages of the rendered views ``refs`` (root ids) on the running
    loop (the kernel's), under each view's document, whatever thread the kernel receives
    them on (a subshell).  Once per view; without a running loop it does nothing.

    A dashboard calls it as it renders in a cell, and the refresh before it touches a
    view (one shown inside another layout), so no refresh runs beside a message.
    """
    from panel.io.state import state

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    for ref in refs:
        view = state._views.get(ref)
        if view is None:
            continue
        client = view[0]._comms.get(ref, (None, None))[1]
        if client is None or getattr(client._handle_msg, "nbjobs_on_loop", False):
            continue
        # The whole of pyviz_comms' handler moves, not just Panel's part: it swaps the
        # process's sys.stdout while it runs, which must not span a cell's run.
        handler, doc = client._handle_msg, view[2]

        def handle(msg: Any, handler: Callable[[Any], Any] = handler, doc: Any = doc) -> Any:
            with set_curdoc(doc):
                return handler(msg)

        served = on_loop(handle, loop)
        served.nbjobs_on_loop = True  # type: ignore[attr-defined]
        client._handle_msg = served  # taken when the page opens the comm
        if client._comm is not None:  # already open
            client._comm.on_msg(served)


def current_cell() -> tuple[str, str] | None:
    """The (cell id, request id) of the cell the kernel is running, when the frontend says.

    JupyterLab puts the cell's id in the metadata of each execute request; a frontend
    that does not gets None.
    """
    ipython = sys.modules.get("IPython")
    kernel = getattr(ipython.get_ipython(), "kernel", None) if ipython else None
    if kernel is None:
        return None
    try:
        parent = kernel.get_parent("shell")
        cell, request = parent["metadata"].get("cellId"), parent["header"]["msg_id"]
    except Exception:
        return None
    return (str(cell), str(request)) if cell and request else None


class NotebookRefresher:
    """The kernel's one periodic refresh of the dashboards shown in its cells.

    A dashboard stops being refreshed when no view of it is left (a frontend that says
    when an output is removed), or when the cell that showed it runs again: JupyterLab
    names the cell of each request, and a new run of a cell replaces its outputs.
    """

    def __init__(self) -> None:
        self.dashboards: list[Dashboard] = []
        #: id(dashboard) -> (cell id, request id) of the cell run that last showed it.
        self._shown_by: dict[int, tuple[str, str]] = {}
        self._callback: Any = None

    @classmethod
    def shared(cls) -> NotebookRefresher:
        """The kernel's refresher (``pn.state.cache``, so one per process)."""
        return pn.state.as_cached(REFRESHER_KEY, cls)

    @property
    def running(self) -> bool:
        return self._callback is not None

    def add(self, dashboard: Dashboard) -> bool:
        """Refresh ``dashboard`` while it is shown; False without an event loop.

        Called each time the dashboard is rendered; the dashboards an earlier run of the
        same cell showed stop.  Without a running loop (a plain script, a thread)
        nothing could drive the refresh: the dashboard shows the state of its render.
        """
        cell = current_cell()
        if cell is not None:
            for other in list(self.dashboards):
                # Shown by an earlier run of this cell: that output is gone.
                shown_by = self._shown_by.get(id(other)) or ("", "")
                if other is not dashboard and shown_by[0] == cell[0] and shown_by[1] != cell[1]:
                    log.debug("cell %s ran again: dashboard %s stops", cell[0], other.name)
                    other.stop()
        if self._callback is None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                log.info("no running event loop: the dashboard shows a snapshot")
                return False
            self._callback = pn.state.add_periodic_callback(
                self.tick, period=int(TICK_SECONDS * 1000)
            )
        if cell is not None:
            self._shown_by[id(dashboard)] = cell
        if not any(d is dashboard for d in self.dashboards):
            self.dashboards.append(dashboard)
        return True

    def remove(self, dashboard: Dashboard) -> None:
        self.dashboards = [d for d in self.dashboards if d is not dashboard]
        self._shown_by.pop(id(dashboard), None)
        if not self.dashboards:
            self.stop()

    def stop(self) -> None:
        if self._callback is not None:
            self._callback.stop()
            self._callback = None

    def tick(self) -> None:
        """Refresh each shown dashboard that is due; forget those no longer shown."""
        now = time.time()
        for dashboard in list(self.dashboards):
            try:
                if not dashboard.shown():
                    log.debug("dashboard %s is no longer shown: its refresh ends", dashboard.name)
                    dashboard.stop()
                elif now - dashboard.refreshed_at >= dashboard.period_ms / 1000 - TICK_SECONDS / 2:
                    views = dashboard.views_shown()
                    if not listening(*views):
                        continue  # no page draws it yet: it catches up once one does
                    serve_on_kernel_loop(*views)
                    inline_stylesheets(*views)
                    # Panel looks up the stylesheets of an update in the cache of its
                    # current document, which a callback outside a server session has not
                    # set (an empty cache: CDN addresses); make it the dashboard's own.
                    docs = documents(*views)
                    with set_curdoc(docs[0] if docs else None):
                        dashboard.refresh()
            except Exception:
                # One failing dashboard must not end the refresh of the others (an
                # exception would end Panel's periodic task for good).
                log.exception("notebook dashboard refresh failed")
