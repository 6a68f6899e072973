"""Test helpers: condition waits with deadlines, real ``nbjobs worker`` subprocesses, and
server subprocesses (dashboards, JupyterLab) on free local ports."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbjobs
from tests.conftest import NO_WORKER, make_app

ROOT = Path(__file__).resolve().parents[1]

#: Debian's Chromium, headless, with nothing that reaches for the (closed) network.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server_process(
    argv: list[str],
    log_path: Path,
    ready: Callable[[subprocess.Popen], Any],
    *,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    timeout: float = 90,
    stop_seconds: float = 15,
) -> Iterator[subprocess.Popen]:
    """A server subprocess (output to ``log_path``), yielded once ``ready(proc)`` is true;
    terminated after (killed if it does not stop within ``stop_seconds``)."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    try:
        deadline = time.monotonic() + timeout
        while not ready(proc):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the server did not start:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(stop_seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(stop_seconds)


def accepts(port: int) -> Callable[[subprocess.Popen], bool]:
    """A ``ready`` test for :func:`server_process`: something accepts on 127.0.0.1:port."""

    def ready(_proc: subprocess.Popen) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                return True
        except OSError:
            return False

    return ready


def answers(url: str) -> Callable[[subprocess.Popen], bool]:
    """A ``ready`` test for :func:`server_process`: a GET of ``url`` succeeds."""
    import urllib.request

    def ready(_proc: subprocess.Popen) -> bool:
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return True
        except OSError:
            return False

    return ready


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
    """Run ``python -m nbjobs.cli ARGS`` to completion; returns the CompletedProcess.

    Its stdin is empty, never the terminal of the test run: a command that would ask
    for confirmation sees no terminal, as under cron or CI."""
    return subprocess.run(
        [sys.executable, "-m", "nbjobs.cli", *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
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
    Whether that worker is up yet is the test's business: nbjobs' warning that no live
    worker will run the job may come or not, and is no failure here.
    """
    submitter = make_app(db_url)
    try:

        @submitter.workflow(name=workflow)
        def stand_in(cs: nbjobs.CallState, *a: Any, **kw: Any) -> None:
            raise AssertionError("only a worker that knows the workflow runs it")

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", NO_WORKER, UserWarning)
            return stand_in.submit(*args, **kwargs).id
    finally:
        submitter.close()


def killed_worker_jobs(
    engine: Any, victim_id: str, orphans: set[str], every: set[str] | None = None
) -> set[str]:
    """The jobs a SIGKILLed worker held, checked against their attempt rows: each ended
    once, every lost attempt was the victim's, and each job it held was lost and run
    again, or ended by the victim's last commit.

    ``orphans`` are the jobs read as running under the victim just after the kill; the
    read races two things: another worker on this host reclaims the dead process's jobs
    at once (a reclaimed job is lost but no orphan), and a commit the victim sent before
    it died may still end on the server after the read (PostgreSQL and MariaDB commit
    what they received from a client that died meanwhile).  ``every``: the jobs that
    must have ended.  Returns every job the victim held: the orphans and the jobs whose
    attempt was lost."""
    import sqlalchemy as sa

    from nbjobs.schema import attempts

    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(attempts.c.job_id, attempts.c.outcome, attempts.c.worker_id)
        ).all()
    ended: dict[str, list[tuple[str, str]]] = {}
    for r in rows:
        ended.setdefault(r.job_id, []).append((r.outcome, r.worker_id))
    if every is not None:
        assert set(ended) == every
    lost = set()
    for job_id, seen in ended.items():
        outcomes = sorted(outcome for outcome, _ in seen)
        assert outcomes.count("succeeded") == 1, (job_id, seen)
        assert all(w == victim_id for o, w in seen if o == "lost"), (job_id, seen)
        if "lost" in outcomes:
            lost.add(job_id)
            assert outcomes == ["lost", "succeeded"], (job_id, seen)
        elif job_id in orphans:
            assert seen == [("succeeded", victim_id)], (job_id, seen)
        else:
            assert outcomes == ["succeeded"], (job_id, seen)
    assert lost, "no attempt of the killed worker was lost"
    return orphans | lost
