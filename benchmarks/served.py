"""A served dashboard open in Debian's headless Chromium, for the benchmarks.

``ServedDashboard(url, logdir)`` starts ``nbjobs dashboard`` on a free local port and
opens it in a Chromium tab (Playwright, ``/usr/bin/chromium``); ``first_paint()`` times a
fresh page until the status counters show a number, then until the jobs table shows a
row, and ``rss()`` is the dashboard server's resident memory.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"


class ServedDashboard:
    def __init__(self, url: str, logdir: Path) -> None:
        from playwright.sync_api import sync_playwright

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.log = open(logdir / "dashboard.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nbjobs.cli", "--log-level", "WARNING", "dashboard",
             "--url", url, "--port", str(port), "--no-token"],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.address = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(self.address, timeout=60).read()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(
                        f"the dashboard did not start: see {self.log.name}"
                    ) from None
                time.sleep(0.3)
        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        self.page = self.browser.new_page(viewport={"width": 1400, "height": 900})

    def open(self) -> None:
        """Keep a live session open in the tab (it refreshes itself once a second)."""
        self.page.goto(self.address, wait_until="networkidle")

    def first_paint(self) -> tuple[float, float]:
        """Seconds from navigating a new tab to the overview's counters showing numbers,
        and to a row of the jobs table after clicking its tab."""
        from playwright.sync_api import expect

        page = self.browser.new_page(viewport={"width": 1400, "height": 900})
        try:
            start = time.perf_counter()
            page.goto(self.address)
            expect(page.locator('.nbj-card [data-status="succeeded"]')).not_to_have_text(
                "0", timeout=60_000
            )
            painted = time.perf_counter() - start
            page.locator(".bk-tab", has_text="Jobs").click()
            expect(page.locator(".nbj-jobs-table .tabulator-row").first).to_be_visible(
                timeout=60_000
            )
            return painted, time.perf_counter() - start
        finally:
            page.close()

    def rss(self) -> int:
        import psutil

        self.page.wait_for_timeout(10)  # let Playwright take the page's events
        return psutil.Process(self.proc.pid).memory_info().rss

    def close(self) -> None:
        if getattr(self, "browser", None) is not None:
            self.browser.close()
            self._pw.stop()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
