"""A worker app with one notebook job: ``nbjobs worker tests.apps.notebook_app:app``.

It reads ``NBJOBS_URL`` and registers the notebook ``NBJOBS_NOTEBOOK`` as the workflow
``nb-crash``.  The notebook (written by :func:`crash_notebook`) appends to the ledger
file ``NBJOBS_LEDGER``: ``expensive <pid>`` when its checkpointed step really runs, and
``kernel <pid>`` from the cell after it, which hangs when ``NBJOBS_HANG`` is ``1`` (the
kernel inherits the worker's environment), so a test can SIGKILL the worker there.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

import nbjobs


def make_notebook(path: Path, cells: Sequence[str | tuple[str, str]]) -> Path:
    """Write a notebook: a string is a code cell, ``("parameters", src)`` a code cell
    tagged ``parameters``, ``("markdown", text)`` a markdown cell."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    for cell in cells:
        if isinstance(cell, str):
            nb.cells.append(new_code_cell(cell))
        elif cell[0] == "parameters":
            nb.cells.append(new_code_cell(cell[1], metadata={"tags": ["parameters"]}))
        else:
            nb.cells.append(new_markdown_cell(cell[1]))
    nbformat.write(nb, str(path))
    return path


#: The helper cell every test notebook uses: ``note(event)`` appends one fsynced line.
NOTE = """\
import os, time, nbjobs
cs = nbjobs.current()
def note(event):
    with open(os.environ["NBJOBS_LEDGER"], "a") as f:
        f.write(f"{event} {os.getpid()}\\n")
        f.flush()
        os.fsync(f.fileno())
"""


def crash_notebook(path: Path) -> Path:
    return make_notebook(
        path,
        [
            ("markdown", "# An expensive step, then a cell a test kills the worker in"),
            ("parameters", "n = 3"),
            NOTE,
            "def expensive(n):\n    note('expensive')\n    return list(range(n))\n"
            "values = cs.checkpoint('expensive', expensive, n)",
            "note('kernel')\nif os.environ.get('NBJOBS_HANG') == '1':\n"
            "    while True:\n        time.sleep(0.05)",
            "result = sum(values)",
        ],
    )


if "NBJOBS_NOTEBOOK" in os.environ:
    app = nbjobs.App(
        os.environ["NBJOBS_URL"], heartbeat_seconds=0.5, stale_after_seconds=300, poll_seconds=0.1
    )
    nb = app.notebook(os.environ["NBJOBS_NOTEBOOK"], name="nb-crash")
