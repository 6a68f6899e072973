"""The event ledger of the worker apps: one fsynced line per event in ``NBJOBS_LEDGER``
(when set), so a test can count side effects across processes, even killed ones."""

from __future__ import annotations

import os


def record(event: str) -> None:
    path = os.environ.get("NBJOBS_LEDGER")
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event} {os.getpid()}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
