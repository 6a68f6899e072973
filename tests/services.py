"""Start the local database servers the test suite needs, when they are not running.

``python -m tests.services start`` is idempotent: it starts PostgreSQL (``pg_ctlcluster``)
and MariaDB (``start-stop-daemon``) only when they do not answer, then waits until they
accept connections.  A server that cannot be reached is an error, in CI (``CI=true``) and
elsewhere alike: the backend tests fail loudly rather than being skipped.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"
POSTGRES_PORT = int(os.environ.get("NBJOBS_TEST_PG_PORT", "5432"))
MYSQL_PORT = int(os.environ.get("NBJOBS_TEST_MYSQL_PORT", "3306"))
POSTGRES_ADMIN_URL = os.environ.get(
    "NBJOBS_TEST_PG_URL", f"postgresql+psycopg://postgres@{HOST}:{POSTGRES_PORT}/postgres"
)
MYSQL_ADMIN_URL = os.environ.get(
    "NBJOBS_TEST_MYSQL_URL", f"mysql+pymysql://root@{HOST}:{MYSQL_PORT}/"
)


class ServiceUnavailable(RuntimeError):
    """A database server the tests need cannot be reached or started."""


def _as_root(cmd: list[str]) -> list[str]:
    return cmd if os.geteuid() == 0 else ["sudo", "-n", *cmd]


def postgres_version() -> str:
    versions = sorted(p.name for p in Path("/etc/postgresql").glob("*") if p.is_dir())
    if not versions:
        raise ServiceUnavailable("no PostgreSQL cluster under /etc/postgresql")
    return versions[-1]


def _answers(admin_url: str) -> bool:
    """The server accepts a login (not just a TCP connection: it may still be starting)."""
    import sqlalchemy as sa

    engine = sa.create_engine(admin_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return True
    except Exception:
        return False
    finally:
        engine.dispose()


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


START = {
    "postgres": lambda: [
        "pg_ctlcluster",
        "--skip-systemctl-redirect",
        postgres_version(),
        "main",
        "start",
    ],
    "mysql": lambda: [
        "start-stop-daemon",
        "--start",
        "--oknodo",
        "--background",
        "--exec",
        "/usr/sbin/mariadbd",
    ],
}
ADMIN_URL = {"postgres": POSTGRES_ADMIN_URL, "mysql": MYSQL_ADMIN_URL}


def ensure(service: str, timeout: float = 60.0) -> None:
    """Make ``service`` ("postgres" or "mysql") answer, starting it when it does not."""
    url = ADMIN_URL[service]
    if _answers(url):
        return
    if service == "mysql":
        Path("/run/mysqld").mkdir(parents=True, exist_ok=True)
        subprocess.run(_as_root(["chown", "mysql:mysql", "/run/mysqld"]), check=False)
    cmd = _as_root(START[service]())
    started = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _answers(url):
            return
        time.sleep(0.2)
    raise ServiceUnavailable(
        f"{service} does not answer at {url} (start command {' '.join(cmd)!r} exited "
        f"{started.returncode}: {(started.stderr or started.stdout).strip()[-500:]})"
    )


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "start":
        print("usage: python -m tests.services start [postgres] [mysql]", file=sys.stderr)
        return 2
    services = argv[1:] or ["postgres", "mysql"]
    status = 0
    for service in services:
        try:
            ensure(service)
            print(f"{service}: up")
        except ServiceUnavailable as exc:
            print(f"{service}: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
