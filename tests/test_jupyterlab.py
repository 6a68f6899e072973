"""Every notebook in a real JupyterLab, run in headless Chromium: what a user sees.

nbval runs the notebooks but renders nothing, so it cannot see a dashboard that shows a
text repr, Panel's "requires the panel extension" warning, or a page that fetches its
scripts from a CDN an offline machine cannot reach.  This test starts one JupyterLab
server (offline: no news, no update check, a read-only extension manager) on a copy of
notebooks/, opens each notebook in its own tab, runs all its cells and reads what the
cells show.  In the notebooks that display ``app.dashboard()`` it checks the counters
and the jobs table, then runs a new cell that submits a job and waits for that job to
appear in the dashboard above without re-running it.  Every request the pages make is
recorded: none may leave this machine.  Screenshots go to artifacts/screenshots/; the
pages' console, the server's log and the kernels' nbjobs and Panel log records go to
artifacts/jupyterlab-{console,kernels}.log and artifacts/jupyterlab.log.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.support import CHROMIUM_ARGS, answers, free_port, server_process

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SHOTS = ROOT / "artifacts" / "screenshots"
TOKEN = "nbjobs-jupyterlab-test"
#: Seconds a notebook may take to run all its cells in JupyterLab.
RUN_SECONDS = 240
#: Notebooks run at the same time, each in its own tab (and kernel).
PARALLEL_TABS = 4
PANEL_WARNING = "requires the panel extension"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", ""}

#: The cell appended to a notebook that shows the dashboard: a job submitted after the
#: dashboard's cell ran, on a worker started for it.
PROBE_CELL = """\
@app.workflow(name="jupyterlab-probe")
def jupyterlab_probe(cs):
    return cs.checkpoint("only", lambda: "seen")

app.start()
probe = jupyterlab_probe.submit()
assert probe.result(timeout=60) == "seen"
print("probe job", probe.id)
"""

#: The cell that reports how many jobs of the notebook's database succeeded.
COUNT_CELL = 'print("succeeded", app.store.job_counts().get("succeeded", 0))\n'

#: The cell that reports the kernel's notebook refresher: how many dashboards it
#: refreshes and whether its one periodic callback runs.
REFRESHER_CELL = """\
from nbjobs.views.notebook import NotebookRefresher

refresher = NotebookRefresher.shared()
print("refreshing", len(refresher.dashboards), "running", refresher.running)
"""

#: JavaScript: the tab's one notebook, ready to run: its file loaded, its kernel
#: connected and idle, and it is the notebook JupyterLab's commands act on.  Null when not
#: (yet); an error when the tab shows another notebook (a workspace shared with another tab).
READY_JS = """(path) => {
    const app = window.jupyterapp;
    if (!app) return null;
    const panels = [...app.shell.widgets('main')].filter(w => w.context && w.content
                                                          && w.sessionContext);
    const others = panels.filter(w => w.context.path !== path).map(w => w.context.path);
    if (others.length) throw new Error(`the tab also shows ${others}`);
    const panel = panels[0];
    const kernel = panel && panel.sessionContext.session && panel.sessionContext.session.kernel;
    if (!panel || !panel.context.isReady || !panel.sessionContext.isReady || !kernel
        || kernel.connectionStatus !== 'connected' || kernel.status !== 'idle'
        || app.shell.currentWidget !== panel
        || !app.commands.isEnabled('notebook:run-all-cells')) return null;
    return true;
}"""

#: JavaScript: has the tab's notebook finished (kernel idle, no cell queued or running)?
DONE_JS = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    const kernel = panel.sessionContext.session.kernel;
    if (kernel.status !== 'idle') return false;
    const prompts = [...panel.node.querySelectorAll('.jp-InputArea-prompt')];
    return !prompts.some(p => p.textContent.includes('*'));
}"""

#: JavaScript: has a run started in the tab (a cell queued or run)?  Its notebook starts
#: with no cell run; a cell's prompt shows "*" from the moment it is queued.
STARTED_JS = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    const prompts = [...panel.node.querySelectorAll('.jp-InputArea-prompt')];
    return prompts.some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent));
}"""

#: JavaScript: every code cell's execution count and outputs (nbformat JSON).
CELLS_JS = """() => {
    const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
    const out = [];
    for (let i = 0; i < cells.length; i++) {
        const cell = cells.get(i);
        if (cell.type !== 'code') continue;
        out.push({index: i, source: cell.sharedModel.getSource(),
                  count: cell.executionCount, outputs: cell.outputs.toJSON()});
    }
    return out;
}"""

#: JavaScript: append a code cell with the given source and run it.
APPEND_AND_RUN_JS = """async (source) => {
    const app = window.jupyterapp;
    const panel = app.shell.currentWidget;
    const notebook = panel.content;
    notebook.activeCellIndex = notebook.widgets.length - 1;
    await app.commands.execute('notebook:insert-cell-below');
    notebook.activeCell.model.sharedModel.setSource(source);
    await app.commands.execute('notebook:run-cell');
    return notebook.activeCellIndex;
}"""

#: JavaScript: run the cell at the given index again.
RERUN_JS = """async (index) => {
    const app = window.jupyterapp;
    app.shell.currentWidget.content.activeCellIndex = index;
    await app.commands.execute('notebook:run-cell');
}"""


#: What the page's console says when the kernel's Panel updates do not reach it whole:
#: a patch that names a model the page never had, message parts out of step, a message
#: from the page that failed in the kernel.
COMM_ERRORS = (
    "isn't known",
    "is not iterable",
    "Expected text fragment",
    "Expected binary fragment",
    "Python failed with the following traceback",
)
KERNEL_LOG = SHOTS.parent / "jupyterlab-kernels.log"

#: A kernel's IPython startup file: nbjobs' and Panel's log records (a refresh that
#: failed, a comm message that did not apply) go to one file shared by the kernels.
KERNEL_LOGGING = """\
import logging, os
_handler = logging.FileHandler({path!r})
_handler.setFormatter(logging.Formatter(
    f"%(asctime)s kernel {{os.getpid()}} %(name)s %(levelname)s %(message)s"))
for _name in ("nbjobs", "panel", "bokeh", "pyviz_comms"):
    logging.getLogger(_name).addHandler(_handler)
logging.getLogger("nbjobs").setLevel(logging.DEBUG)
"""


@contextlib.contextmanager
def jupyterlab(workdir: Path):
    """A JupyterLab server on a free localhost port over ``workdir``/root, offline."""
    config, settings = workdir / "config", workdir / "settings" / "@jupyterlab"
    config.mkdir()
    # Nothing from the internet: no news feed, no update check, no PyPI extension search.
    (config / "jupyter_server_config.json").write_text(
        json.dumps(
            {
                "LabApp": {
                    "news_url": None,
                    "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
                    "extension_manager": "readonly",
                    "expose_app_in_browser": True,
                }
            }
        )
    )
    user_settings = {
        # Every cell in the DOM (no virtual scrolling), so that every output is checked.
        "notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "apputils-extension/notification.jupyterlab-settings": {
            "fetchNews": "false",
            "checkForUpdates": False,
        },
    }
    for name, value in user_settings.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(value))
    # The kernels log nbjobs' and Panel's messages (their refresh, its comm) to a file.
    startup = workdir / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-nbjobs-log.py").write_text(KERNEL_LOGGING.format(path=str(KERNEL_LOG)))
    port = free_port()
    env = {
        "IPYTHONDIR": str(workdir / "ipython"),
        "JUPYTER_CONFIG_DIR": str(config),
        "JUPYTER_RUNTIME_DIR": str(workdir / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(workdir / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(workdir / "workspaces"),
        # The kernels import this checkout's nbjobs.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }
    argv = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
            f"--port={port}", f"--IdentityProvider.token={TOKEN}", "--allow-root",
            f"--ServerApp.root_dir={workdir / 'root'}"]  # fmt: skip
    address = f"http://127.0.0.1:{port}"
    ready = answers(f"{address}/api/status?token={TOKEN}")
    # The server shuts its kernels down on SIGTERM.
    with server_process(
        argv, SHOTS.parent / "jupyterlab.log", ready, env=env, timeout=120, stop_seconds=30
    ):
        yield address


def output_text(output: dict) -> str:
    """The text of one nbformat output, whatever its type."""
    if output["output_type"] == "stream":
        text = output["text"]
        return text if isinstance(text, str) else "".join(text)
    if output["output_type"] == "error":
        return "\n".join([f"{output['ename']}: {output['evalue']}", *output["traceback"]])
    parts = []
    for mime in ("text/plain", "text/html", "text/markdown"):
        value = output.get("data", {}).get(mime)
        if value is not None:
            parts.append(value if isinstance(value, str) else "".join(value))
    return "\n".join(parts)


def problems(cells: list[dict]) -> list[str]:
    """What is wrong in the cells' outputs: errors, tracebacks, Panel's warning, cells
    not run (a cell that raised stops "Run All"), a Panel object shown as its repr."""
    found = []
    for cell in cells:
        where = f"cell {cell['index']} ({cell['source'][:60]!r})"
        if cell["count"] is None:
            found.append(f"{where} did not run")
        for output in cell["outputs"]:
            text = output_text(output)
            if output["output_type"] == "error" or "Traceback" in text:
                found.append(f"{where} raised: {text[-1500:]}")
            if PANEL_WARNING in text:
                found.append(f"{where} shows Panel's warning: {text[:300]}")
            shown_as = set(output.get("data", {}))
            if shown_as == {"text/plain"} and re.match(r"(Dashboard|Column|Row|Tabs)\d*\(", text):
                found.append(f"{where} shows a Panel object as text: {text[:200]}")
    return found


def non_local(urls: list[str]) -> list[str]:
    return sorted(
        {
            u
            for u in urls
            if urlsplit(u).scheme in ("http", "https", "ws", "wss")
            and urlsplit(u).hostname not in LOCAL_HOSTS
        }
    )


def open_notebook(context, address: str, name: str):
    """A new tab with ``name`` open, in a workspace of its own, ready to run.

    Tabs on one JupyterLab share its default workspace unless each names its own: a tab
    would then also reopen the notebooks an earlier tab had open (the workspace is saved
    on the server), and "the current notebook" could be one of those.
    """
    page = context.new_page()
    path = f"{name}/{name}.ipynb"
    page.goto(f"{address}/lab/workspaces/{name}/tree/{path}?reset&token={TOKEN}")
    page.wait_for_function(READY_JS, arg=path, timeout=120_000)
    return page


def run_all(page) -> None:
    """Start "Run All Cells" in the tab (once), without waiting for the cells to finish."""
    page.bring_to_front()
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    page.wait_for_function(STARTED_JS, timeout=30_000)


def wait_done(page, timeout_s: float = RUN_SECONDS) -> list[dict]:
    page.bring_to_front()
    page.wait_for_function(DONE_JS, timeout=timeout_s * 1000)
    return page.evaluate(CELLS_JS)


def run_cell(page, source: str) -> tuple[int, str]:
    """Append a cell with ``source``, run it, and return its index and its text output."""
    index = page.evaluate(APPEND_AND_RUN_JS, source)
    cells = wait_done(page, 120)
    cell = next(c for c in cells if c["index"] == index)
    assert not problems([cell]), problems([cell])
    return index, "\n".join(output_text(o) for o in cell["outputs"])


def shot(locator, name: str) -> None:
    locator.page.wait_for_timeout(300)  # let the last update paint
    locator.screenshot(path=str(SHOTS / f"{name}.png"))


def check_dashboard(page, cells: list[dict], name: str) -> None:
    """The inline dashboard shows counters and jobs, and stays live: a job submitted by a
    new cell appears in it without its cell being run again; re-running the cell leaves
    one refresh."""
    dashboard_cell = next(c for c in cells if "app.dashboard()" in c["source"])
    outputs = page.locator(".jp-Cell").nth(dashboard_cell["index"]).locator(".jp-OutputArea")
    dashboard = outputs.locator(".jp-OutputArea-output", has=page.locator(".nbj-url"))
    expect(dashboard).to_have_count(1, timeout=30_000)
    # The counters catch up with the database (cells after the dashboard's ran jobs).
    _, text = run_cell(page, COUNT_CELL)
    before = int(re.search(r"succeeded (\d+)", text).group(1))
    succeeded = dashboard.locator('.nbj-card [data-status="succeeded"]')
    expect(succeeded).to_have_text(f"{before:,}", timeout=15_000)
    expect(dashboard.locator(".nbj-card")).to_have_count(6)
    expect(dashboard.locator(".nbj-live")).to_be_visible()
    # Styled: the cards wear nbjobs' CSS (a coloured top border), the table its theme.
    expect(dashboard.locator(".nbj-card").first).to_have_css("border-top-width", "4px")
    box = dashboard.bounding_box()
    assert box and box["height"] > 400 and box["width"] > 600, f"dashboard clipped: {box}"
    shot(dashboard, f"jupyterlab-{name}-dashboard-overview")

    dashboard.locator(".bk-tab", has_text="Jobs").click()
    rows = dashboard.locator(".nbj-jobs-table .tabulator-row")
    expect(rows.first).to_be_visible(timeout=15_000)
    expect(dashboard.locator(".nbj-jobs-table .tabulator-header")).to_be_visible()
    shot(dashboard, f"jupyterlab-{name}-dashboard-jobs")

    # A job submitted from a new cell appears, and finishes, in the dashboard above.
    _, text = run_cell(page, PROBE_CELL)
    probe_id = re.search(r"probe job (\w+)", text).group(1)
    row = dashboard.locator(".nbj-jobs-table .tabulator-row", has_text=probe_id)
    expect(row).to_be_visible(timeout=15_000)
    expect(row).to_contain_text("succeeded", timeout=15_000)
    expect(row).to_contain_text("jupyterlab-probe")
    # A click in the table reaches the kernel, whose answer (the job's detail) comes back.
    row.locator(".tabulator-cell[tabulator-field=id]").click()
    expect(dashboard.locator(".nbj-detail")).to_contain_text("jupyterlab-probe", timeout=15_000)
    shot(dashboard, f"jupyterlab-{name}-dashboard-live")
    dashboard.locator(".bk-tab", has_text="Overview").click()
    expect(succeeded).to_have_text(f"{before + 1:,}", timeout=15_000)

    # Re-running the dashboard's cell replaces its dashboard: still one refresh, for
    # one dashboard, and the new one is live too.
    _, text = run_cell(page, REFRESHER_CELL)
    assert "refreshing 1 running True" in text, text
    page.evaluate(RERUN_JS, dashboard_cell["index"])
    wait_done(page, 120)
    expect(dashboard.locator(".nbj-card")).to_have_count(6, timeout=30_000)
    deadline = time.monotonic() + 20
    while True:
        _, text = run_cell(page, REFRESHER_CELL)
        if "refreshing 1 running True" in text or time.monotonic() > deadline:
            break
        page.wait_for_timeout(500)
    assert "refreshing 1 running True" in text, text
    run_cell(page, PROBE_CELL.replace("app.start()\n", ""))
    expect(succeeded).to_have_text(f"{before + 2:,}", timeout=15_000)


def test_every_notebook_in_jupyterlab(tmp_path):
    SHOTS.mkdir(parents=True, exist_ok=True)
    root = tmp_path / "root"
    for notebook in NOTEBOOKS:
        # One folder per notebook: the files a notebook writes never meet another's.
        (root / notebook.stem).mkdir(parents=True)
        shutil.copy(notebook, root / notebook.stem)
    requests: list[str] = []
    failures: dict[str, list[str]] = {}
    comm_errors: list[str] = []
    KERNEL_LOG.unlink(missing_ok=True)

    def on_console(message) -> None:
        page = message.page.url if message.page else ""
        line = f"{time.strftime('%H:%M:%S')} {page} {message.type}: {message.text}"
        print(line, file=console, flush=True)
        if message.type in ("error", "warning") and any(e in message.text for e in COMM_ERRORS):
            comm_errors.append(line)

    with contextlib.ExitStack() as stack, jupyterlab(tmp_path) as address, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.on("request", lambda r: requests.append(r.url))
        console = stack.enter_context(open(SHOTS.parent / "jupyterlab-console.log", "w"))
        context.on("console", on_console)
        context.on("weberror", lambda e: print(f"page error: {e.error}", file=console))
        names = [n.stem for n in NOTEBOOKS]
        for start in range(0, len(names), PARALLEL_TABS):
            batch = names[start : start + PARALLEL_TABS]
            pages = {}
            for name in batch:
                pages[name] = open_notebook(context, address, name)
                run_all(pages[name])
            for name, page in pages.items():
                cells = wait_done(page)
                page.screenshot(path=str(SHOTS / f"jupyterlab-{name}.png"))
                failures[name] = problems(cells)
                if any(".watch()" in c["source"] for c in cells):
                    # h.watch() (ipywidgets) renders as a widget, not as text.
                    watch = page.locator(
                        ".jp-OutputArea-output .jupyter-widgets", has_text="steps done"
                    )
                    expect(watch.first).to_be_visible(timeout=10_000)
                if not failures[name] and any("app.dashboard()" in c["source"] for c in cells):
                    check_dashboard(page, cells, name)
                page.close()
        browser.close()
    assert not any(failures.values()), json.dumps(failures, indent=1)
    assert non_local(requests) == [], non_local(requests)
    # An update the page could not apply is lost for good (so are all later ones when
    # the comm's message parts come out of step): fail on the first, not on its effects.
    assert comm_errors == [], "\n".join(comm_errors)
    kernel_errors = [
        line
        for line in KERNEL_LOG.read_text().splitlines()
        if re.search(r" (nbjobs\.views|panel|bokeh|pyviz_comms)\S* (ERROR|CRITICAL) ", line)
    ]
    assert kernel_errors == [], "\n".join(kernel_errors)
