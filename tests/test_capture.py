"""Per-job capture of print and logging output (nbjobs.capture), on real worker threads."""

from __future__ import annotations

import logging
import sys
import threading

import pytest

from nbjobs.runtime import capture

WAIT = 60


def test_print_and_logging_in_a_job_go_to_its_log_not_the_console(sqlite_app, capsys):
    log = logging.getLogger("tests.capture.job")

    @sqlite_app.workflow
    def chatty(cs, n):
        print(f"starting {n}")
        cs.checkpoint("step", lambda: print("inside the step", file=sys.stderr) or n)
        log.warning("a warning from job %d", n)
        return n

    print("before the job")
    sqlite_app.start(concurrency=2)
    h = chatty.submit(7)
    assert h.result(timeout=WAIT) == 7
    print("after the job")

    # The output is stored before the result is recorded: no waiting needed here.
    logs = h.logs()
    assert "starting 7\n" in logs
    assert "inside the step\n" in logs
    assert "WARNING tests.capture.job: a warning from job 7\n" in logs
    seen = capsys.readouterr()
    assert "before the job" in seen.out and "after the job" in seen.out
    assert "starting" not in seen.out + seen.err
    assert "inside the step" not in seen.out + seen.err
    assert "a warning from job" not in seen.out + seen.err


def test_concurrent_jobs_keep_their_own_output(sqlite_app):
    barrier = threading.Barrier(3, timeout=WAIT)

    @sqlite_app.workflow
    def talker(cs, name):
        for i in range(20):
            print(f"{name} line {i}")
            if i == 10:
                barrier.wait()  # all three jobs print at the same time
        return name

    sqlite_app.start(concurrency=3)
    handles = [talker.submit(n) for n in ("alpha", "beta", "gamma")]
    for h in handles:
        h.result(timeout=WAIT)
    for h, name in zip(handles, ("alpha", "beta", "gamma"), strict=True):
        lines = h.logs().splitlines()
        assert lines == [f"{name} line {i}" for i in range(20)]


def test_async_workflows_and_their_thread_steps_are_captured(sqlite_app):
    import asyncio

    def blocking_step(name):
        print(f"{name} in a thread step")
        return name

    @sqlite_app.workflow
    async def async_talker(cs, name):
        print(f"{name} on the loop")
        await asyncio.sleep(0.05)
        value = await cs.checkpoint("thread", blocking_step, name)
        logging.getLogger("tests.capture.async").error("%s logged", name)
        return value

    sqlite_app.start(concurrency=2)
    handles = [async_talker.submit(n) for n in ("one", "two")]
    for h, name in zip(handles, ("one", "two"), strict=True):
        assert h.result(timeout=WAIT) == name
        logs = h.logs()
        assert f"{name} on the loop\n" in logs
        assert f"{name} in a thread step\n" in logs
        assert f"ERROR tests.capture.async: {name} logged\n" in logs
        other = "two" if name == "one" else "one"
        assert other not in logs


def test_output_of_every_attempt_is_kept(sqlite_app):
    @sqlite_app.workflow(retries=2)
    def flaky(cs):
        print(f"attempt {cs.attempt}")
        if cs.attempt < 3:
            raise RuntimeError("not yet")
        return "ok"

    sqlite_app.start()
    h = flaky.submit()
    assert h.result(timeout=WAIT) == "ok"
    assert h.logs().splitlines() == ["attempt 1", "attempt 2", "attempt 3"]
    rows = sqlite_app.store.job_logs(h.id)
    assert sorted({r.attempt for r in rows}) == [1, 2, 3]


def test_output_is_bounded_per_attempt(sqlite_app, monkeypatch):
    monkeypatch.setattr(capture, "MAX_CHARS_PER_ATTEMPT", 1000)

    @sqlite_app.workflow
    def flood(cs):
        for _ in range(500):
            print("x" * 99)
        return "done"

    sqlite_app.start()
    h = flood.submit()
    h.result(timeout=WAIT)
    logs = h.logs()
    assert logs.startswith("x" * 99 + "\n")
    assert logs.count("x") == 1000 - 10  # ten lines of 99 characters and a newline each
    assert "49000 more characters of output were dropped" in logs


def test_wf_run_output_is_stored_and_still_shown(sqlite_app, capsys):
    @sqlite_app.workflow
    def here(cs):
        print("visible in the cell")
        return 1

    assert here.run() == 1
    assert "visible in the cell" in capsys.readouterr().out
    (h,) = sqlite_app.jobs()
    assert h.logs() == "visible in the cell\n"


def test_code_outside_jobs_is_untouched(sqlite_app, capsys):
    """Other threads print normally while a job runs; logging config keeps working."""
    root = logging.getLogger()
    handlers_before = list(root.handlers)
    started = threading.Event()
    release = threading.Event()

    @sqlite_app.workflow
    def quiet(cs):
        print("job text")
        started.set()
        release.wait(WAIT)
        return 1

    sqlite_app.start()
    h = quiet.submit()
    assert started.wait(WAIT)
    print("main thread text")
    # A logger without handlers that does not propagate: the last-resort handler prints.
    outside = logging.getLogger("tests.capture.outside")
    outside.propagate = False
    outside.warning("outside warning")
    outside.propagate = True
    release.set()
    h.result(timeout=WAIT)

    seen = capsys.readouterr()
    assert "main thread text" in seen.out
    assert "job text" not in seen.out
    # No handler was added, so the last-resort handler still prints warnings of code
    # outside jobs, and logging.basicConfig() would still configure the root logger.
    assert root.handlers == handlers_before
    assert "outside warning" in seen.err
    assert isinstance(sys.stdout, capture._StreamProxy)
    assert sys.stdout.encoding  # attributes pass through to the real stream


def test_a_stream_handler_inside_a_job_is_not_logged_twice(sqlite_app, capsys):
    # Made before nbjobs wraps sys.stderr (like logging.basicConfig in a first cell).
    handler = logging.StreamHandler()
    assert not isinstance(handler.stream, capture._StreamProxy)
    logger = logging.getLogger("tests.capture.handler")
    logger.addHandler(handler)
    logger.propagate = False

    @sqlite_app.workflow
    def logs_once(cs):
        logger.warning("only once")
        return 1

    try:
        sqlite_app.start()
        h = logs_once.submit()
        h.result(timeout=WAIT)
        assert h.logs().count("only once") == 1
        assert "only once" not in capsys.readouterr().err
        logger.warning("outside a job")  # the handler still writes to the console
        assert "outside a job" in capsys.readouterr().err
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_install_wraps_a_replaced_stream_again(stream, monkeypatch):
    import io

    fresh = io.StringIO()
    monkeypatch.setattr(sys, stream, fresh)
    capture.install()
    proxy = getattr(sys, stream)
    assert isinstance(proxy, capture._StreamProxy)
    assert proxy._nbjobs_original is fresh
    capture.install()
    assert getattr(sys, stream) is proxy  # never a proxy of a proxy
    print("through", file=proxy)
    assert fresh.getvalue() == "through\n"
