"""Test helpers: condition waits with deadlines, and real ``nbjobs worker`` subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbjobs
from tests.conftest import make_app

ROOT = Path(__file__).resolve().parents[1]


def wait_until(
    predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


def cli(*args: str, url: str | None = None, env: dict[str, str] | None = None, timeout: float = 60):
    """Run ``python -m nbjobs.cli ARGS`` to completion; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "nbjobs.cli", *args],
        cwd=ROOT,
        env=_env(url, env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _env(url: str | None, extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NBJOBS_URL", None)
    if url is not None:
        env["NBJOBS_URL"] = url
    env.update(extra or {})
    return env


@contextlib.contextmanager
def worker_process(
    target: str,
    url: str,
    log_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> Iterator[subprocess.Popen]:
    """A real ``nbjobs worker TARGET`` process, started in ``cwd``; killed at exit if running.

    Its output goes to ``log_path`` (shown when the block fails), never to a pipe
    that could fill up and stall it.
    """
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nbjobs.cli", "worker", target, *args],
            cwd=cwd,
            env=_env(url, env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    except BaseException:
        sys.stderr.write(f"--- worker log {log_path} ---\n{Path(log_path).read_text()}\n")
        raise
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)


def submit_elsewhere(db_url: str, workflow: str, *args: Any, **kwargs: Any) -> str:
    """Submit a job of ``workflow`` from a short-lived app that never runs it.

    The test process can then queue work that only a worker subprocess knows how to run.
    """
    submitter = make_app(db_url)
    try:

        @submitter.workflow(name=workflow)
        def stand_in(cs: nbjobs.CallState, *a: Any, **kw: Any) -> None:
            raise AssertionError("only a worker that knows the workflow runs it")

        return stand_in.submit(*args, **kwargs).id
    finally:
        submitter.close()
