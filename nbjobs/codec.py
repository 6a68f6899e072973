"""How values are stored: JSON by default, pickle when the app opts in.

Stored text carries its codec: JSON text as is, pickle as ``pickle:`` plus base64.  An app
that did not opt into pickle refuses to load pickled text, so a database written by
someone else cannot run code in this process.

JSON and non-finite floats: NaN, Infinity and -Infinity round-trip (Python's ``json``
writes and reads the ``NaN``/``Infinity`` tokens), so a step that returns ``float("nan")``
replays the same value.  The stored text is then not strict JSON, which matters only to
tools other than nbjobs that read the columns.

JSON and dict keys: only string keys are stored.  A dict with an int, float, bool or None
key is refused with a :class:`SerializationError`, because JSON would turn the key into a
string and the value would come back different (colliding keys would lose data).  Tuples
come back as lists.

Every stored value is bounded by ``max_payload_bytes`` (``App(max_payload_bytes=...)``,
16 MiB by default): one limit for inputs, checkpoints, results and signal payloads, so a
runaway value fails where it is made with a :class:`SerializationError` naming the limit,
instead of bloating the database or timing out a transaction.

Artifacts (``Codec(..., artifacts=ArtifactStore(...))``): a value of an artifact type
(a DataFrame, an Arrow table, a numpy array, ``bytes``, ``nbjobs.File``...; see
:mod:`nbjobs.artifacts`), at the top or nested in lists and dicts, is written to the
store and the text keeps ``{"__nbjobs_artifact__": {...reference...}}`` in its place;
stored text longer than ``inline_bytes`` goes to the store as a whole.  The limit
``max_payload_bytes`` then applies to what stays in the row.  A user dict with the key
``__nbjobs_artifact__`` is refused, with or without a store, so a reference cannot be
forged.  Without a store, values with no JSON form are refused as before.  Text with no
reference in it costs one substring test more than before, on dumps and loads.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import pickle
import re
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from .errors import ArtifactError, ConfigurationError, SerializationError
from .validation import check_number

if TYPE_CHECKING:
    from .artifacts.store import ArtifactStore

_PICKLE_PREFIX = "pickle:"
DEFAULT_MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
SERIALIZERS = ("json", "pickle")


_SCALARS = frozenset({str, int, float, bool, type(None)})
#: ``Codec.loads_again`` keeps at most this many scalars, of texts this long at most.
_SCALAR_TEXTS = 4096
_SCALAR_TEXT_CHARS = 256
_UNKNOWN: Any = object()
_STR = frozenset({str})
_MARKER = "__nbjobs_artifact__"
_QUOTED_MARKER = f'"{_MARKER}"'
DEFAULT_INLINE_BYTES = 256 * 1024


def _check_keys(value: Any) -> None:
    """Refuse a dict key that is not a string, anywhere in ``value``.

    ``json`` turns int, float, bool and None keys into strings without a word: the value
    would come back different (``d[1]`` a KeyError far from the cause), and ``{1: "a",
    "1": "b"}`` would lose an entry.  ``default=`` never sees keys, hence this walk.  It
    stays cheap: the types of a container's members are compared as a set in C, and only
    members that are themselves containers (or unusual objects) are visited in Python.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if not _STR.issuperset(map(type, item)):
                for key in item:
                    if not isinstance(key, str):
                        raise SerializationError(
                            f"cannot store a dict with a key of type {type(key).__qualname__} "
                            f"({key!r}) as JSON: JSON keys are strings, so it would come back "
                            f"as {json.dumps(key)!r} (and keys that collide would be lost); "
                            "convert the keys to str yourself, store a list of pairs, or open "
                            "the app with App(..., serializer='pickle') for trusted databases"
                        )
            members: Any = item.values()
        elif isinstance(item, (list, tuple)):
            members = item
        else:
            continue
        if not _SCALARS.issuperset(map(type, members)):
            stack.extend(m for m in members if type(m) not in _SCALARS)


def _flat_encoder(encoder: json.JSONEncoder) -> Any:
    """``encoder``'s C encoder, made once and without the cycle check, for values whose
    only containers are a top-level dict or list and the lists and dicts right in it:
    None where the C encoder is missing or differs from ``encoder`` (another Python)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython has it
        return None
    try:
        flat = make(
            None,  # no cycle check: a flat value has no cycle
            encoder.default,
            json.encoder.encode_basestring_ascii
            if encoder.ensure_ascii
            else json.encoder.encode_basestring,
            encoder.indent,
            encoder.key_separator,
            encoder.item_separator,
            encoder.sort_keys,
            encoder.skipkeys,
            encoder.allow_nan,
        )
        sample = {"args": [1, -2.5, float("nan"), 'é\n"', True, None], "kwargs": {"k": "v"}}
        if "".join(flat(sample, 0)) != encoder.encode(sample):  # pragma: no cover
            return None
    except Exception:  # pragma: no cover - a C encoder of another signature
        return None
    return flat


def _check_marker(value: Any) -> None:
    """Refuse a user dict keyed ``__nbjobs_artifact__``: loads would take it for a reference."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if _MARKER in item:
                raise SerializationError(
                    f"cannot store a dict with the key {_MARKER!r}: nbjobs reserves it for "
                    "references to artifacts; rename the key"
                )
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def _refuse(value: Any) -> NoReturn:
    raise SerializationError(
        f"cannot store a value of type {type(value).__module__}.{type(value).__qualname__} "
        "as JSON; convert it to plain lists/dicts/strings/numbers, or open the app with "
        "App(..., serializer='pickle') for trusted databases"
    )


class Codec:
    """Turns Python values into stored text and back."""

    def __init__(
        self,
        serializer: str = "json",
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        artifacts: ArtifactStore | None = None,
        inline_bytes: int = DEFAULT_INLINE_BYTES,
    ) -> None:
        self.check(serializer, max_payload_bytes, inline_bytes)
        self.serializer = serializer
        self.max_payload_bytes = max_payload_bytes
        self.artifacts = artifacts
        self.inline_bytes = inline_bytes
        self._local = threading.local()  # the memo of dumps_as_stored, per thread
        #: Short texts of scalars ``loads_again`` loaded: text -> the scalar.
        self._scalars: dict[str, Any] = {}
        # What json.dumps builds on every call with these options, built once.
        self._json = json.JSONEncoder(
            default=_refuse if artifacts is None else self._out_of_row, separators=(",", ":")
        )
        #: JSON of a value without containers below its top-level list and dict (the
        #: input of most submits), from a C encoder made once; see ``dumps_input``.
        self._flat = _flat_encoder(self._json) if serializer == "json" else None
        # For text that is only hashed: an artifact is digested, not written.
        self._json_digest = (
            self._json
            if artifacts is None
            else json.JSONEncoder(default=_digest_artifact, separators=(",", ":"))
        )

    @staticmethod
    def check(serializer: str, max_payload_bytes: int, inline_bytes: int) -> None:
        """Refuse a bad setting (an App checks its options before it connects)."""
        if serializer not in SERIALIZERS:
            raise ConfigurationError(
                f"unknown serializer {serializer!r}; choose one of {', '.join(SERIALIZERS)}"
            )
        check_number("max_payload_bytes", max_payload_bytes, positive=True, integer=True)
        check_number("inline_bytes", inline_bytes, positive=True, integer=True)

    def dumps_as_stored(self, value: Any) -> tuple[str, Any]:
        """``value``'s stored text and the value a replay of it returns, without reading
        back what was just written: artifacts come back as the objects given (equal to
        what a load returns), spilled text is parsed from memory."""
        if type(value) in _SCALARS:
            # A scalar comes back as itself (JSON and pickle alike): no parse.
            return self.dumps(value), value
        memo: dict[str, Any] = {}
        self._local.memo = memo
        try:
            text = self.dumps(value)
        finally:
            self._local.memo = None
        return text, self.loads(text, memo=memo or None)

    def dumps(self, value: Any, check_keys: bool = True) -> str:
        """``value`` as stored text.  ``check_keys=False`` lets JSON turn non-string dict
        keys into strings: for text that is only hashed, never loaded back."""
        text = self._dumps(value, check_keys)
        # After the encoder, which refuses cycles and deep nesting; text without a "{"
        # holds no dict (a list of numbers, say), so its walk is skipped.
        if check_keys and self.serializer == "json" and "{" in text:
            _check_keys(value)
            if _QUOTED_MARKER in text:
                _check_marker(value)
        return self._bounded(text, value, check_keys)

    def dumps_input(self, args: Any, kwargs: dict[str, Any]) -> str:
        """A job's input, ``{"args": [...], "kwargs": {...}}``, as stored text: what
        ``dumps`` makes of it.

        When every argument is a str, int, float, bool or None (a sweep's usual ones),
        the value holds no cycle, no artifact and no dict but its own two, whose keys
        are strings: its JSON comes from an encoder made once, without the walks of
        ``dumps``, in a third of the time (a ``submit_many`` of 100,000 specs encodes
        each one).  Anything else goes through ``dumps``.
        """
        values = list(args)
        value = {"args": values, "kwargs": kwargs}
        flat = self._flat
        if (
            flat is not None
            and _SCALARS.issuperset(map(type, values))
            and (
                not kwargs
                or (
                    _STR.issuperset(map(type, kwargs))
                    and _SCALARS.issuperset(map(type, kwargs.values()))
                )
            )
        ):
            text = "".join(flat(value, 0))
            if _QUOTED_MARKER not in text:  # else a kwarg named so: dumps refuses it
                if self.artifacts is None and len(text) <= self.max_payload_bytes:
                    return text
                return self._bounded(text, value, True)
        return self.dumps(value)

    def _bounded(self, text: str, value: Any, check_keys: bool) -> str:
        """``text``, spilled to the artifact store when it is too long for the row;
        refused when what stays in the row is over ``max_payload_bytes``."""
        if check_keys and self.artifacts is not None and len(text) > self.inline_bytes:
            text = self._spill(text, _digests_in(text))
        # JSON is written with ensure_ascii and pickle as base64: one character, one byte.
        if len(text) > self.max_payload_bytes:
            raise SerializationError(
                f"a value of type {type(value).__qualname__} takes {len(text):,} bytes stored, "
                f"over the limit of {self.max_payload_bytes:,} bytes "
                "(App(..., max_payload_bytes=...)); store big data elsewhere (a file, "
                "object storage) and pass its path"
            )
        return text

    def _dumps(self, value: Any, check_keys: bool = True) -> str:
        if self.serializer == "pickle":
            try:
                data = self._pickle(value, written=check_keys)
            except (SerializationError, ArtifactError):
                raise
            except Exception as exc:  # pickling raises many kinds of errors
                raise SerializationError(
                    f"cannot pickle a value of type {type(value).__qualname__}: {exc}"
                ) from exc
            return _PICKLE_PREFIX + base64.b64encode(data).decode("ascii")
        try:
            return (self._json if check_keys else self._json_digest).encode(value)
        except SerializationError:
            raise
        except (TypeError, ValueError, RecursionError) as exc:
            raise SerializationError(
                f"cannot store a value of type {type(value).__qualname__} as JSON: {exc}; "
                "or open the app with App(..., serializer='pickle')"
            ) from exc

    # ------------------------------------------------------------------ artifacts

    def _out_of_row(self, value: Any) -> Any:
        """The JSON encoder's ``default``: an artifact type goes to the store."""
        from .artifacts.reference import store_value
        from .artifacts.types import find_type

        kind = find_type(value)
        if kind is None:
            _refuse(value)
        assert self.artifacts is not None
        ref = store_value(value, self.artifacts, kind)
        memo = getattr(self._local, "memo", None)
        if memo is not None:
            memo[ref.sha256] = value
        return {_MARKER: ref.to_dict()}

    def _spill(self, text: str, nested: list[str]) -> str:
        """Stored text too long for the row, replaced by a reference to it.  The
        reference lists the artifacts ``nested`` in the text, so that the row alone
        says everything it keeps alive (see :mod:`nbjobs.artifacts.sweep`)."""
        from .artifacts.reference import JSON_TYPE, PICKLE_TYPE, store_text

        assert self.artifacts is not None
        if text.startswith(_PICKLE_PREFIX):
            data = base64.b64decode(text[len(_PICKLE_PREFIX) :])
            ref = store_text(data, self.artifacts, PICKLE_TYPE, nested)
        else:
            ref = store_text(text, self.artifacts, JSON_TYPE, nested)
        memo = getattr(self._local, "memo", None)
        if memo is not None:
            memo[ref.sha256] = _Spilled(text)
        return self._json.encode({_MARKER: ref.to_dict()})

    def _pickle(self, value: Any, written: bool) -> bytes:
        if self.artifacts is None:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        buffer = io.BytesIO()
        _ArtifactPickler(buffer, self, written).dump(value)
        return buffer.getvalue()

    def _unpickle(self, data: bytes, memo: dict | None = None) -> Any:
        if self.artifacts is None:
            return pickle.loads(data)
        return _ArtifactUnpickler(io.BytesIO(data), self, memo).load()

    def _reference(self, ref: dict, memo: dict | None = None) -> Any:
        """The value a stored reference names (``json.loads``' object hook); ``memo``:
        values just written, by digest (see :meth:`dumps_as_stored`)."""
        from .artifacts.reference import PICKLE_TYPE, Reference, decode, read_bytes

        if self.artifacts is None:
            raise ArtifactError(
                f"this value is stored in an artifact store ({ref.get('uri', '?')}); open "
                "the app with its artifact store to load it"
            )
        reference = Reference.from_dict(ref)
        if memo is not None and reference.sha256 in memo:
            value = memo[reference.sha256]
            if not isinstance(value, _Spilled):
                return value
            if reference.type == PICKLE_TYPE:
                return self._unpickle_loaded(base64.b64decode(value[len(_PICKLE_PREFIX) :]), memo)
            return self.loads(value, memo=memo)
        if reference.type == PICKLE_TYPE:
            self._allow_pickle()
            return self._unpickle_loaded(read_bytes(reference, self.artifacts))
        return decode(reference, self.artifacts, self.loads)

    def _hook(self, obj: dict, memo: dict | None = None) -> Any:
        if len(obj) == 1 and _MARKER in obj:
            return self._reference(obj[_MARKER], memo)
        return obj

    def _allow_pickle(self) -> None:
        if self.serializer != "pickle":
            raise SerializationError(
                "this value was stored with pickle; open the app with "
                "App(..., serializer='pickle') to load it (only for trusted databases)"
            )

    def _unpickle_loaded(self, data: bytes, memo: dict | None = None) -> Any:
        try:
            return self._unpickle(data, memo)
        except (ArtifactError, SerializationError):
            raise
        except Exception as exc:  # unpickling raises many kinds of errors
            raise SerializationError(
                f"a stored pickled value cannot be loaded: {type(exc).__name__}: {exc}"
            ) from exc

    def loads(self, text: str | None, *, where: str | None = None, memo: dict | None = None) -> Any:
        """The value of stored text.  ``where`` names what is loaded ("job X, checkpoint
        'load'") in an :class:`ArtifactError`: a missing or corrupt artifact is reported
        with the job and step it belongs to, not only its URI."""
        if where is None:
            return self._loads(text, memo)
        try:
            return self._loads(text, memo)
        except ArtifactError as exc:
            raise ArtifactError(f"{where}: {exc}") from exc

    def loads_again(self, text: str | None) -> Any:
        """``loads`` for a text loaded again and again (a cache hit's): a scalar comes
        back as itself, so a short text of one is parsed once, then looked up."""
        if text is None:
            return None
        value = self._scalars.get(text, _UNKNOWN)
        if value is _UNKNOWN:
            value = self._loads(text, None)
            if (
                type(value) in _SCALARS
                and len(text) <= _SCALAR_TEXT_CHARS
                and len(self._scalars) < _SCALAR_TEXTS
            ):
                self._scalars[text] = value
        return value

    def _loads(self, text: str | None, memo: dict | None) -> Any:
        if text is None:
            return None
        if text.startswith(_PICKLE_PREFIX):
            self._allow_pickle()
            return self._unpickle_loaded(base64.b64decode(text[len(_PICKLE_PREFIX) :]), memo)
        try:
            if _QUOTED_MARKER in text:
                hook = self._hook if memo is None else lambda obj: self._hook(obj, memo)
                return json.loads(text, object_hook=hook)
            return json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise SerializationError(
                f"a stored value is not valid JSON ({type(exc).__name__}: {exc}); the row "
                f"was written by something other than nbjobs: {text[:60]!r}"
            ) from exc


#: What every stored reference holds: the store finds the rows that keep artifacts by it.
ARTIFACT_MARKER = _MARKER
_NESTED_DIGEST = re.compile(r"sha256.{1,6}?([0-9a-f]{64})", re.DOTALL)


def _digests_in(text: str) -> list[str]:
    """The digests of the artifacts referenced in stored text (JSON or pickle)."""
    if text.startswith(_PICKLE_PREFIX):
        data = base64.b64decode(text[len(_PICKLE_PREFIX) :]).decode("latin-1")
        return sorted(set(_NESTED_DIGEST.findall(data)))
    if _QUOTED_MARKER not in text:
        return []
    return sorted(set(_NESTED_DIGEST.findall(text)))


def _digest_artifact(value: Any) -> Any:
    """For hashed-only text: an artifact type's digest stands for it, nothing is written
    (an Arrow-backed frame is fingerprinted in memory, not encoded)."""
    from .artifacts.hashing import HashingWriter, arrow_fingerprint
    from .artifacts.types import find_type

    kind = find_type(value)
    if kind is None:
        _refuse(value)
    if kind.to_arrow is not None:
        return {
            _MARKER: {"type": kind.name, "fingerprint": arrow_fingerprint(kind.to_arrow(value))}
        }
    sink = HashingWriter(None)
    kind.dump(value, sink)
    return {_MARKER: {"type": kind.name, "sha256": sink.hexdigest()}}


class _ArtifactPickler(pickle.Pickler):
    """Pickles with artifact types written to the store (or only digested)."""

    def __init__(self, file: io.BytesIO, codec: Codec, written: bool) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._codec = codec
        self._written = written

    def persistent_id(self, obj: Any) -> Any:
        from .artifacts.types import find_type

        if type(obj) in _SCALARS or isinstance(obj, (list, dict, tuple)):
            return None
        if find_type(obj) is None:
            return None
        try:
            if self._written:
                return (_MARKER, self._codec._out_of_row(obj)[_MARKER])
            return (_MARKER, _digest_artifact(obj)[_MARKER])
        except SerializationError:
            # No typed form (a frame with a column of mixed objects, say): this app
            # opted into pickle, so the value is pickled like any other object.
            return None


class _ArtifactUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, codec: Codec, memo: dict | None) -> None:
        super().__init__(file)
        self._codec = codec
        self._memo = memo

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 2 and pid[0] == _MARKER):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.80}")
        return self._codec._reference(pid[1], self._memo)


class _Spilled(str):
    """Stored text written out of the row (in a :meth:`Codec.dumps_as_stored` memo)."""


def open_artifacts(
    location: str | os.PathLike[str] | bool | None,
    options: Mapping[str, Any] | None,
    *,
    db_url: str,
    fsync: bool,
) -> ArtifactStore | None:
    """The artifact store of an app (``App(artifacts=..., artifacts_options=...)``):
    ``None`` for ``NBJOBS_ARTIFACTS`` if set, else the default folder beside the
    database; ``False`` for none (values with no JSON form are then refused, as before
    artifacts).  A store is lazy: it touches no file and imports no fsspec until the
    first artifact."""
    from .artifacts import ArtifactStore, default_location

    if location is False:
        if options:
            raise ConfigurationError("artifacts_options given with artifacts=False")
        return None
    if location is None:
        location = os.environ.get("NBJOBS_ARTIFACTS") or None
    if location is True or location is None:
        location = default_location(db_url)
    if not isinstance(location, (str, os.PathLike)):
        raise ConfigurationError(
            "artifacts must be a folder, an fsspec URL (s3://bucket/prefix), False or "
            f"None, not a {type(location).__name__}"
        )
    opts = dict(options or {})
    opts.setdefault("fsync", fsync)
    return ArtifactStore(location, **opts)


def digest(text: str | bytes) -> str:
    """A short stable hash, for argument hashes and code fingerprints."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:16]
