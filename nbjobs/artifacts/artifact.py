"""What users see of a stored artifact: :class:`Artifact` and bounded previews.

``h.artifact("features")`` and ``h.artifacts()`` return :class:`Artifact` objects, which
show the type, shape, size and URI of an artifact without loading it, ``head()`` reads
its first rows, and ``load()`` the whole value (verified against its digest).

A preview reads only what it shows: a Parquet file's footer and the first data page
of at most :data:`PREVIEW_COLUMNS` columns (about a megabyte a column, however big the
frame), a ``.npy`` file's header and first rows, the first bytes of anything else.  A preview is not checked against the digest (that would read
the whole file): it is for looking, ``load()`` is for using.  Everything the HTML shows
is escaped, since column names and values are user data.
"""

from __future__ import annotations

import html
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from .reference import JSON_TYPE, MARKER, PICKLE_TYPE, Reference
from .types import SUMMARY_COLUMNS

if TYPE_CHECKING:
    from .store import ArtifactStore

#: Rows a preview shows.
PREVIEW_ROWS = 5
#: Columns a preview shows at most (the summary lists their dtypes).
PREVIEW_COLUMNS = SUMMARY_COLUMNS
#: Inline styles: a notebook's output area has no stylesheet of ours.
_TABLE = "border-collapse:collapse;font-size:12px;margin:2px 0"
_CELL = "text-align:left;padding:1px 8px 1px 0;white-space:nowrap"
_MUTED = "color:#6b7280;font-size:12px"
_PRE = (
    "font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px;margin:2px 0;"
    "white-space:pre-wrap;max-height:12em;overflow:auto"
)
#: Characters of one preview cell, and bytes of a bytes/JSON preview.
CELL_CHARS = 60
TEXT_BYTES = 400
_PAGE_BUFFER = 64 * 1024
#: Previews kept in memory (each a few kilobytes of HTML), by store, digest and rows.
CACHED_PREVIEWS = 256
_CACHE: OrderedDict[tuple[str, str, str, str, int], str] = OrderedDict()
_CACHE_LOCK = threading.Lock()
#: Types whose preview is their first bytes (as text for JSON and files, else hex).
_BYTE_TYPES = ("bytes", "nbjobs.File", JSON_TYPE, PICKLE_TYPE)
_PARQUET_TYPES = ("pandas.DataFrame", "polars.DataFrame", "pyarrow.Table")


def human_size(size: int | None) -> str:
    """``512 B``, ``12.3 kB``, ``640.0 MB`` (decimal units, as ``ls -h --si``)."""
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def shape_text(ref: Reference) -> str:
    """``1,000 x 3`` for a shape, the file name for a File, else empty."""
    if ref.shape is not None:
        return " x ".join(f"{n:,}" for n in ref.shape)
    name = ref.summary.get("name")
    if isinstance(name, str):
        return f"{name}/" if ref.summary.get("folder") else name
    return ""


def _open(ref: Reference, store: ArtifactStore) -> IO[bytes]:
    path = store.path(ref.sha256, ref.suffix)
    return open(path, "rb") if store.local else store.fs.open(path, "rb")


def head(ref: Reference, store: ArtifactStore, rows: int = PREVIEW_ROWS) -> Any:
    """The first ``rows`` rows of a frame or table (a pandas DataFrame of at most
    :data:`PREVIEW_COLUMNS` columns) or of an array; the first bytes of bytes, a file
    and spilled JSON; None for a folder and for types registered with
    ``register_type``.  Reads only those, unverified."""
    if ref.type in _PARQUET_TYPES:
        import pyarrow as pa
        import pyarrow.parquet as pq

        with _open(ref, store) as f:
            # Page by page (no pre-buffering of the whole row group): the first rows
            # cost the footer and a data page per column, not the first row group.
            parquet = pq.ParquetFile(f, pre_buffer=False, buffer_size=_PAGE_BUFFER)
            schema = parquet.schema_arrow
            columns = schema.names[:PREVIEW_COLUMNS]
            batch = next(parquet.iter_batches(batch_size=max(rows, 1), columns=columns), None)
            if batch is None:
                fields = [schema.field(c) for c in columns]
                batch = pa.RecordBatch.from_pylist([], schema=pa.schema(fields))
            table = pa.Table.from_batches([batch]).slice(0, rows)
            return table.to_pandas()
    if ref.type == "numpy.ndarray":
        import numpy as np

        with _open(ref, store) as f:
            fmt = np.lib.format
            version = fmt.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                return None
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = read(f)
            if fortran or dtype.hasobject:
                return None
            first = min(rows, shape[0]) if shape else 1
            per_row = int(np.prod(shape[1:], dtype=np.int64)) if shape else 1
            data = f.read(first * per_row * dtype.itemsize)
            array = np.frombuffer(data, dtype=dtype)
            return array.reshape((first, *shape[1:])) if shape else array.reshape(())
    if ref.type not in _BYTE_TYPES or ref.summary.get("folder"):
        return None  # a folder, or a type registered by the user: no generic preview
    with _open(ref, store) as f:
        return f.read(TEXT_BYTES)


def _cell(value: Any) -> str:
    text = str(value)
    if len(text) > CELL_CHARS:
        text = text[: CELL_CHARS - 1] + "\u2026"
    return html.escape(text)


def preview_html(ref: Reference, store: ArtifactStore | None, rows: int = PREVIEW_ROWS) -> str:
    """An artifact's dtypes and first rows as a small escaped HTML table (or its first
    bytes); a short note when it cannot be read (missing, or no store).

    An artifact never changes (its name is its digest), so previews are kept (the last
    :data:`CACHED_PREVIEWS`): a dashboard redrawing a running job's detail reads each
    file once."""
    if store is None:
        return f'<div class="nbj-muted" style="{_MUTED}">no artifact store to preview from</div>'
    key = (store.url, ref.type, ref.sha256, ref.suffix, rows)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            _CACHE.move_to_end(key)
            return cached
    try:
        first = head(ref, store, rows)
    except Exception as exc:  # a missing file or a library not installed: say so, briefly
        return (
            f'<div class="nbj-muted nbj-preview-error" style="{_MUTED}">no preview: '
            f"{html.escape(type(exc).__name__)}: {_cell(exc)}</div>"
        )
    text = _render(ref, first)
    with _CACHE_LOCK:
        _CACHE[key] = text
        while len(_CACHE) > CACHED_PREVIEWS:
            _CACHE.popitem(last=False)
    return text


def _render(ref: Reference, first: Any) -> str:
    if first is None:
        return ""
    columns = ref.summary.get("columns") or {}
    if hasattr(first, "columns"):  # a pandas frame (the head of a table)
        dtypes = {str(c): str(t) for c, t in first.dtypes.items()}
        names = [str(c) for c in first.columns]
        heads = "".join(
            f'<th style="{_CELL};border-bottom:1px solid #d1d5db">{_cell(c)}</th>' for c in names
        )
        types = "".join(
            f'<td style="{_CELL};{_MUTED}">{_cell(columns.get(c, dtypes.get(c, "")))}</td>'
            for c in names
        )
        body = "".join(
            "<tr>" + "".join(f'<td style="{_CELL}">{_cell(v)}</td>' for v in row) + "</tr>"
            for row in first.itertuples(index=False, name=None)
        )
        more = ref.summary.get("more_columns") or 0
        shape = ref.shape
        notes = []
        if shape and shape[0] > len(first):
            notes.append(f"first {len(first):,} of {shape[0]:,} rows")
        if more:
            notes.append(f"{more:,} more columns")
        note = f'<div style="{_MUTED}">{", ".join(notes)}</div>' if notes else ""
        return (
            f'<div class="nbj-preview" style="overflow-x:auto"><table style="{_TABLE}">'
            f'<tr>{heads}</tr><tr class="nbj-dtypes">{types}</tr>{body}</table>{note}</div>'
        )
    if isinstance(first, bytes):
        if ref.type in ("bytes", PICKLE_TYPE):
            shown = first.hex(" ")
        else:  # JSON text, or a file: as text, undecodable bytes replaced
            shown = first.decode("utf-8", "replace")
        cut = "\u2026" if ref.size > len(first) else ""
        return (
            f'<pre class="nbj-preview" style="{_PRE}">{html.escape(shown[:TEXT_BYTES])}{cut}</pre>'
        )
    text = repr(first)
    return f'<pre class="nbj-preview" style="{_PRE}">{html.escape(text[: TEXT_BYTES * 2])}</pre>'


class Artifact:
    """A value a job stored out of its database row: a DataFrame, an array, a file...

    ``type`` (``pandas.DataFrame``...), ``shape`` (None when the type has none),
    ``size`` (bytes stored), ``sha256`` (the content's digest, also its file name),
    ``uri`` (readable by other tools: ``pd.read_parquet(a.uri)``,
    ``duckdb.sql(f"select * from '{a.uri}'")``) and ``summary`` (the column dtypes, or
    a file's name) come from the row without reading the artifact.  ``head()`` reads its
    first rows; ``load()`` reads the whole value, checked against its digest.

    ``job_id``, ``step`` (the checkpoint's name, or ``"input"`` / ``"result"``),
    ``kind`` (``step``, ``input`` or ``result``) and ``within`` (where in the stored value
    the artifact sits: ``""`` for the whole value, else a subscript such as
    ``['frame']``) say where it was found.
    """

    def __init__(
        self,
        reference: Reference,
        *,
        job_id: str,
        kind: str,
        step: str,
        within: str = "",
        store: ArtifactStore | None = None,
        loads: Callable[..., Any] | None = None,
    ) -> None:
        self.reference = reference
        self.job_id = job_id
        self.kind = kind
        self.step = step
        self.within = within
        self._store = store
        self._loads = loads

    @property
    def type(self) -> str:
        """The stored type's name: ``pandas.DataFrame``, ``numpy.ndarray``, ``bytes``,
        ``nbjobs.File``, ``json`` (a value spilled out of its row)..."""
        return self.reference.type

    @property
    def sha256(self) -> str:
        """The SHA-256 of the stored bytes (also the file's name)."""
        return self.reference.sha256

    @property
    def size(self) -> int:
        """Bytes stored."""
        return self.reference.size

    @property
    def uri(self) -> str:
        """Where other tools read it: a local path, or an ``s3://``-style URL."""
        return self.reference.uri

    @property
    def summary(self) -> dict[str, Any]:
        """What the reference records of the value: ``columns`` (name -> dtype, the
        first 20), ``shape``, an array's ``dtype``, a File's ``name``..."""
        return dict(self.reference.summary)

    @property
    def shape(self) -> tuple[int, ...] | None:
        """``(rows, columns)`` of a frame or table, an array's shape; else None."""
        return self.reference.shape

    def _where(self) -> str:
        what = "checkpoint" if self.kind == "step" else "its"
        name = f"{self.step!r}" if self.kind == "step" else self.kind
        return f"job {self.job_id}, {what} {name}{self.within}"

    def load(self) -> Any:
        """The value, read from the store and verified (``ArtifactError`` when it is
        missing or corrupt, naming the job, the step and the URI)."""
        if self._loads is None:
            from ..errors import ArtifactError

            raise ArtifactError(f"{self._where()}: no artifact store to load {self.uri} from")
        text = json.dumps({MARKER: self.reference.to_dict()})
        return self._loads(text, where=self._where())

    def head(self, rows: int = PREVIEW_ROWS) -> Any:
        """The first ``rows`` rows (a pandas DataFrame for frames and tables, an array
        for arrays), or the first bytes of bytes, a file and spilled JSON; None for a
        folder or a registered type.  Reads only those, without checking the digest."""
        if self._store is None:
            from ..errors import ArtifactError

            raise ArtifactError(f"{self._where()}: no artifact store to read {self.uri} from")
        return head(self.reference, self._store, rows)

    def __repr__(self) -> str:
        shape = shape_text(self.reference)
        parts = [self.type, f"({shape})" if shape else "", human_size(self.size), self.uri]
        return f"<Artifact {' '.join(p for p in parts if p)}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Artifact):
            return NotImplemented
        key = (self.job_id, self.kind, self.step, self.within, self.reference)
        return key == (other.job_id, other.kind, other.step, other.within, other.reference)

    def __hash__(self) -> int:
        return hash((self.job_id, self.kind, self.step, self.within, self.sha256))

    def _repr_html_(self) -> str:
        return artifact_html(self.reference, self._store, where=self._where())


def facts(ref: Reference) -> str:
    """``pandas.DataFrame · 1,000 x 3 · 24.1 kB``: escaped, without reading the file."""
    shape = shape_text(ref)
    return " · ".join(html.escape(p) for p in (ref.type, shape, human_size(ref.size)) if p)


def artifact_html(
    ref: Reference, store: ArtifactStore | None, *, where: str = "", preview: bool = True
) -> str:
    """An artifact for a notebook cell: its facts, URI and (bounded) preview."""
    title = f'<div style="{_MUTED}">{html.escape(where)}</div>' if where else ""
    body = preview_html(ref, store) if preview else ""
    return (
        '<div class="nbj-artifact" style="font-family:system-ui,-apple-system,sans-serif;'
        f'font-size:13px">{title}<div><b>{facts(ref)}</b></div>'
        f'<div style="{_PRE}">{html.escape(ref.uri)}</div>{body}</div>'
    )
