"""A few connections kept in autocommit mode for the hot single statements (PostgreSQL).

A submit, a claim and a checkpoint are each one statement sent in autocommit mode (see
``Dialect.autocommit_single``).  Checking a connection out of SQLAlchemy's pool for each
of them, switching it to autocommit and back, and checking it in again costs about
60 µs of Python when warm, and about 300 µs on the first call after the process sat
idle for a few milliseconds (caches gone cold): that is a tenth of the time from submit
to start of an idle worker, paid twice (submit, claim).  These connections stay checked
out and in autocommit mode, and are lent last-in first-out (the warmest first).

The set is small (half the pool) and lends nothing while all are lent: callers then take
the pool's way.  A connection that sat idle longer than the dialect's
``idle_ping_seconds`` is pinged before it is lent, as the pool does on checkout; after
a disconnect every idle one is given back to the pool, which replaces them.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DisconnectionError

log = logging.getLogger(__name__)


class AutocommitConnections:
    """Lends connections in autocommit mode; ``take`` returns None when none is free."""

    def __init__(self, engine: Engine, limit: int, idle_ping_seconds: float) -> None:
        self.engine = engine
        self.limit = limit
        self.idle_ping_seconds = idle_ping_seconds
        self._idle: list[tuple[Connection, float]] = []  # (connection, last used)
        self._open = 0
        self._lock = threading.Lock()
        self._closed = False

    def take(self) -> Connection | None:
        with self._lock:
            if self._idle:
                conn, used = self._idle.pop()
            elif self._open < self.limit and not self._closed:
                self._open += 1
                conn, used = None, 0.0
            else:
                return None
        if conn is not None:
            if time.monotonic() - used < self.idle_ping_seconds or self._alive(conn):
                return conn
            self._close(conn)  # dead: a new connection takes its place below
        try:
            return self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except BaseException:
            with self._lock:
                self._open -= 1
            raise

    def give_back(self, conn: Connection, broken: bool = False) -> None:
        """Return a lent connection; ``broken`` (a disconnect): it and the idle ones go."""
        if broken or conn.invalidated or conn.closed or self._closed:
            self._discard(conn)
            if broken:
                self.clear()
            return
        if conn.in_transaction():  # a Core statement made SQLAlchemy begin its view
            conn.commit()
        with self._lock:
            self._idle.append((conn, time.monotonic()))

    def clear(self) -> None:
        """Give every idle connection back to the pool."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            self._discard(conn)

    def close(self) -> None:
        self._closed = True
        self.clear()

    def _alive(self, conn: Connection) -> bool:
        try:
            dbapi_connection = conn.connection.dbapi_connection
            if dbapi_connection is None:  # invalidated while it was idle
                raise DisconnectionError("the connection was invalidated")
            conn.dialect.do_ping(dbapi_connection)
            return True
        except Exception as exc:
            log.info("an idle autocommit connection is dead (%s); opening another", exc)
            conn.invalidate(exc)
            return False

    def _discard(self, conn: Connection) -> None:
        with self._lock:
            self._open -= 1
        self._close(conn)

    @staticmethod
    def _close(conn: Connection) -> None:
        try:
            conn.close()
        except Exception:
            log.debug("closing an autocommit connection failed", exc_info=True)
