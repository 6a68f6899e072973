"""One small class per database: connection set-up, the claim, locks, error classes.

:func:`for_url` picks the class from the URL and imports its driver lazily, so a user of
SQLite never needs psycopg installed.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from ..errors import ConfigurationError
from ..validation import check_number
from .base import SECRET_QUERY_KEY, Dialect, redact, safe_url

__all__ = ["Dialect", "check_options", "for_url", "redact", "safe_url"]

#: The database options ``App(...)`` passes on (``sqlite_*`` for SQLite, the pool's for
#: PostgreSQL and MySQL), with the bounds of the numeric ones (see ``check_number``).
OPTIONS: dict[str, dict[str, Any] | None] = {
    "sqlite_synchronous": None,
    "sqlite_busy_timeout": {"minimum": 0},
    "pool_size": {"minimum": 1, "integer": True},
    "max_overflow": {"minimum": -1, "integer": True},  # -1: no limit
    "pool_timeout": {"positive": True},
    "pool_recycle": {"minimum": -1},  # -1: never
}

#: Query keys that the drivers read as the login password (moved into the URL's password,
#: which every SQLAlchemy repr masks, the engine's included).
_PASSWORD_KEYS = {
    "postgresql": ("password",),
    "mysql": ("password", "passwd"),
    "mariadb": ("password", "passwd"),
}


def check_options(options: Mapping[str, object], also: Iterable[str] = ()) -> None:
    """Refuse an option no database reads (a typo must not be ignored silently);
    ``also``: the caller's own option names, offered as corrections too."""
    for name, value in options.items():
        if name not in OPTIONS:
            known = [*also, *OPTIONS]
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigurationError(
                f"unknown App option {name!r}{hint}; the options are {', '.join(known)}"
            )
        bounds = OPTIONS[name]
        if bounds is not None:
            check_number(name, value, **bounds)


def parse_url(url: str | URL) -> URL:
    if not url or not isinstance(url, (str, URL)):
        shown = repr(url) if not url else f"a {type(url).__name__}"  # never echo a password
        raise ConfigurationError(f"the database URL must be a non-empty string, got {shown}")
    try:
        return make_url(url)
    except (ArgumentError, ValueError):
        pass  # raised below, outside this block: the parser's text (the URL) is not chained
    shown = re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", str(url))  # never echo a password
    shown = re.sub(
        rf"([?&][^=&]*(?:{SECRET_QUERY_KEY.pattern})[^=&]*=)[^&]*",
        r"\1***",
        shown,
        flags=re.IGNORECASE,
    )
    raise ConfigurationError(
        f"cannot parse database URL {shown!r}: expected e.g. sqlite:///nbjobs.db or "
        "postgresql+psycopg://user:password@host:5432/dbname"
    )


def _normalised(url: URL) -> URL:
    """The URL nbjobs connects with and shows: a file database's path made absolute
    (a relative one follows the working directory, so a worker started elsewhere would
    silently open another file, and the banners would not tell), and a ``?password=``
    moved to the URL's password field."""
    backend = url.get_backend_name()
    database = url.database
    if (
        backend in ("sqlite", "duckdb")
        and database
        and database != ":memory:"
        and not database.startswith("file:")
        and not os.path.isabs(database)
    ):
        url = url.set(database=os.path.abspath(database))
    for key in _PASSWORD_KEYS.get(backend, ()):
        value = url.query.get(key)
        if isinstance(value, str) and url.password is None:
            url = url.difference_update_query([key]).set(password=value)
    return url


def for_url(url: str | URL, **options: object) -> Dialect:
    """The dialect object for a database URL (options: e.g. ``sqlite_synchronous``)."""
    check_options(options)
    parsed = _normalised(parse_url(url))
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        from .sqlite import SQLiteDialect

        return SQLiteDialect(parsed, **options)
    if backend == "postgresql":
        from .postgres import PostgresDialect

        return PostgresDialect(parsed, **options)
    if backend in ("mysql", "mariadb"):
        from .mysql import MySQLDialect

        return MySQLDialect(parsed, **options)
    if backend == "duckdb":
        from .duckdb import DuckDBDialect

        return DuckDBDialect(parsed, **options)
    raise ConfigurationError(
        f"unsupported database {backend!r} in {safe_url(parsed)}; nbjobs runs on "
        "sqlite, postgresql, mysql/mariadb and duckdb"
    )
