"""The ``nbjobs`` command: worker, dashboard, demo, jobs, migrate.

This is a script entry point, not a notebook path: here (and only here) nbjobs installs
SIGINT/SIGTERM handlers, to stop a worker process gracefully.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import secrets
import signal
import sys
import threading
from typing import Any

from .errors import ConfigurationError, NbjobsError

log = logging.getLogger("nbjobs.cli")


def load_app(target: str) -> Any:
    """Import ``module:attribute`` (the current directory is importable) and return it."""
    module_name, _, attribute = target.partition(":")
    if not module_name:
        raise ConfigurationError(f"expected module:app, got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
    from .app import App

    if attribute:
        try:
            app = getattr(module, attribute)
        except AttributeError:
            raise ConfigurationError(
                f"module {module_name!r} has no attribute {attribute!r}"
            ) from None
    else:
        apps = [v for v in vars(module).values() if isinstance(v, App)]
        if len(apps) != 1:
            raise ConfigurationError(
                f"module {module_name!r} defines {len(apps)} nbjobs apps; name one as module:app"
            )
        app = apps[0]
    if not isinstance(app, App):
        raise ConfigurationError(f"{target} is a {type(app).__name__}, not an nbjobs.App")
    return app


def _wait_for_stop_signal() -> None:
    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        log.info("received signal %d; stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    while not stop.wait(1.0):
        pass


def cmd_worker(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    app.start(concurrency=args.concurrency, queues=queues)
    print(
        f"nbjobs worker on {app.store.safe_url}: concurrency {args.concurrency}, "
        f"queues {','.join(queues)}, workflows {', '.join(app.workflow_names()) or '(none)'}",
        flush=True,
    )
    try:
        _wait_for_stop_signal()
    finally:
        app.stop(timeout=args.grace)
    return 0


def _url(args: argparse.Namespace) -> str:
    from .app import DEFAULT_URL

    return args.url or os.environ.get("NBJOBS_URL") or DEFAULT_URL


#: The environment variables ``nbjobs dashboard`` reads its secrets from.
BASIC_AUTH_ENV = "NBJOBS_DASHBOARD_BASIC_AUTH"
COOKIE_SECRET_ENV = "PANEL_COOKIE_SECRET"
#: A fixed access token instead of a random one per start (``nbjobs dashboard``).
TOKEN_ENV = "NBJOBS_DASHBOARD_TOKEN"


def _secret_file(path: str, what: str) -> str:
    """A secret read from a file (surrounding white space dropped); never empty."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the {what} file {path!r}: {exc}") from exc
    if not text:
        raise ConfigurationError(f"the {what} file {path!r} is empty")
    return text


def _dashboard_login(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The login password (or users file) and cookie secret: a file, the environment,
    and only last the command line, where ``ps`` shows them to every local user."""
    basic_auth = args.basic_auth
    if args.basic_auth_file:
        basic_auth = _secret_file(args.basic_auth_file, "--basic-auth-file")
        if basic_auth.startswith("{"):
            basic_auth = args.basic_auth_file  # a JSON file of user: password, as Panel reads it
    basic_auth = basic_auth or os.environ.get(BASIC_AUTH_ENV) or None
    if args.basic_auth and not os.path.isfile(args.basic_auth):
        log.warning(
            "a password on the command line is visible to other users of this machine "
            "(ps, /proc); use --basic-auth-file or %s instead",
            BASIC_AUTH_ENV,
        )
    cookie_secret = args.cookie_secret
    if args.cookie_secret_file:
        cookie_secret = _secret_file(args.cookie_secret_file, "--cookie-secret-file")
    elif args.cookie_secret:
        log.warning(
            "a cookie secret on the command line is visible to other users of this "
            "machine; use --cookie-secret-file or %s instead",
            COOKIE_SECRET_ENV,
        )
    return basic_auth, cookie_secret


def cmd_dashboard(args: argparse.Namespace) -> int:
    from .views import serve

    basic_auth, cookie_secret = _dashboard_login(args)
    token = None
    if not (basic_auth or args.no_token):
        token = os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(24)
    serve(
        _url(args),
        port=args.port,
        address=args.address,
        show=args.show,
        basic_auth=basic_auth,
        cookie_secret=cookie_secret,
        websocket_origin=args.allow_websocket_origin,
        allow_remote=args.allow_remote,
        token=token,
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(url=_url(args), port=args.port, show=args.show, jobs=args.jobs)


def cmd_jobs(args: argparse.Namespace) -> int:
    from .app import App
    from .schema import Status
    from .workflow import _check_name

    if args.status is not None and args.status not in {s.value for s in Status}:
        raise ConfigurationError(
            f"unknown status {args.status!r}; one of {', '.join(s.value for s in Status)}"
        )
    if args.workflow is not None:
        _check_name("workflow name", args.workflow)
    if args.limit < 1:
        raise ConfigurationError(f"--limit must be at least 1, got {args.limit}")
    app = App(_url(args))
    rows = app.store.list_jobs(status=args.status, workflow=args.workflow, limit=args.limit)
    print(f"{'id':26} {'workflow':24} {'status':10} {'attempts':>8}  error")
    for r in rows:
        error = (r.error or "").splitlines()[0][:60] if r.error else ""
        print(f"{r.id:26} {r.workflow[:24]:24} {r.status:10} {r.attempts:>8}  {error}")
    app.close()
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from .store import Store

    store = Store(_url(args))
    print(f"nbjobs schema is current on {store.safe_url}")
    store.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nbjobs", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default=os.environ.get("NBJOBS_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="run a worker process for module:app")
    worker.add_argument("app", help="module:attribute of the nbjobs.App, e.g. pipeline.jobs:app")
    worker.add_argument("--concurrency", "-c", type=int, default=4)
    worker.add_argument("--queues", "-q", default="default", help="comma-separated queues")
    worker.add_argument(
        "--grace", type=float, default=30.0, help="seconds running jobs get at stop"
    )
    worker.set_defaults(func=cmd_worker)

    def url_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", help="database URL (default: NBJOBS_URL or sqlite:///nbjobs.db)")

    dashboard = sub.add_parser("dashboard", help="serve the live dashboard")
    url_option(dashboard)
    dashboard.add_argument("--port", type=int, default=5006)
    dashboard.add_argument(
        "--address", default="127.0.0.1", help="bind address (default local only)"
    )
    dashboard.add_argument("--show", action="store_true", help="open a browser")
    dashboard.add_argument(
        "--basic-auth",
        help=f"password, or a JSON file of user: password (prefer --basic-auth-file or "
        f"{BASIC_AUTH_ENV}: the command line is visible to other local users)",
    )
    dashboard.add_argument(
        "--basic-auth-file", help="a file holding the password, or a JSON file of user: password"
    )
    dashboard.add_argument(
        "--cookie-secret",
        help=f"cookie secret for logins (prefer --cookie-secret-file or {COOKIE_SECRET_ENV})",
    )
    dashboard.add_argument("--cookie-secret-file", help="a file holding the cookie secret")
    dashboard.add_argument(
        "--allow-websocket-origin",
        action="append",
        metavar="HOST[:PORT]",
        help="a browser origin allowed besides this host's own, e.g. the name of a "
        "reverse proxy (repeatable)",
    )
    dashboard.add_argument(
        "--allow-remote",
        action="store_true",
        help="serve sessions from other hosts without a login (only behind a proxy that "
        "logs users in; also NBJOBS_DASHBOARD_ALLOW_REMOTE=1)",
    )
    dashboard.add_argument(
        "--no-token",
        action="store_true",
        help=f"without a login, serve without the access token in the printed URL "
        f"(a token of your own: {TOKEN_ENV})",
    )
    dashboard.set_defaults(func=cmd_dashboard)

    demo = sub.add_parser("demo", help="run an example pipeline with the dashboard on SQLite")
    url_option(demo)
    demo.add_argument("--port", type=int, default=5006)
    demo.add_argument("--show", action="store_true", help="open a browser")
    demo.add_argument("--jobs", type=int, default=12, help="pipeline runs to submit")
    demo.set_defaults(func=cmd_demo)

    jobs = sub.add_parser("jobs", help="list recent jobs")
    url_option(jobs)
    jobs.add_argument("--status")
    jobs.add_argument("--workflow")
    jobs.add_argument("--limit", type=int, default=20)
    jobs.set_defaults(func=cmd_jobs)

    migrate = sub.add_parser("migrate", help="create or migrate the nbjobs tables")
    url_option(migrate)
    migrate.set_defaults(func=cmd_migrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except NbjobsError as exc:
        print(f"nbjobs: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
