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

It also exports :class:`Dashboard`, so ``from nbjobs.dashboard import Dashboard`` works.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from nbjobs.views import Dashboard

if TYPE_CHECKING:
    from nbjobs import App

__all__ = ["Dashboard"]


def _url(argv: list[str]) -> str:
    parser = argparse.ArgumentParser(prog="nbjobs/dashboard.py", add_help=False)
    parser.add_argument("--url")
    known, _ = parser.parse_known_args(argv)
    return known.url or os.environ.get("NBJOBS_URL") or "sqlite:///nbjobs.db"


def _shared_app(url: str) -> App:
    import panel as pn

    from nbjobs import App

    return pn.state.as_cached(f"nbjobs-app:{url}", lambda: App(url))


if __name__.startswith("bokeh_app") or __name__ == "__main__":
    import panel as pn

    from nbjobs.views.access import refusal, refusal_page

    pn.extension("tabulator", notifications=True)
    reason = refusal()
    if reason is not None:
        refusal_page(reason).servable(title="nbjobs")
    else:
        Dashboard(app=_shared_app(_url(sys.argv[1:]))).template().servable(title="nbjobs")
