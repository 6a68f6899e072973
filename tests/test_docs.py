"""The documentation: the site builds with warnings as errors, and its examples run.

Every ```` ```python ```` block of a page (and of README.md) runs, in order, in one
namespace per page, in a fresh temporary directory with ``NBJOBS_URL`` pointing at a
SQLite file there, so a relative ``sqlite:///x.db`` lands in the temporary directory too.
Blocks fenced as ```` ```py ```` are illustrations that are not run (they need a server, or
show a fragment of a workflow).  Blocks fenced as ```` ```python title="path" ```` are files
of a project: the worker guide's are written to disk and run as a user would, a real
``nbjobs worker`` process and a script.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import worker_process

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
FILE_FENCE = re.compile(
    r'^```python title="([^"]+)"[ \t]*\n(.*?)^```[ \t]*$', re.MULTILINE | re.DOTALL
)


def pages() -> list[Path]:
    """README and every page of the site, the guides linked in from ``docs/*.md`` included.

    Those guides are symlinks inside ``docs/content`` (the site's ``docs_dir``); they are
    pages a user reads like any other, so their examples run too.
    """
    return [ROOT / "README.md", *sorted((DOCS / "content").rglob("*.md"))]


def code_blocks(page: Path) -> list[str]:
    return [m.group(1) for m in FENCE.finditer(page.read_text())]


def test_every_page_is_found_and_has_examples():
    names = {p.relative_to(ROOT).as_posix() for p in pages()}
    assert {"README.md", "docs/content/tutorial.md", "docs/content/reference.md"} <= names
    # The guides linked in from docs/*.md are run too, under their path on the site.
    linked = {p.relative_to(ROOT).as_posix() for p in pages() if p.is_symlink()}
    assert {"docs/content/how-to/fanout.md", "docs/content/how-to/schedules.md"} <= linked
    assert len(code_blocks(DOCS / "content" / "tutorial.md")) >= 6


def test_readme_links_resolve_and_show_the_dashboard():
    """README's relative links (GitHub renders them) point at files that exist."""
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and t[0] != "#"]
    assert "docs/content/img/dashboard.png" in local
    assert "docs/content/performance.md" in local
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README links to missing files: {missing}"


@pytest.mark.parametrize(
    "page", [p for p in pages() if code_blocks(p)], ids=lambda p: p.relative_to(ROOT).as_posix()
)
def test_code_examples_run(page: Path, tmp_path, monkeypatch):
    import nbjobs.app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NBJOBS_URL", f"sqlite:///{tmp_path / 'default.db'}")
    namespace: dict = {"__name__": "__docs__"}
    apps_before = set(nbjobs.app._apps)
    try:
        for number, block in enumerate(code_blocks(page), 1):
            code = compile(block, f"{page.name}[block {number}]", "exec")
            exec(code, namespace)
    finally:
        for app in set(nbjobs.app._apps) - apps_before:
            app.close()


def test_worker_guide_runs_with_a_worker_process(tmp_path):
    """The worker how-to's files, as a user would run them: worker and script apart.

    The worker imports ``report.py`` (its ``__main__`` guard keeps the import from
    submitting), and ``python report.py DAY`` submits and prints what the worker returns.
    Both run in the project folder; the database is an absolute ``NBJOBS_URL``.
    """
    files = {
        m.group(1): m.group(2)
        for m in FILE_FENCE.finditer((DOCS / "content" / "how-to" / "workers.md").read_text())
    }
    assert "report.py" in files
    project = tmp_path / "reports"
    for name, text in files.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    with worker_process("report:app", url, tmp_path / "worker.log", "-c", "2", cwd=project):
        script = subprocess.run(
            [sys.executable, "report.py", "2026-12-01"],
            cwd=project,
            env={**os.environ, "NBJOBS_URL": url},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert script.returncode == 0, script.stdout + script.stderr
    assert script.stdout.strip() == "{'day': '2026-12-01', 'total': 245}"


def test_site_builds_strict(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(DOCS / "mkdocs.yml"),
            "-d",
            str(tmp_path / "site"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    reference = (tmp_path / "site" / "reference" / "index.html").read_text()
    for name in ("history_frame", "checkpoint", "retry", "FakeClock"):
        assert name in reference
    # mkdocstrings leaves out members without a docstring: these must have one.
    for member in (
        "App.pause_queue",
        "App.set_queue",
        "App.queue_limits",
        "JobHandle.status_detail",
        "App.resume_queue",
        "App.pause_schedule",
        "App.resume_schedule",
        "App.backoff_seconds",
        "JobHandle.workflow",
        "JobHandle.error",
        "Outcome.ok",
    ):
        assert f'id="nbjobs.{member}"' in reference, f"{member} is missing from the reference"
