"""Which values are stored out of the row, and how each is written and read back.

A type is written to a binary file object by ``dump(value, file)`` and read back from a
local file path by its loader; ``suffix`` is the file extension, so that an artifact is
readable without nbjobs (DuckDB and pandas open ``.parquet``, numpy opens ``.npy``).

Built-in types, matched by exact class (a subclass such as a GeoDataFrame would come back
as its base class, so it is refused unless registered):

* pandas ``DataFrame``, polars ``DataFrame`` and pyarrow ``Table``: Parquet, written by
  pyarrow (polars by its own writer).  A pandas frame keeps its dtypes, index, column
  names, categoricals and time zones through pyarrow's pandas metadata; what that
  metadata loses (an index ``freq``; ``object`` columns of strings, which pandas 3 reads
  back as ``str``) is recorded under the Parquet key ``nbjobs`` and restored.
  A missing value in an ``object`` column of strings comes back as ``None``.
* numpy ``ndarray``: ``.npy`` with ``allow_pickle=False``; an object array is refused.
* ``bytes``: the bytes themselves.
* :class:`File`: a file is copied as it is (its suffix kept); a folder is stored as an
  uncompressed tar stream written deterministically (sorted names, zero times and owners)
  so that equal folders get equal digests.  Only regular files and folders: a symbolic
  link or device is refused.  A loaded ``File`` points at a private copy in the store's
  cache folder.

Optional libraries are imported only when a value of their type is stored or loaded:
``import nbjobs`` never imports pandas, pyarrow, polars, numpy or fsspec.  A value can
only be a DataFrame if pandas is already imported, so matching looks in ``sys.modules``.

Users add types with :func:`register_type` (xarray as the example)::

    import io, xarray as xr
    nbjobs.register_type(
        xr.Dataset,
        dump=lambda ds, f: f.write(ds.to_netcdf()),      # netCDF3 bytes (scipy engine)
        load=lambda f: xr.load_dataset(io.BytesIO(f.read())),
        suffix="nc",
    )
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tarfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..errors import ArtifactError, ConfigurationError, SerializationError

if TYPE_CHECKING:
    from .reference import Reference
    from .store import ArtifactStore

_SUFFIX = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,15}$")
#: Columns named in a reference's summary; the rest are counted, to keep the row small.
SUMMARY_COLUMNS = 20


@dataclass(frozen=True)
class ArtifactType:
    """How one kind of value is written and read.

    ``dump(value, file)`` writes to a binary file object; ``load(path, reference, store)``
    reads a local file; ``suffix(value)`` names the extension; ``summary(value)`` gives the
    small shape or schema description kept in the reference (shown without loading).
    """

    name: str
    dump: Callable[[Any, Any], Any]
    load: Callable[[str, Reference, ArtifactStore], Any]
    suffix: Callable[[Any], str]
    summary: Callable[[Any], dict]
    #: For types written as Parquet by pyarrow: the value as the Arrow table that is
    #: written (metadata included), so that the store can fingerprint it in memory and
    #: skip encoding a frame it already holds.  ``dump`` is then ``write_parquet``.
    to_arrow: Callable[[Any], Any] | None = None


def check_suffix(suffix: str) -> str:
    if not isinstance(suffix, str) or not _SUFFIX.match(suffix):
        raise ConfigurationError(
            f"artifact suffix {suffix!r}: use 1-16 lower-case letters, digits, '.', '_' or '-' "
            "with no leading dot (e.g. 'parquet', 'nc')"
        )
    return suffix


def _columns(pairs: Iterator[tuple[Any, Any]], count: int) -> dict:
    shown = {}
    for i, (name, dtype) in enumerate(pairs):
        if i == SUMMARY_COLUMNS:
            break
        shown[str(name)] = str(dtype)
    summary: dict[str, Any] = {"columns": shown}
    if count > len(shown):
        summary["more_columns"] = count - len(shown)
    return summary


# --------------------------------------------------------------------------- pandas


def _is_object(dtype: Any) -> bool:
    import numpy as np

    return isinstance(dtype, np.dtype) and dtype.kind == "O"


def _pandas_to_arrow(df: Any) -> Any:
    import pyarrow as pa

    extra: dict[str, Any] = {}
    freq = getattr(df.index, "freq", None)
    if freq is not None and not hasattr(df.index, "levels"):
        extra["freq"] = freq.freqstr
    objects = [i for i, dtype in enumerate(df.dtypes) if _is_object(dtype)]
    if objects:
        extra["object_columns"] = objects
    if _is_object(df.index.dtype) and not hasattr(df.index, "levels"):
        extra["object_index"] = True
    try:
        table = pa.Table.from_pandas(df)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise SerializationError(
            f"cannot store this pandas DataFrame as Parquet: {exc}; give every column one "
            "type (object columns of mixed values cannot be written) and unique names, "
            "register a type of your own with nbjobs.register_type, or open the app with "
            "App(..., serializer='pickle'), which pickles what Parquet cannot hold"
        ) from exc
    metadata = dict(table.schema.metadata or {})
    metadata[b"nbjobs"] = json.dumps(extra, sort_keys=True).encode()
    return table.replace_schema_metadata(metadata)


def write_parquet(table: Any, file: IO[bytes]) -> None:
    import pyarrow.parquet as pq

    pq.write_table(table, file)


def _dump_pandas(df: Any, file: IO[bytes]) -> None:
    write_parquet(_pandas_to_arrow(df), file)


def _object_column(column: Any) -> Any:
    """An Arrow column as the ``object`` array pandas had (``None`` for missing)."""
    import numpy as np
    import pyarrow as pa

    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        out = np.empty(len(column), dtype=object)
        out[:] = column.to_pylist()
        return out
    return column.to_pandas().to_numpy(dtype=object)


def _load_pandas(path: str, _ref: Reference, _store: ArtifactStore) -> Any:
    import pandas as pd
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    extra = json.loads((table.schema.metadata or {}).get(b"nbjobs", b"{}"))
    objects = {i: _object_column(table.column(i)) for i in extra.get("object_columns", ())}
    # self_destruct frees each Arrow column once converted: the peak is about one copy
    # of the frame plus one column, not two copies (pd.read_parquet keeps both).
    df = table.to_pandas(self_destruct=True, split_blocks=True)
    del table
    for position, values in objects.items():
        # a Series with dtype=object: pandas 3 would infer ``str`` from a bare array
        df.isetitem(position, pd.Series(values, index=df.index, dtype=object))
    if extra.get("object_index"):
        df.index = df.index.astype(object)
    if "freq" in extra:
        df.index = type(df.index)(df.index, freq=extra["freq"])
    return df if isinstance(df, pd.DataFrame) else pd.DataFrame(df)


def _summary_pandas(df: Any) -> dict:
    return {
        "shape": list(df.shape),
        "index": str(df.index.dtype),
        **_columns(zip(df.columns, df.dtypes, strict=True), df.shape[1]),
    }


# --------------------------------------------------------------------- polars, arrow


def _dump_polars(df: Any, file: IO[bytes]) -> None:
    df.write_parquet(file)


def _load_polars(path: str, _ref: Reference, _store: ArtifactStore) -> Any:
    import polars as pl

    return pl.read_parquet(path)


def _summary_polars(df: Any) -> dict:
    return {"shape": list(df.shape), **_columns(df.schema.items(), df.width)}


def _load_arrow(path: str, _ref: Reference, _store: ArtifactStore) -> Any:
    import pyarrow.parquet as pq

    return pq.read_table(path)


def _summary_arrow(table: Any) -> dict:
    schema = table.schema
    pairs = zip(schema.names, schema.types, strict=True)
    return {"shape": [table.num_rows, table.num_columns], **_columns(pairs, len(schema))}


# ----------------------------------------------------------------------------- numpy


def _dump_numpy(array: Any, file: IO[bytes]) -> None:
    import numpy as np

    if array.dtype.hasobject:
        raise SerializationError(
            f"cannot store a numpy array of dtype {array.dtype} (it holds Python objects, "
            "which .npy could only pickle): convert it to a numeric or string dtype, or "
            "register a type of your own with nbjobs.register_type"
        )
    np.save(file, array, allow_pickle=False)


def _load_numpy(path: str, _ref: Reference, _store: ArtifactStore) -> Any:
    import numpy as np

    return np.load(path, allow_pickle=False)


def _summary_numpy(array: Any) -> dict:
    return {"shape": list(array.shape), "dtype": str(array.dtype)}


# ----------------------------------------------------------------------------- bytes


def _dump_bytes(data: bytes, file: IO[bytes]) -> None:
    file.write(data)


def _load_bytes(path: str, _ref: Reference, _store: ArtifactStore) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# ------------------------------------------------------------------------------ File

_COPY_CHUNK = 8 * 1024 * 1024


class File:
    """A file or a folder passed as a value: stored by content, loaded as a local copy.

    ``File(path)`` is what a step returns (or a workflow takes) to hand a file on; a
    replay gets a ``File`` whose ``path`` is a private read-only copy with the same
    ``name``.  Two ``File`` values are equal when their names and contents are equal.
    """

    __slots__ = ("_digest", "name", "path")

    def __init__(self, path: str | os.PathLike[str], name: str | None = None) -> None:
        self.path = Path(path)
        self.name = name or self.path.name
        self._digest: str | None = None

    @property
    def is_dir(self) -> bool:
        return self.path.is_dir()

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        kind = "folder" if self.is_dir else "file"
        return f"nbjobs.File({str(self.path)!r}, {kind})"

    def digest(self) -> str:
        """SHA-256 of the stored form (the bytes, or the tar stream of a folder)."""
        if self._digest is None:
            from .hashing import HashingWriter

            sink = HashingWriter(None)
            _dump_file(self, sink)
            self._digest = sink.hexdigest()
        return self._digest

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, File):
            return NotImplemented
        return self.name == other.name and self.digest() == other.digest()

    def __hash__(self) -> int:
        return hash((self.name, self.digest()))


def _walk(root: Path) -> Iterator[tuple[str, Path]]:
    """``(archive name, path)`` of a folder and everything in it, in sorted order."""
    yield ".", root
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        base = Path(folder)
        for name in [*dirs, *sorted(files)]:
            path = base / name
            yield path.relative_to(root).as_posix(), path


def _dump_file(value: File, file: Any) -> None:
    if not value.path.exists():
        raise SerializationError(f"nbjobs.File: {value.path} does not exist")
    if not value.is_dir:
        with open(value.path, "rb") as source:
            shutil.copyfileobj(source, file, _COPY_CHUNK)
        return
    with tarfile.open(fileobj=file, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for arcname, path in _walk(value.path):
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                raise SerializationError(
                    f"nbjobs.File: {path} is a symbolic link or a special file; a stored "
                    "folder holds only regular files and folders"
                )
            info = tar.gettarinfo(str(path), arcname)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode &= 0o755
            if info.isfile():
                with open(path, "rb") as source:
                    tar.addfile(info, source)
            else:
                tar.addfile(info)


def _load_file(path: str, ref: Reference, store: ArtifactStore) -> File:
    """Copy (or unpack) the artifact into the cache folder once; later loads reuse it."""
    summary = ref.summary
    name = summary.get("name") or "file"
    if not isinstance(name, str) or "/" in name or name in ("", ".", ".."):
        raise ArtifactError(f"a stored File has an unsafe name {name!r}")
    digest = ref.sha256
    target = Path(store.cache_dir) / digest
    if not (target / name).exists():
        staging = Path(store.cache_dir) / f".{digest}-{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        try:
            if summary.get("folder"):
                with tarfile.open(path, mode="r:") as tar:
                    if hasattr(tarfile, "data_filter"):
                        tar.extractall(staging / name, filter="data")
                    else:  # pragma: no cover - Python before 3.10.12: our tars hold no links
                        tar.extractall(staging / name)
            else:
                shutil.copyfile(path, staging / name)
            try:
                os.replace(staging, target)
            except OSError:  # another process unpacked it first
                if not (target / name).exists():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    loaded = File(target / name, name)
    loaded._digest = digest
    return loaded


def _suffix_file(value: File) -> str:
    if value.is_dir:
        return "tar"
    suffix = value.path.suffix[1:].lower()
    return suffix if _SUFFIX.match(suffix) else "bin"


def _summary_file(value: File) -> dict:
    return {"name": value.name, "folder": value.is_dir}


# -------------------------------------------------------------------------- registry


def _fixed(suffix: str) -> Callable[[Any], str]:
    return lambda _value: suffix


#: Built-in types by (module, class name): looked up only when the module is imported.
_BUILTIN: list[tuple[str, str, ArtifactType]] = [
    (module, attr, ArtifactType(name, dump, load, _fixed(suffix), summary, arrow))
    for module, attr, name, suffix, dump, load, summary, arrow in (
        ("pandas", "DataFrame", "pandas.DataFrame", "parquet",
         _dump_pandas, _load_pandas, _summary_pandas, _pandas_to_arrow),
        ("polars", "DataFrame", "polars.DataFrame", "parquet",
         _dump_polars, _load_polars, _summary_polars, None),
        ("pyarrow", "Table", "pyarrow.Table", "parquet",
         write_parquet, _load_arrow, _summary_arrow, lambda table: table),
        ("numpy", "ndarray", "numpy.ndarray", "npy",
         _dump_numpy, _load_numpy, _summary_numpy, None),
    )
]  # fmt: skip
_BY_CLASS: dict[type, ArtifactType] = {
    bytes: ArtifactType("bytes", _dump_bytes, _load_bytes, lambda _v: "bin", lambda _v: {}),
    File: ArtifactType("nbjobs.File", _dump_file, _load_file, _suffix_file, _summary_file),
}
_BY_NAME: dict[str, ArtifactType] = {t.name: t for *_, t in _BUILTIN}
_BY_NAME.update({t.name: t for t in _BY_CLASS.values()})
#: Types users registered, matched with isinstance, the latest first.
_USER: list[tuple[type, ArtifactType]] = []
_RESOLVED = dict(_BY_CLASS)


def register_type(
    cls: type,
    dump: Callable[[Any, IO[bytes]], Any],
    load: Callable[[IO[bytes]], Any],
    suffix: str,
    *,
    name: str | None = None,
) -> None:
    """Store values of ``cls`` (and its subclasses) out of the row as ``.suffix`` files.

    ``dump(value, file)`` writes the value to a binary file object; ``load(file)`` reads
    it back from one.  ``name`` (``module.QualName`` by default) is what stored
    references record, so it must stay the same for the values to load later.  A later
    registration of the same class or name replaces the earlier one.
    """
    if not isinstance(cls, type):
        raise ConfigurationError(f"register_type needs a class, not {cls!r}")
    check_suffix(suffix)
    type_name = name or f"{cls.__module__}.{cls.__qualname__}"

    def load_path(path: str, _ref: Reference, _store: ArtifactStore) -> Any:
        with open(path, "rb") as f:
            return load(f)

    kind = ArtifactType(type_name, dump, load_path, lambda _v: suffix, lambda _v: {})
    _USER[:] = [(c, t) for c, t in _USER if c is not cls and t.name != type_name]
    _USER.insert(0, (cls, kind))
    _BY_NAME[type_name] = kind
    _RESOLVED.clear()
    _RESOLVED.update(_BY_CLASS)


def find_type(value: Any) -> ArtifactType | None:
    """The artifact type of ``value``, or None when it is not one (cheap for JSON values)."""
    cls = type(value)
    kind = _RESOLVED.get(cls)
    if kind is not None:
        return kind
    for c, user_kind in _USER:
        if isinstance(value, c):
            kind = user_kind
            break
    else:
        for module, attr, builtin in _BUILTIN:
            imported = sys.modules.get(module)
            if imported is not None and cls is getattr(imported, attr, None):
                kind = builtin
                break
    if kind is not None:
        _RESOLVED[cls] = kind
    return kind


def type_named(name: str) -> ArtifactType:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ArtifactError(
            f"no artifact type {name!r} is registered in this process; call "
            "nbjobs.register_type for it before loading"
        ) from None
