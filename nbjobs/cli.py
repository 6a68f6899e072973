"""The nbjobs command: worker, dashboard, demo, jobs, migrate.

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

from . import ConfigurationError, NbjobsError

log = logging.getLogger("nbjobs.cli")


#: ``nbjobs worker`` warns when importing the app's module takes this long: a module
#: that submits and waits at import (no ``if __name__ == "__main__":`` guard) blocks.
IMPORT_WARN_SECONDS = 10.0


def printable(text: object) -> str:
    """``text`` safe for a terminal: control characters (escape sequences a hostile
    workflow name or error could carry) are shown as visible escapes, e.g. ``\\x1b``."""
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text)
    )


def _module_hint(module_name: str) -> str | None:
    """For a file path given where a module belongs, the ``pkg.module`` form."""
    if not (module_name.endswith(".py") or "/" in module_name or os.sep in module_name):
        return None
    path = module_name[:-3] if module_name.endswith(".py") else module_name
    dotted = ".".join(p for p in path.replace(os.sep, "/").split("/") if p not in ("", "."))
    return dotted


def load_app(target: str) -> Any:
    """Import ``module:attribute`` (the current directory is importable) and return it."""
    module_name, _, attribute = target.partition(":")
    if not module_name:
        raise ConfigurationError(f"expected module:app, got {target!r}")
    dotted = _module_hint(module_name)
    if dotted is not None:
        raise ConfigurationError(
            f"{module_name!r} is a file path; give the module instead, as "
            f"{dotted}:{attribute or 'app'} (run from the directory that holds the top "
            "package: the current directory is importable)"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    slow = threading.Timer(
        IMPORT_WARN_SECONDS,
        lambda: log.warning(
            "importing %r has run for %g s: does it submit and wait for jobs at import? "
            'Put such code under `if __name__ == "__main__":`',
            module_name,
            IMPORT_WARN_SECONDS,
        ),
    )
    slow.daemon = True
    slow.start()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
    finally:
        slow.cancel()
    from . import App

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
    """Wait for SIGTERM or SIGINT; after it, a second one interrupts the graceful stop
    (``KeyboardInterrupt``), which gives the running jobs back to the queue."""
    stop = threading.Event()

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    def handler(signum: int, _frame: Any) -> None:
        log.info("received signal %d; stopping", signum)
        signal.signal(signal.SIGTERM, interrupt)
        signal.signal(signal.SIGINT, interrupt)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    while not stop.wait(1.0):
        pass


def cmd_worker(args: argparse.Namespace) -> int:
    if args.url:
        os.environ["NBJOBS_URL"] = args.url  # an App() without a URL reads it
    app = load_app(args.app)
    if args.url and app.url != args.url:
        from .dialects import safe_url

        app.close()
        raise ConfigurationError(
            f"{args.app} makes its App with the URL {safe_url(app.url)}, not --url "
            f"{safe_url(args.url)}; give the URL in one place (an App() made without a URL "
            "reads NBJOBS_URL, which --url sets)"
        )
    queues = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None
    app.start(concurrency=args.concurrency, queues=queues)
    served = queues or app.runtime.registry.queues()
    print(
        printable(
            f"nbjobs worker on {app.store.safe_url}: concurrency {args.concurrency}, "
            f"queues {','.join(served)}, "
            f"workflows {', '.join(app.workflow_names()) or '(none)'}"
        ),
        flush=True,
    )
    try:
        _wait_for_stop_signal()
    finally:
        app.stop(timeout=args.grace)
    return 0


def _existing_database(url: str) -> str:
    """``url``, unless it names a SQLite or DuckDB file that does not exist: a command
    that only reads must not create an empty database (a typo, another directory)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return url  # the App reports a bad URL
    database = parsed.database or ""
    if parsed.get_backend_name() not in ("sqlite", "duckdb") or database in ("", ":memory:"):
        return url
    if database.startswith("file:") or os.path.exists(database):
        return url
    raise ConfigurationError(
        f"no nbjobs database at {os.path.abspath(database)} (relative paths follow the "
        f"current directory, {os.getcwd()}); give --url with the path of an existing file"
    )


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
    from .dashboard import serve

    basic_auth, cookie_secret = _dashboard_login(args)
    token = None
    if not (basic_auth or args.no_token):
        token = os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(24)
    serve(
        _existing_database(_url(args)),
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
    from . import App

    app = App(_existing_database(_url(args)))
    try:  # the App checks the filters as for app.jobs(): a clear error, never a database one
        rows = app.list_job_rows(args.status, args.workflow, None, args.limit)
    finally:
        app.close()
    print(f"{'id':26} {'workflow':24} {'status':10} {'attempts':>8}  error")
    for r in rows:
        error = (r.error or "").splitlines()[0][:60] if r.error else ""
        workflow = printable(r.workflow)
        print(
            printable(f"{r.id:26} {workflow[:24]:24} {r.status:10} {r.attempts:>8}  ")
            + printable(error)
        )
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from . import App

    app = App(_url(args))  # opening the App's store creates or migrates the schema
    store = app.store
    found, where = store.schema_found, printable(store.safe_url)
    version = store.schema_version
    if found is None:
        print(f"nbjobs schema created at version {version} on {where}")
    elif found < version:
        print(f"nbjobs schema migrated from version {found} to {version} on {where}")
    else:
        print(f"nbjobs schema is current (version {version}) on {where}")
    app.close()
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default in its help, unless there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or action.help is None:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Every subcommand's parser: defaults shown in ``--help``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__  # the package's own

    parser = argparse.ArgumentParser(
        prog="nbjobs", description=__doc__.splitlines()[0], formatter_class=_HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"nbjobs {__version__}")
    log_level_help = "logging level: DEBUG, INFO, WARNING or ERROR (env NBJOBS_LOG_LEVEL)"
    parser.add_argument(
        "--log-level", default=os.environ.get("NBJOBS_LOG_LEVEL", "INFO"), help=log_level_help
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    worker = sub.add_parser("worker", help="run a worker process for module:app")
    worker.add_argument("app", help="module:attribute of the nbjobs.App, e.g. pipeline.jobs:app")
    worker.add_argument(
        "--concurrency", "-c", type=int, default=4, help="jobs run at once (threads)"
    )
    worker.add_argument(
        "--queues",
        "-q",
        help="comma-separated queues (default: 'default' and the queues of the app's workflows)",
    )
    worker.add_argument(
        "--grace", type=float, default=30.0, help="seconds running jobs get at stop"
    )
    worker.add_argument(
        "--url",
        help="database URL for an App made without one (sets NBJOBS_URL before the import)",
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
    jobs.add_argument("--status", help="only jobs in this status, e.g. failed")
    jobs.add_argument("--workflow", help="only jobs of this workflow")
    jobs.add_argument("--limit", type=int, default=20, help="how many of the newest jobs")
    jobs.set_defaults(func=cmd_jobs)

    migrate = sub.add_parser("migrate", help="create or migrate the nbjobs tables")
    url_option(migrate)
    migrate.set_defaults(func=cmd_migrate)
    for command in sub.choices.values():  # also after the subcommand, as the docs show it
        command.add_argument("--log-level", default=argparse.SUPPRESS, help=log_level_help)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except NbjobsError as exc:
        text = "\n".join(printable(line) for line in str(exc).splitlines())
        print(f"nbjobs: error: {text}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
