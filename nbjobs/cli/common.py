"""What every command shares: the database URL, the App, errors, tables, JSON, times."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .. import ConfigurationError

if TYPE_CHECKING:
    from ..app import App

F = TypeVar("F", bound=Callable[..., Any])

#: Exit codes scripts can rely on (see :mod:`nbjobs.cli`).
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class OperationFailed(Exception):
    """The command ran but could not do what it was asked (exit code 1)."""


def printable(text: object) -> str:
    """``text`` safe for a terminal: control characters (escape sequences a hostile
    workflow name or error could carry) are shown as visible escapes, e.g. ``\\x1b``."""
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text)
    )


def printable_lines(text: str) -> str:
    """``printable`` line by line: the line breaks of a traceback or a log stay."""
    return "\n".join(printable(line) for line in text.splitlines())


# -- options ---------------------------------------------------------------------------
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_LEVEL_HELP = "logging level (env NBJOBS_LOG_LEVEL)"


#: Whether this command set up the process's logging (then a later --log-level changes it).
_LOGGING = {"ours": False}


def configure_logging(level: str) -> None:
    """Log to stderr at ``level``, when the process has no logging set up (the command run
    as a program); a process that set up its own (``main()`` called from Python) keeps it."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        _LOGGING["ours"] = True
    elif _LOGGING["ours"]:
        root.setLevel(level.upper())


def _set_log_level(_ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        configure_logging(value)


def log_level_option(fn: F) -> F:
    """``--log-level`` after the subcommand too, as the docs show it."""
    return click.option(
        "--log-level",
        type=click.Choice(LOG_LEVELS, case_sensitive=False),
        default=None,
        show_default=False,
        expose_value=False,
        callback=_set_log_level,
        help=LOG_LEVEL_HELP,
    )(fn)


def url_option(fn: F) -> F:
    return click.option(
        "--url",
        default=None,
        show_default=False,
        help="database URL (default: NBJOBS_URL, else sqlite:///nbjobs.db)",
    )(fn)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")(fn)


def yes_option(fn: F) -> F:
    return click.option(
        "--yes", "-y", is_flag=True, help="do not ask for confirmation (needed without a terminal)"
    )(fn)


def command_url(url: str | None) -> str:
    """``--url``, else the one given to a parent command, else NBJOBS_URL, else the default."""
    from ..app import DEFAULT_URL

    if url:
        return url
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        parent_url = (ctx.params or {}).get("url")
        if parent_url:
            return str(parent_url)
        ctx = ctx.parent
    return os.environ.get("NBJOBS_URL") or DEFAULT_URL


def existing_database(url: str) -> str:
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


@contextlib.contextmanager
def open_app(url: str | None) -> Iterator[App]:
    """An App on the command's existing database, closed afterwards.  It registers no
    workflow and runs no worker: it reads, and asks the store to act."""
    from ..app import App

    app = App(existing_database(command_url(url)))
    try:
        yield app
    finally:
        app.close()


# -- times -----------------------------------------------------------------------------
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)


def parse_age(text: str, what: str) -> float:
    """Seconds from an age like ``90``, ``30s``, ``15m``, ``2h``, ``7d`` or ``1w``."""
    match = _AGE.match(text)
    if not match:
        raise click.BadParameter(
            f"{text!r} is not an age; give a number with a unit: 30s, 15m, 2h, 7d, 1w",
            param_hint=what,
        )
    return float(match.group(1)) * _UNITS[(match.group(2) or "s").lower()]


def parse_since(text: str, what: str = "--since") -> float:
    """Epoch seconds from an age before now (``2h``) or an ISO-8601 time (UTC when it
    names no zone)."""
    if _AGE.match(text):
        return datetime.now(timezone.utc).timestamp() - parse_age(text, what)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither an age (30s, 15m, 2h, 7d) nor an ISO-8601 time "
            "(2026-12-01T08:00:00+00:00)",
            param_hint=what,
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def iso(value: Any) -> Any:
    """A datetime or epoch seconds as ISO-8601 text (UTC); anything else as it is."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=timezone.utc).isoformat()
    return value


def shown_time(value: Any) -> str:
    """A time for a table: ``2026-12-05 08:00:00`` (UTC), or empty."""
    if value is None:
        return ""
    moment = value if isinstance(value, datetime) else datetime.fromtimestamp(value, timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def record(row: Any) -> dict[str, Any]:
    """A store row or a dict for JSON: times (``*_at`` columns) as ISO-8601, no lease
    token (a fence for the worker that holds a job, never shown)."""
    data = dict(row._asdict() if hasattr(row, "_asdict") else row)
    data.pop("lease_token", None)
    for key, value in data.items():
        if key.endswith("_at") or isinstance(value, datetime):
            data[key] = None if value is None else iso(value)
    return data


def emit_json(value: Any) -> None:
    """Print ``value`` as JSON; datetimes as ISO-8601 text."""

    def default(obj: Any) -> Any:
        if isinstance(obj, datetime):
            return obj.isoformat()
        return str(obj)

    click.echo(json.dumps(value, indent=2, default=default))


def emit_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print aligned columns (the last one free), every cell made printable."""
    cells = [[printable("" if c is None else c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row[:-1]):
            widths[i] = min(max(widths[i], len(cell)), 40)
    for row in [list(headers), *cells]:
        parts = [cell[: widths[i]].ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        click.echo("  ".join([*parts, row[-1]]).rstrip())


def confirm(count: int, action: str, yes: bool) -> bool:
    """Whether to ``action`` ``count`` jobs: ``--yes``, else the answer at the terminal.

    Without a terminal and without ``--yes`` this is a usage error (exit code 2): a
    script must say ``--yes`` rather than hang on a question.  Answering no is exit 1.
    """
    if yes or count == 0:
        return True
    if not sys.stdin.isatty():
        raise click.UsageError(
            f"{action} {count} job(s)? No terminal to ask on: pass --yes to confirm"
        )
    if not click.confirm(f"{action} {count} job(s)?", default=False):
        raise OperationFailed(f"nothing done: {action} {count} job(s) not confirmed")
    return True
