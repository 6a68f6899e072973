"""Commands that run things: ``nbjobs worker``, ``dashboard``, ``demo`` and ``migrate``."""

from __future__ import annotations

import importlib
import logging
import os
import secrets
import signal
import sys
import threading
from typing import Any

import click

from .. import ConfigurationError
from .common import (
    command_url,
    existing_database,
    log_level_option,
    printable,
    url_option,
)

log = logging.getLogger("nbjobs.cli")


#: ``nbjobs worker`` warns when importing the app's module takes this long: a module
#: that submits and waits at import (no ``if __name__ == "__main__":`` guard) blocks.
IMPORT_WARN_SECONDS = 10.0


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
    from ..app import App

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


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT; after it, a second one interrupts the graceful
    stop (``KeyboardInterrupt``), which gives the running jobs back to the queue.

    Installed before the worker starts: a SIGTERM that comes as soon as jobs run (an
    orchestrator stopping a fresh pod) still stops it gracefully."""
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
    return stop


@click.command()
@click.argument("app_target", metavar="APP")
@click.option("--concurrency", "-c", type=int, default=4, help="jobs run at once (threads)")
@click.option(
    "--queues",
    "-q",
    default=None,
    show_default=False,
    help="comma-separated queues (default: 'default' and the queues of the app's workflows)",
)
@click.option("--grace", type=float, default=30.0, help="seconds running jobs get at stop")
@click.option(
    "--url",
    default=None,
    show_default=False,
    help="database URL for an App made without one (sets NBJOBS_URL before the import)",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    show_default=False,
    help="serve Prometheus metrics on this port (/metrics; 0 picks a free one)",
)
@click.option("--metrics-host", default="127.0.0.1", help="address the metrics server listens on")
@log_level_option
def worker(
    app_target: str,
    concurrency: int,
    queues: str | None,
    grace: float,
    url: str | None,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Run a worker process for APP, the module:attribute of an nbjobs.App
    (e.g. pipeline.jobs:app)."""
    if url:
        os.environ["NBJOBS_URL"] = url  # an App() without a URL reads it
    app = load_app(app_target)
    if url and app.url != url:
        from ..dialects import safe_url

        app.close()
        raise ConfigurationError(
            f"{app_target} makes its App with the URL {safe_url(app.url)}, not --url "
            f"{safe_url(url)}; give the URL in one place (an App() made without a URL "
            "reads NBJOBS_URL, which --url sets)"
        )
    served_queues = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    stop = _stop_on_signals()
    app.start(concurrency=concurrency, queues=served_queues)
    served = served_queues or app.runtime.registry.queues()
    click.echo(
        printable(
            f"nbjobs worker on {app.store.safe_url}: concurrency {concurrency}, "
            f"queues {','.join(served)}, "
            f"workflows {', '.join(app.workflow_names()) or '(none)'}"
        )
    )
    metrics = None
    if metrics_port is not None:
        from ..metrics import serve_metrics

        metrics = serve_metrics(app, metrics_port, host=metrics_host)
        click.echo(f"metrics on http://{metrics_host}:{metrics.server_port}/metrics")
    sys.stdout.flush()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        app.stop(timeout=grace)
        if metrics is not None:
            metrics.shutdown()
            metrics.server_close()


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


def _dashboard_login(
    given_auth: str | None,
    auth_file: str | None,
    given_secret: str | None,
    secret_file: str | None,
) -> tuple[str | None, str | None]:
    """The login password (or users file) and cookie secret: a file, the environment,
    and only last the command line, where ``ps`` shows them to every local user."""
    basic_auth = given_auth
    if auth_file:
        basic_auth = _secret_file(auth_file, "--basic-auth-file")
        if basic_auth.startswith("{"):
            basic_auth = auth_file  # a JSON file of user: password, as Panel reads it
    basic_auth = basic_auth or os.environ.get(BASIC_AUTH_ENV) or None
    if given_auth and not os.path.isfile(given_auth):
        log.warning(
            "a password on the command line is visible to other users of this machine "
            "(ps, /proc); use --basic-auth-file or %s instead",
            BASIC_AUTH_ENV,
        )
    cookie_secret = given_secret
    if secret_file:
        cookie_secret = _secret_file(secret_file, "--cookie-secret-file")
    elif given_secret:
        log.warning(
            "a cookie secret on the command line is visible to other users of this "
            "machine; use --cookie-secret-file or %s instead",
            COOKIE_SECRET_ENV,
        )
    return basic_auth, cookie_secret


@click.command()
@url_option
@click.option("--port", type=int, default=5006)
@click.option("--address", default="127.0.0.1", help="bind address (default local only)")
@click.option("--show", is_flag=True, help="open a browser")
@click.option(
    "--basic-auth",
    default=None,
    help=f"password, or a JSON file of user: password (prefer --basic-auth-file or "
    f"{BASIC_AUTH_ENV}: the command line is visible to other local users)",
)
@click.option(
    "--basic-auth-file",
    default=None,
    help="a file holding the password, or a JSON file of user: password",
)
@click.option(
    "--cookie-secret",
    default=None,
    help=f"cookie secret for logins (prefer --cookie-secret-file or {COOKIE_SECRET_ENV})",
)
@click.option("--cookie-secret-file", default=None, help="a file holding the cookie secret")
@click.option(
    "--allow-websocket-origin",
    multiple=True,
    metavar="HOST[:PORT]",
    help="a browser origin allowed besides this host's own, e.g. the name of a "
    "reverse proxy (repeatable)",
)
@click.option(
    "--allow-remote",
    is_flag=True,
    help="serve sessions from other hosts without a login (only behind a proxy that "
    "logs users in; also NBJOBS_DASHBOARD_ALLOW_REMOTE=1)",
)
@click.option(
    "--no-token",
    is_flag=True,
    help=f"without a login, serve without the access token in the printed URL "
    f"(a token of your own: {TOKEN_ENV})",
)
@click.option(
    "--operator",
    "operators",
    multiple=True,
    metavar="USER",
    help="a logged-in user who may act (repeatable; others may only look; also "
    "NBJOBS_DASHBOARD_OPERATORS=alice,bob); default: every logged-in user",
)
@log_level_option
def dashboard(
    url: str | None,
    port: int,
    address: str,
    show: bool,
    basic_auth: str | None,
    basic_auth_file: str | None,
    cookie_secret: str | None,
    cookie_secret_file: str | None,
    allow_websocket_origin: tuple[str, ...],
    allow_remote: bool,
    no_token: bool,
    operators: tuple[str, ...],
) -> None:
    """Serve the live dashboard."""
    from ..dashboard import serve

    login, secret = _dashboard_login(basic_auth, basic_auth_file, cookie_secret, cookie_secret_file)
    token = None
    if not (login or no_token):
        token = os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(24)
    serve(
        existing_database(command_url(url)),
        port=port,
        address=address,
        show=show,
        basic_auth=login,
        cookie_secret=secret,
        websocket_origin=list(allow_websocket_origin) or None,
        allow_remote=allow_remote,
        token=token,
        operators=list(operators) or None,
    )


@click.command()
@url_option
@click.option("--port", type=int, default=5006)
@click.option("--show", is_flag=True, help="open a browser")
@click.option("--jobs", type=click.IntRange(min=1), default=12, help="pipeline runs to submit")
@log_level_option
def demo(url: str | None, port: int, show: bool, jobs: int) -> None:
    """Run an example pipeline with the dashboard on SQLite."""
    from ..demo import run_demo

    code = run_demo(url=command_url(url), port=port, show=show, jobs=jobs)
    if code:
        raise click.exceptions.Exit(code)


@click.command()
@url_option
@log_level_option
def migrate(url: str | None) -> None:
    """Create or migrate the nbjobs tables."""
    from ..app import App

    app = App(command_url(url))  # opening the App's store creates or migrates the schema
    store = app.store
    found, where = store.schema_found, printable(store.safe_url)
    version = store.schema_version
    if found is None:
        click.echo(f"nbjobs schema created at version {version} on {where}")
    elif found < version:
        click.echo(f"nbjobs schema migrated from version {found} to {version} on {where}")
    else:
        click.echo(f"nbjobs schema is current (version {version}) on {where}")
    app.close()
