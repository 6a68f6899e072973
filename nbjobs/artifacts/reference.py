"""What a database row holds for a value stored out of it: a small JSON reference.

In stored JSON an artifact is the one-key object ``{"__nbjobs_artifact__": {...}}``;
the inner object is a :class:`Reference` (type, digest, size, suffix, URI and a
shape/schema summary, a few hundred bytes).  User JSON cannot forge one: the codec
refuses a user dict with the key ``__nbjobs_artifact__``.  And a reference never says
*where* to read: the path is derived from the digest and a validated suffix inside the
app's own store, so a row written by someone else can at most name an artifact that
store already holds, and the loaded bytes must match the digest.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ArtifactError, SerializationError
from .store import SHA256_PATTERN
from .types import ArtifactType, check_suffix, find_type, type_named, write_parquet

if TYPE_CHECKING:
    from .store import ArtifactStore

MARKER = "__nbjobs_artifact__"
#: Stored JSON text longer than this goes out of the row (when an artifact store is set).
INLINE_BYTES = 256 * 1024
#: The type names of stored text spilled out of the row (not in the type registry).
JSON_TYPE = "json"
PICKLE_TYPE = "pickle"


@dataclass(frozen=True)
class Reference:
    """A stored artifact: enough to show it (type, size, shape) without loading it."""

    type: str
    sha256: str
    size: int
    suffix: str
    uri: str
    summary: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...] | None:
        shape = self.summary.get("shape")
        return tuple(shape) if shape is not None else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type,
            "sha256": self.sha256,
            "size": self.size,
            "suffix": self.suffix,
            "uri": self.uri,
        }
        if self.summary:
            out["summary"] = self.summary
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Reference:
        """A reference read from a row, checked: a malformed one raises ArtifactError."""
        if isinstance(data, dict) and set(data) == {MARKER}:
            data = data[MARKER]
        try:
            ref = cls(
                type=data["type"],
                sha256=data["sha256"],
                size=data["size"],
                suffix=data["suffix"],
                uri=data.get("uri", ""),
                summary=data.get("summary") or {},
            )
            valid = (
                isinstance(ref.type, str)
                and isinstance(ref.sha256, str)
                and SHA256_PATTERN.match(ref.sha256) is not None
                and isinstance(ref.size, int)
                and isinstance(ref.summary, dict)
                and check_suffix(ref.suffix) == ref.suffix
            )
        except Exception as exc:
            raise ArtifactError(f"a stored artifact reference is malformed: {data!r:.200}") from exc
        if not valid:
            raise ArtifactError(f"a stored artifact reference is malformed: {data!r:.200}")
        return ref

    def load(self, store: ArtifactStore, loads: Callable[[str], Any] | None = None) -> Any:
        return decode(self, store, loads)


def store_value(value: Any, store: ArtifactStore, kind: ArtifactType | None = None) -> Reference:
    """Write ``value`` (of a registered artifact type) to ``store``."""
    kind = kind or find_type(value)
    if kind is None:
        raise SerializationError(f"a value of type {type(value).__qualname__} is no artifact type")
    suffix = kind.suffix(value)
    summary = kind.summary(value)
    try:
        if isinstance(value, bytes):
            sha, size = store.write_bytes(value, suffix)
        elif kind.to_arrow is not None:
            sha, size = store.write_arrow(kind.to_arrow(value), suffix, write_parquet)
        else:
            sha, size = store.write(lambda f: kind.dump(value, f), suffix)
    except ImportError as exc:
        raise SerializationError(
            f"storing a {kind.name} needs {exc.name or 'an optional library'}: "
            "pip install 'nbjobs[artifacts]'"
        ) from exc
    return Reference(kind.name, sha, size, suffix, store.uri(sha, suffix), summary)


def store_text(
    text: str | bytes,
    store: ArtifactStore,
    type_name: str = JSON_TYPE,
    nested: list[str] | None = None,
) -> Reference:
    """Stored text too long for a row (JSON, or raw pickle bytes); ``nested``: the
    digests of the artifacts it references, listed in the reference's summary
    (``refs``) so that a sweep sees them without reading the text."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    suffix = "json" if type_name == JSON_TYPE else "pkl"
    sha, size = store.write_bytes(data, suffix)
    summary = {"refs": nested} if nested else {}
    return Reference(type_name, sha, size, suffix, store.uri(sha, suffix), summary)


def read_bytes(ref: Reference, store: ArtifactStore) -> bytes:
    def read(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    return store.read(ref.sha256, ref.suffix, read)


def _json_loads(text: str, store: ArtifactStore) -> Any:
    def hook(obj: dict) -> Any:
        return decode(obj[MARKER], store) if len(obj) == 1 and MARKER in obj else obj

    return json.loads(text, object_hook=hook)


def encode(value: Any, store: ArtifactStore, inline_bytes: int = INLINE_BYTES) -> dict | None:
    """The row form (``{MARKER: reference}``) of ``value``, or None when it stays inline:
    it is no artifact type and its JSON (artifacts nested in it written out) is at most
    ``inline_bytes`` long.  Callers with their own JSON encoder use :func:`store_value`."""
    kind = find_type(value)
    if kind is not None:
        return {MARKER: store_value(value, store, kind).to_dict()}

    def nested(item: Any) -> Any:
        found = find_type(item)
        if found is None:
            raise SerializationError(f"cannot store a value of type {type(item).__qualname__}")
        return {MARKER: store_value(item, store, found).to_dict()}

    text = json.dumps(value, default=nested, separators=(",", ":"))
    if len(text) <= inline_bytes:
        return None
    return {MARKER: store_text(text, store).to_dict()}


def decode(
    ref: Reference | dict, store: ArtifactStore, loads: Callable[[str], Any] | None = None
) -> Any:
    """The value a reference names, loaded from ``store`` and verified.  ``loads`` reads
    spilled JSON text (default: JSON with nested references decoded)."""
    if not isinstance(ref, Reference):
        ref = Reference.from_dict(ref)
    if ref.type == JSON_TYPE:
        text = read_bytes(ref, store).decode("utf-8", "surrogatepass")
        return loads(text) if loads is not None else _json_loads(text, store)
    if ref.type == PICKLE_TYPE:
        raise ArtifactError(
            f"artifact {ref.uri} holds a pickled value; only an app opened with "
            "serializer='pickle' loads it"
        )
    kind = type_named(ref.type)
    return store.read(ref.sha256, ref.suffix, lambda path: kind.load(path, ref, store))


# ---------------------------------------------------------------- listing references

_PICKLE_PREFIX = "pickle:"


class _Opaque:
    """What a pickled object becomes while references are listed: nothing is imported
    or run, the object only keeps what it was built from (so references inside it are
    found)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.parts: list[Any] = [args, kwargs]

    def __setstate__(self, state: Any) -> None:
        self.parts.append(state)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.parts.append((key, value))

    def append(self, item: Any) -> None:
        self.parts.append(item)

    def extend(self, items: Any) -> None:
        self.parts.extend(items)

    def add(self, item: Any) -> None:
        self.parts.append(item)


class _Lister(pickle.Unpickler):
    """Reads a pickle without importing a class: every global is :class:`_Opaque`, and a
    persistent id (an artifact) becomes its ``{MARKER: reference}`` dict."""

    def find_class(self, module: str, name: str) -> Any:
        return _Opaque

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) == 2 and pid[0] == MARKER:
            return {MARKER: pid[1]}
        return None


def find_references(text: str | None) -> list[tuple[str, Reference]]:
    """Every artifact reference in stored text, with where it sits in the value (``""``
    for the whole value, else a subscript such as ``['frame']`` or ``[0]``), in order and
    without loading an artifact or running a pickle's code.

    Only what the row holds is listed: references nested in JSON that was spilled out of
    the row as a whole are in that file, so the spilled file's own reference (type
    ``json``) stands for them.  Text that does not parse and malformed references are
    skipped: a listing must not fail on one odd row.
    """
    if not text:
        return []
    try:
        if text.startswith(_PICKLE_PREFIX):
            data = base64.b64decode(text[len(_PICKLE_PREFIX) :])
            if MARKER.encode() not in data:
                return []
            value = _Lister(io.BytesIO(data)).load()
        elif MARKER not in text:
            return []
        else:
            value = json.loads(text)
    except Exception:  # text written by others: list nothing, never fail
        return []
    found: list[tuple[str, Reference]] = []
    stack: list[tuple[str, Any]] = [("", value)]
    seen: set[int] = set()  # a pickle may share an object, or hold a cycle: walk it once
    while stack:
        where, item = stack.pop()
        if id(item) in seen:
            continue
        if isinstance(item, (dict, list, tuple, set, frozenset, _Opaque)):
            seen.add(id(item))
        children: list[tuple[str, Any]] = []
        if isinstance(item, dict):
            if len(item) == 1 and MARKER in item:
                try:
                    found.append((where, Reference.from_dict(item[MARKER])))
                except ArtifactError:
                    pass
                continue
            children = [(f"{where}[{k!r}]", v) for k, v in item.items()]
        elif isinstance(item, (list, tuple)):
            children = [(f"{where}[{i}]", v) for i, v in enumerate(item)]
        elif isinstance(item, (set, frozenset)):
            children = [(f"{where}{{...}}", v) for v in item]
        elif isinstance(item, _Opaque):
            children = [(f"{where}.<{i}>", v) for i, v in enumerate(item.parts)]
        stack.extend(reversed(children))
    return found
