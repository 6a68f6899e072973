"""Notebook jobs: a 20-cell trivial notebook as a job against nbclient alone.

    .venv/bin/python benchmarks/bench_notebooks.py                  # 3 rounds, SQLite
    .venv/bin/python benchmarks/bench_notebooks.py --repeat 5 --cells 40

Each round, alternating so that a loaded machine slows both alike, measures:

* **kernel start-up**: nbclient starting a fresh kernel, waiting until it answers, and
  shutting it down, with no cell run: the floor under both of the next two;
* **nbclient alone**: ``NotebookClient(nb).execute()`` of the notebook (``--cells``
  cells of ``x_i = i``), kernel start-up included;
* **as a job**: ``nb.submit()`` then ``h.result()`` with an in-process worker already
  running on a SQLite file: the claim, the parameters injected, the kernel's set-up
  request, progress written after each cell, the executed notebook kept as an artifact,
  and the outcome recorded;
* **as a job, with a result**: the same notebook ending in ``result = ...``, whose value
  the kernel sends back (it imports nbjobs to do so).

The table shows the median and best seconds of each, and the job's median over
nbclient's (target: at most 1.5x).  Numbers on a shared machine are noisy: repeat more.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

import nbjobs

TARGET = 1.5


def write_notebook(path: Path, cells: int, result: bool) -> Path:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [new_code_cell(f"x_{i} = {i}") for i in range(cells)]
    if result:
        nb.cells[-1] = new_code_cell(f"result = {cells}")
    nbformat.write(nb, str(path))
    return path


def kernel_startup(path: Path) -> float:
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    client = NotebookClient(nb, shutdown_kernel="immediate")
    start = time.perf_counter()
    with client.setup_kernel():
        pass
    return time.perf_counter() - start


def nbclient_alone(path: Path) -> float:
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, shutdown_kernel="immediate").execute()
    return time.perf_counter() - start


def as_job(nb: nbjobs.workflow.NotebookWorkflow, expected: object) -> float:
    start = time.perf_counter()
    value = nb.submit().result(timeout=300)
    elapsed = time.perf_counter() - start
    assert value == expected, value
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cells", type=int, default=20)
    args = parser.parse_args()
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        plain = write_notebook(folder / "trivial.ipynb", args.cells, result=False)
        ending = write_notebook(folder / "with-result.ipynb", args.cells, result=True)
        app = nbjobs.App(f"sqlite:///{folder / 'bench.db'}")
        try:
            job = app.notebook(plain, name="trivial")
            job_result = app.notebook(ending, name="with-result")
            with app.running(concurrency=1):
                as_job(job, None)  # warm: imports, connections, the first kernel spec lookup
                nbclient_alone(plain)
                for _ in range(args.repeat):
                    for label, run in (
                        ("kernel start-up", lambda: kernel_startup(plain)),
                        ("nbclient alone", lambda: nbclient_alone(plain)),
                        ("as a job", lambda: as_job(job, None)),
                        ("as a job, with a result", lambda: as_job(job_result, args.cells)),
                    ):
                        times.setdefault(label, []).append(run())
        finally:
            app.close()
    print(f"A {args.cells}-cell trivial notebook, {args.repeat} rounds (seconds)\n")
    print(f"{'':<26}{'median':>9}{'best':>9}{'vs nbclient':>14}")
    base = statistics.median(times["nbclient alone"])
    for label, values in times.items():
        median = statistics.median(values)
        ratio = "" if label == "kernel start-up" else f"{median / base:.2f}x"
        print(f"{label:<26}{median:>9.2f}{min(values):>9.2f}{ratio:>14}")
    job_median = statistics.median(times["as a job"])
    overhead = job_median - base
    print(f"\nnbjobs' own cost per run: {overhead:+.2f} s over nbclient "
          f"(target: at most {TARGET}x nbclient alone)")  # fmt: skip


if __name__ == "__main__":
    main()
