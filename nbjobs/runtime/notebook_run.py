"""Running a notebook as one attempt of a job: a fresh kernel, cell by cell.

The function of a notebook workflow (``app.notebook``) is a :class:`NotebookRunner`.
For each attempt it reads the notebook file, injects the run's parameters after the
cell tagged ``parameters``, starts a fresh kernel with nbclient (the kernel the
notebook names, else the worker's own Python) and runs the code cells in order:

* progress is the share of code cells done, written after each cell;
* each cell's output (streams, results, errors) goes to the job's captured output;
* a cell's error fails the attempt with a :class:`~nbjobs.errors.CellError` naming the
  cell's number and the start of its source, the kernel's traceback attached;
* nbclient enforces the cell timeout; the job's timeout, a cancel request or a lost
  lease (set on the execution by the worker's monitor) stop the kernel at once;
* the executed notebook of the attempt, outputs included, is stored through the codec
  (an ``.ipynb`` artifact) whatever the outcome, except a crash of the worker itself;
* the result is the value of the variable the notebook names (``result`` by default).

The kernel reaches the job through the run's :class:`~.notebook_bridge.Bridge`, and dies
with the worker (``PR_SET_PDEATHSIG`` set by the silent set-up request; ipykernel's own
parent poller elsewhere).  The kernel runs on an event loop of its own thread: never on
the caller's loop (``nb.run()`` in a notebook cell, whose loop is running already).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import re
import sys
import threading
from typing import TYPE_CHECKING, Any

from ..errors import CellError, NbjobsError, SerializationError
from . import capture
from .notebook_bridge import POLL_SECONDS, Bridge
from .notebook_source import INJECTED_TAG, NotebookSource, inject

if TYPE_CHECKING:
    from .callstate import CallState

log = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: Lines and characters of a cell's source quoted in its error.
EXCERPT_LINES = 3
EXCERPT_CHARS = 200


def strip_ansi(text: str) -> str:
    """Kernel tracebacks are coloured for terminals; stored text is plain."""
    return _ANSI.sub("", text)


def excerpt(source: str) -> str:
    lines = source.strip().splitlines()
    text = "\n".join(lines[:EXCERPT_LINES])
    if len(text) > EXCERPT_CHARS:
        text = text[:EXCERPT_CHARS] + "..."
    elif len(lines) > EXCERPT_LINES:
        text += "\n..."
    return text


class _Stopped(Exception):
    """The run must stop (cancel, timeout, lost lease): raised in the loop's thread."""


class NotebookRunner:
    """The function of a notebook workflow: ``runner(cs, **parameters)`` runs one attempt.

    Its ``__module__`` and ``__qualname__`` make the notebook's path its identity in the
    registry: the same file registered again replaces its definition, another file
    under a taken name is refused.
    """

    def __init__(
        self,
        source: NotebookSource,
        *,
        result: str = "result",
        cell_timeout: float | None = None,
        kernel_name: str | None = None,
    ) -> None:
        self.source = source
        self.result = result
        self.cell_timeout = cell_timeout
        self.kernel_name = kernel_name
        self.__module__ = "notebook"
        self.__qualname__ = source.path
        self.__name__ = os.path.basename(source.path)
        self.__doc__ = f"The notebook {source.path}, run as a job."

    def __repr__(self) -> str:
        return f"<notebook {self.source.path}>"

    def __call__(self, cs: CallState, *args: Any, **parameters: Any) -> Any:
        return NotebookRun(self, cs, args, parameters).run()


class NotebookRun:
    """One attempt of a notebook job (see the module docstring)."""

    def __init__(
        self, runner: NotebookRunner, cs: CallState, args: tuple, parameters: dict[str, Any]
    ) -> None:
        self.runner = runner
        self.cs = cs
        self.execution = cs._execution
        self.args = args
        self.parameters = parameters
        self.output = capture.current_output()
        self.document: Any = None
        self.injected: int | None = None
        self.code_cells = 0
        self.cells_done = 0
        self.failed_cell: int | None = None
        self.bridge: Bridge | None = None
        self._error: BaseException | None = None

    # -- the attempt, in the worker's thread -------------------------------------------
    def run(self) -> Any:
        import nbformat

        source = self.runner.source
        parsed = source.load()
        source.check_parameters(self.args, self.parameters, parsed)
        workflow = self.execution.workflow
        if workflow.fingerprint != parsed.fingerprint:
            log.info(
                "notebook %s changed since it was registered; running it as it is now", source.path
            )
            workflow.fingerprint = parsed.fingerprint  # checkpoints name the code that ran
        self.document = nbformat.reads(parsed.text, as_version=4)
        self.injected = inject(self.document, self.parameters)
        self.document = nbformat.from_dict(self.document)  # the injected cell, too
        self.code_cells = sum(1 for c in self.document.cells if _runs(c))
        self.bridge = Bridge(self.cs, self.parameters)
        try:
            # A thread of its own, with its own event loop, carrying the job's context
            # (its output capture).
            context = contextvars.copy_context()
            thread = threading.Thread(
                target=context.run,
                args=(self._thread_main,),
                name=f"nbjobs-notebook-{self.cs.job_id}",
                daemon=True,
            )
            thread.start()
            thread.join()
        finally:
            self.bridge.close()
            self._keep_notebook()
        if self.bridge.fatal is not None:
            raise self.bridge.fatal
        self.execution.check()  # a cancel, a timeout or a lost lease stopped the kernel
        if self._error is not None:
            raise self._error
        if self.bridge.has_value:
            return self.bridge.value
        if self.bridge.result is None:
            return None
        where = f"job {self.cs.job_id} ({self.execution.workflow.name}), its result"
        return self.execution.runtime.codec.loads(self.bridge.result, where=where)

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._execute())
        except _Stopped:
            pass
        except BaseException as exc:
            self._error = exc

    def _should_stop(self) -> bool:
        execution = self.execution
        return execution.lost or execution.cancel_requested or self.bridge_fatal()

    def bridge_fatal(self) -> bool:
        return self.bridge is not None and self.bridge.fatal is not None

    # -- in the kernel's thread ---------------------------------------------------------
    async def _execute(self) -> None:
        from nbclient import NotebookClient

        runner = self.runner
        client = NotebookClient(
            self.document,
            timeout=runner.cell_timeout,
            kernel_name=runner.kernel_name or "",
            resources={"metadata": {"path": runner.source.folder}},
            shutdown_kernel="immediate",
            record_timing=True,
        )
        async with client.async_setup_kernel():
            python = await self._kernel_info(client)
            if python:
                await self._silent(client, self._setup_code(), "set-up")
            number = 0
            for index, cell in enumerate(self.document.cells):
                if self._should_stop():
                    raise _Stopped
                if not _runs(cell):
                    continue
                number += 1
                await self._run_cell(client, cell, index, number)
                self.cells_done += 1
                self._capture(cell)
                await asyncio.to_thread(self.cs.progress, self.cells_done / self.code_cells)
            if python and not self._should_stop():
                await self._silent(client, self._result_code(), "result")

    async def _kernel_info(self, client: Any) -> bool:
        """Ask the kernel for its language (kept in the notebook, as nbclient does);
        True for a Python kernel, which gets the set-up and the result."""
        from nbclient.util import ensure_async

        msg_id = await ensure_async(client.kc.kernel_info())
        reply = await client.async_wait_for_reply(msg_id)
        info = ((reply or {}).get("content") or {}).get("language_info") or {}
        if info:
            self.document.metadata["language_info"] = info
        return info.get("name") == "python"

    def _setup_code(self) -> str:
        assert self.bridge is not None
        host, port = self.bridge.address
        lines = [
            "def _nbjobs_setup():",
            "    import sys, types",
            "    bridge = types.ModuleType('_nbjobs_bridge')",
            f"    bridge.address = ({host!r}, {port})",
            f"    bridge.key = {self.bridge.authkey.hex()!r}",
            "    sys.modules['_nbjobs_bridge'] = bridge",
        ]
        if sys.platform.startswith("linux"):
            # The kernel dies with the worker: PR_SET_PDEATHSIG (1) = SIGKILL (9).
            lines += [
                "    import ctypes, os",
                "    ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)",
                f"    if os.getppid() != {os.getpid()}:",
                "        os._exit(1)",
            ]
        lines += ["_nbjobs_setup()", "del _nbjobs_setup"]
        return "\n".join(lines)

    def _result_code(self) -> str:
        """Send the result variable's value to the bridge.  A plain JSON-like value
        (str, int, finite float, bool, None, lists and str-keyed dicts of them) goes as
        it is, with the standard library only: importing nbjobs in the kernel costs half
        a second, and the worker encodes the value with its codec anyway.  Anything
        else is encoded in the kernel by :mod:`nbjobs.kernel` (a DataFrame goes to the
        artifact store from there)."""
        return "\n".join(
            [
                "def _nbjobs_result(name, namespace):",
                "    import sys",
                "    if name not in namespace:",
                "        return",
                "    value = namespace[name]",
                "    def plain(v, depth=0):",
                "        if depth > 100:",
                "            return False",
                "        if v is None or type(v) in (str, int, bool):",
                "            return True",
                "        if type(v) is float:",
                "            return v - v == 0",
                "        if type(v) is list:",
                "            return all(plain(x, depth + 1) for x in v)",
                "        if type(v) is dict:",
                "            return all(type(k) is str and plain(x, depth + 1) for k, x in v.items())",
                "        return False",
                "    if 'nbjobs.kernel' in sys.modules or not plain(value):",
                "        __import__('nbjobs.kernel').kernel._publish_result(value)",
                "        return",
                "    from multiprocessing.connection import Client",
                "    bridge = sys.modules['_nbjobs_bridge']",
                "    with Client(bridge.address, authkey=bytes.fromhex(bridge.key)) as conn:",
                "        conn.send(('result_value', value))",
                "        conn.recv()",
                f"_nbjobs_result({self.runner.result!r}, globals())",
                "del _nbjobs_result",
            ]
        )

    async def _silent(self, client: Any, code: str, what: str) -> None:
        from nbclient.util import ensure_async

        msg_id = await ensure_async(client.kc.execute(code, silent=True, store_history=False))
        reply = await client.async_wait_for_reply(msg_id)
        content = (reply or {}).get("content") or {}
        if content.get("status") == "error":
            if self._should_stop():
                raise _Stopped
            text = f"{content.get('ename')}: {content.get('evalue')}"
            if what == "result" and content.get("ename") == "SerializationError":
                raise SerializationError(
                    f"the notebook's {self.runner.result!r} cannot be stored: "
                    f"{content.get('evalue')}"
                )
            raise NbjobsError(f"the notebook kernel's {what} failed: {text}")

    async def _run_cell(self, client: Any, cell: Any, index: int, number: int) -> None:
        """Run one cell; stop the kernel when the run must stop meanwhile."""
        from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

        task = asyncio.ensure_future(client.async_execute_cell(cell, index, execution_count=number))
        while not task.done():
            await asyncio.wait({task}, timeout=POLL_SECONDS)
            if not task.done() and self._should_stop():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                self._capture(cell)
                raise _Stopped
        try:
            task.result()
        except CellTimeoutError:
            self._capture(cell)
            self.failed_cell = self._number(index)
            raise self._cell_error(
                cell, index, f"timed out after {self.runner.cell_timeout:g} s", None
            ) from None
        except CellExecutionError as exc:
            self._capture(cell)
            if self._should_stop():
                raise _Stopped from None
            self.failed_cell = self._number(index)
            raise self._cell_error(
                cell, index, f"{exc.ename}: {exc.evalue}", strip_ansi(exc.traceback)
            ) from None
        except DeadKernelError:
            if self._should_stop():
                raise _Stopped from None
            self.failed_cell = self._number(index)
            raise self._cell_error(cell, index, "the kernel died", None) from None

    def _number(self, index: int) -> int:
        """The cell's number (from 1) in the notebook file, without the injected cell."""
        if self.injected is not None and index > self.injected:
            return index
        return index + 1

    def _cell_error(self, cell: Any, index: int, what: str, traceback: str | None) -> CellError:
        if INJECTED_TAG in cell.metadata.get("tags", []):
            where = "the injected parameters cell"
        else:
            where = f"cell {self._number(index)}"
        error = CellError(f"{where} failed: {what}\n--- source ---\n{excerpt(cell.source)}")
        if traceback:
            error.add_note(f"--- the kernel's traceback ({where}) ---\n{traceback}")
        return error

    def _capture(self, cell: Any) -> None:
        """Copy the cell's outputs into the job's captured output."""
        output = self.output
        if output is None:
            return
        for out in cell.get("outputs", []):
            kind = out.get("output_type")
            if kind == "stream":
                output.add(
                    "stderr" if out.get("name") == "stderr" else "stdout", out.get("text", "")
                )
            elif kind == "error":
                output.add("stderr", strip_ansi("\n".join(out.get("traceback", []))) + "\n")
            elif kind in ("execute_result", "display_data"):
                text = (out.get("data") or {}).get("text/plain")
                if text:
                    output.add("stdout", (text if isinstance(text, str) else "".join(text)) + "\n")

    # -- the executed notebook -------------------------------------------------------------
    def _keep_notebook(self) -> None:
        """Store the executed notebook of this attempt; a failure here is logged, never
        the attempt's outcome."""
        import nbformat

        if self.document is None:
            return
        runtime = self.execution.runtime
        try:
            data = nbformat.writes(self.document)
            value: Any = data.encode("utf-8") if runtime.codec.artifacts is not None else data
            runtime.store.record_notebook(
                job_id=self.cs.job_id,
                attempt=self.cs.attempt,
                value=runtime.codec.dumps(value),
                cells=self.code_cells,
                cells_done=self.cells_done,
                failed_cell=self.failed_cell,
            )
        except Exception:
            capture.log_outside(
                log,
                logging.WARNING,
                "job %s: could not keep the executed notebook of attempt %s",
                self.cs.job_id,
                self.cs.attempt,
                in_job=True,
            )
            log.debug("keeping the executed notebook failed", exc_info=True)


def _runs(cell: Any) -> bool:
    return cell.get("cell_type") == "code" and bool(str(cell.get("source", "")).strip())
