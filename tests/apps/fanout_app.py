"""The app of the fan-out crash test: ``nbjobs worker tests.apps.fanout_app:app``.

It reads ``NBJOBS_URL`` and ``FANOUT_LEDGER`` (a separate SQLite file).  Every run of a
child logs a row in ``starts``; its checkpointed side effect is a row in ``effects``
(unique per child), and a repeat of the effect is logged in ``repeats``.
"""

from __future__ import annotations

import os
import sqlite3
import time

import nbjobs

app = nbjobs.App(
    os.environ["NBJOBS_URL"],
    heartbeat_seconds=0.5,
    stale_after_seconds=3.0,
    poll_seconds=0.1,
    max_reclaims=10,
)


def ledger() -> sqlite3.Connection:
    conn = sqlite3.connect(os.environ["FANOUT_LEDGER"], timeout=30, isolation_level=None)
    conn.execute("CREATE TABLE IF NOT EXISTS starts (who TEXT, pid INTEGER)")
    conn.execute("CREATE TABLE IF NOT EXISTS effects (who TEXT PRIMARY KEY, pid INTEGER)")
    conn.execute("CREATE TABLE IF NOT EXISTS repeats (who TEXT, pid INTEGER)")
    return conn


def note(table: str, who: str) -> None:
    with ledger() as conn:
        conn.execute(f"INSERT INTO {table} VALUES (?, ?)", (who, os.getpid()))


def effect(who: str) -> str:
    try:
        note("effects", who)
    except sqlite3.IntegrityError:
        note("repeats", who)
    return who


@app.workflow
def child(cs: nbjobs.CallState, i: int) -> int:
    note("starts", f"child-{i}")
    cs.checkpoint("work", time.sleep, float(os.environ.get("FANOUT_CHILD_SECONDS", "0.3")))
    cs.checkpoint("effect", effect, f"child-{i}")
    return i * 10


@app.workflow
def parent(cs: nbjobs.CallState, n: int) -> list:
    cs.checkpoint("prepare", effect, "parent-prepare")
    outcomes = cs.fan_out("kids", [child.spec(i) for i in range(n)], strategy=nbjobs.CollectAll())
    return [[o.status, o.value] for o in outcomes]
