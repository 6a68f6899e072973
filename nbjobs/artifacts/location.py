"""Where an app's artifacts live when it names no store, and when a local folder is wrong.

* SQLite (and DuckDB) file ``/data/pipeline.db``: the folder ``/data/pipeline.db.artifacts``
  beside it, so the database and its artifacts move together and need no set-up.
* An in-memory database, or a server database (PostgreSQL, MySQL): ``./nbjobs-artifacts``
  in the working directory, made absolute when the app opens (so a later ``chdir`` does
  not move it).

A local folder is private to one machine.  With a server database, workers on several
hosts would each write to their own folder and a job resumed on another host would not
find its artifacts, so :func:`check_hosts` makes that a clear error instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from .store import ArtifactStore

LOCAL_FOLDER = "nbjobs-artifacts"
SUFFIX = ".artifacts"
_EMBEDDED = ("sqlite", "duckdb")


def _is_embedded(db_url: str) -> bool:
    return db_url.split(":", 1)[0].split("+", 1)[0].lower() in _EMBEDDED


def _database_file(db_url: str) -> str | None:
    """The file of an embedded database URL, or None (in memory, or a server)."""
    if not _is_embedded(db_url):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(db_url).database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return None
    return database.split("?", 1)[0].removeprefix("file:")


def default_location(db_url: str) -> str:
    """The artifact folder an app on ``db_url`` uses by default (an absolute path)."""
    database = _database_file(db_url)
    if database is not None:
        return os.path.abspath(database + SUFFIX)
    return os.path.abspath(LOCAL_FOLDER)


def is_private_folder(store: ArtifactStore) -> bool:
    """A local folder not given as an explicit ``file://`` URL (which says "shared")."""
    return store.local and not store.url.startswith("file://")


def check_hosts(db_url: str, store_is_local: bool, hosts: Iterable[str]) -> None:
    """Refuse a local artifact folder shared by workers on several hosts.

    The rule: the database is a server database (not SQLite or DuckDB, which are
    single-host by nature) *and* the store is a local folder (fsspec's ``file``
    protocol) *and* the live workers (``workers`` rows seen alive within the stale
    threshold, this process included) report more than one distinct ``host``.  Then
    every worker fails to start, naming the hosts and the fix; a folder on a network
    filesystem mounted at the same path everywhere is allowed by passing its URL
    explicitly as ``file://...`` (see :func:`is_private_folder`).
    """
    if _is_embedded(db_url) or not store_is_local:
        return
    distinct = sorted(set(hosts))
    if len(distinct) > 1:
        raise ConfigurationError(
            f"workers on {len(distinct)} hosts ({', '.join(distinct)}) share this database, "
            "but its artifacts are in a local folder, which each host would have its own "
            "copy of: give the app a shared store, e.g. App(..., artifacts='s3://bucket/"
            "prefix'), or a shared folder as artifacts='file:///mnt/shared/nbjobs'"
        )
