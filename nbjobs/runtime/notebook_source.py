"""A notebook file as a workflow's code: its cells, fingerprint and parameters.

A notebook job runs the ``.ipynb`` file registered with ``app.notebook(path)``.  Its
parameters follow the papermill convention: the cell tagged ``parameters`` assigns
defaults (``day = "2026-01-01"``), and a run's values are assigned in a cell injected
right after it (tagged ``injected-parameters``).  The names that cell assigns are the
notebook's parameters; any other name is refused at submit.

The file is read again whenever it changes (its size or modification time), so a
submit checks against the notebook as it is now and a worker runs what is on disk.  The
fingerprint (the workflow's code fingerprint, stored beside each checkpoint) is a hash
of the cells' types and sources and the kernel's name: re-running the notebook in
Jupyter, which only changes outputs and execution counts, changes nothing.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import threading
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError

#: The tag of the cell whose assignments are the parameters, and of the injected cell.
PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"


@dataclass(frozen=True)
class Parsed:
    """One version of the notebook file."""

    text: str
    fingerprint: str
    #: Parameter name -> the source of its default, in the parameters cell's order.
    parameters: dict[str, str]
    #: The index of the cell tagged ``parameters``, or None.
    parameters_cell: int | None
    kernel_name: str | None
    language: str | None


def _tags(cell: Any) -> list[str]:
    tags = cell.get("metadata", {}).get("tags", [])
    return list(tags) if isinstance(tags, list) else []


def _source(cell: Any) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _assigned(source: str, path: str) -> dict[str, str]:
    """The names a parameters cell assigns (``x = 1``, ``x: int = 1``), with the source
    of each default; IPython magics (``%...``) are left out of the parse."""
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError as exc:
        raise ConfigurationError(
            f"notebook {path}: the cell tagged {PARAMETERS_TAG!r} is not valid Python: {exc}"
        ) from None
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = ast.unparse(node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            found[node.target.id] = "" if node.value is None else ast.unparse(node.value)
    return found


def parse(text: str, path: str) -> Parsed:
    """Read the notebook JSON ``text`` (of the file ``path``, for messages)."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ConfigurationError(f"notebook {path} is not a notebook (not JSON): {exc}") from None
    cells = document.get("cells") if isinstance(document, dict) else None
    if not isinstance(cells, list):
        raise ConfigurationError(f"notebook {path} has no list of cells (nbformat 4 expected)")
    metadata = document.get("metadata") or {}
    kernelspec = metadata.get("kernelspec") or {}
    language = kernelspec.get("language") or (metadata.get("language_info") or {}).get("name")
    kernel_name = kernelspec.get("name") or None
    parameters: dict[str, str] = {}
    parameters_cell = None
    for index, cell in enumerate(cells):
        if cell.get("cell_type") == "code" and PARAMETERS_TAG in _tags(cell):
            parameters_cell = index
            if language in (None, "python"):
                parameters = _assigned(_source(cell), path)
            break
    code = [
        (cell.get("cell_type"), _source(cell)) for cell in cells if INJECTED_TAG not in _tags(cell)
    ]
    digest = hashlib.sha256(json.dumps([kernel_name, code]).encode("utf-8", "surrogatepass"))
    return Parsed(
        text=text,
        fingerprint=digest.hexdigest()[:16],
        parameters=parameters,
        parameters_cell=parameters_cell,
        kernel_name=kernel_name,
        language=language,
    )


def _literal(value: Any) -> bool:
    """Whether ``repr(value)`` is Python source that evaluates to ``value``."""
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_literal(v) for v in value)
    if isinstance(value, dict):
        return all(_literal(k) and _literal(v) for k, v in value.items())
    return False


class NotebookSource:
    """The notebook file at ``path``, parsed again whenever the file changes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._parsed: Parsed | None = None
        self.load()  # a missing or broken notebook is an error at registration

    @property
    def folder(self) -> str:
        return os.path.dirname(self.path)

    def load(self) -> Parsed:
        """The notebook as it is on disk now."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise ConfigurationError(f"cannot read the notebook {self.path}: {exc}") from None
        key = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if self._parsed is not None and key == self._seen:
                return self._parsed
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read the notebook {self.path}: {exc}") from None
        parsed = parse(text, self.path)
        with self._lock:
            self._seen, self._parsed = key, parsed
        return parsed

    def check_parameters(self, args: tuple, kwargs: dict, parsed: Parsed | None = None) -> None:
        """Refuse what the notebook cannot take: positional arguments, names its
        parameters cell does not assign, values with no Python literal."""
        parsed = parsed or self.load()
        name = os.path.basename(self.path)
        if args:
            raise ConfigurationError(
                f"notebook {name} takes its parameters by name (nb.submit(day=...)), "
                f"got {len(args)} positional argument(s)"
            )
        unknown = sorted(set(kwargs) - set(parsed.parameters))
        if unknown:
            if parsed.parameters_cell is None:
                known = f"it has no cell tagged {PARAMETERS_TAG!r}, so it takes none"
            else:
                known = "its parameters are " + (", ".join(parsed.parameters) or "none")
            raise ConfigurationError(
                f"notebook {name}: unknown parameter(s) {', '.join(unknown)}; {known}"
            )
        for key, value in kwargs.items():
            if not _literal(value):
                raise ConfigurationError(
                    f"notebook {name}: parameter {key}={value!r} has no Python literal form; "
                    "pass str, int, finite float, bool, None, or lists and dicts of them "
                    "(for data, pass a path or load it in a checkpoint)"
                )


def inject(document: dict[str, Any], parameters: dict[str, Any]) -> int | None:
    """Insert the cell assigning ``parameters`` after the cell tagged ``parameters``
    (in place; a cell injected by an earlier run goes first); returns its index, or None
    when there was nothing to inject."""
    cells = [c for c in document["cells"] if INJECTED_TAG not in _tags(c)]
    document["cells"] = cells
    if not parameters:
        return None
    lines = ["# Parameters of this run (injected by nbjobs)"]
    lines += [f"{key} = {value!r}" for key, value in parameters.items()]
    cell: dict[str, Any] = {
        "cell_type": "code",
        "execution_count": None,
        "id": "nbjobs-injected-parameters",
        "metadata": {"tags": [INJECTED_TAG]},
        "outputs": [],
        "source": "\n".join(lines) + "\n",
    }
    tagged = [
        i
        for i, c in enumerate(cells)
        if c.get("cell_type") == "code" and PARAMETERS_TAG in _tags(c)
    ]
    index = tagged[0] + 1 if tagged else 0
    cells.insert(index, cell)
    return index
