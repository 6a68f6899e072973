"""One small class per database: connection set-up, the claim, locks, error classes.

:func:`for_url` picks the class from the URL and imports its driver lazily, so a user of
SQLite never needs psycopg installed.
"""

from __future__ import annotations

import re

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from ..errors import ConfigurationError
from .base import Dialect, safe_url

__all__ = ["Dialect", "for_url", "safe_url"]


def parse_url(url: str | URL) -> URL:
    if not url or not isinstance(url, (str, URL)):
        raise ConfigurationError(f"the database URL must be a non-empty string, got {url!r}")
    try:
        return make_url(url)
    except (ArgumentError, ValueError) as exc:
        shown = re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", str(url))  # never echo a password
        raise ConfigurationError(
            f"cannot parse database URL {shown!r}: expected e.g. sqlite:///nbjobs.db or "
            "postgresql+psycopg://user:password@host:5432/dbname"
        ) from exc


def for_url(url: str | URL, **options: object) -> Dialect:
    """The dialect object for a database URL (options: e.g. ``sqlite_synchronous``)."""
    parsed = parse_url(url)
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
