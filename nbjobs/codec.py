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
"""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
from typing import Any

from .errors import ConfigurationError, SerializationError
from .validation import check_number

_PICKLE_PREFIX = "pickle:"
DEFAULT_MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
SERIALIZERS = ("json", "pickle")


_SCALARS = frozenset({str, int, float, bool, type(None)})
_STR = frozenset({str})


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


def _refuse(value: Any) -> Any:
    raise SerializationError(
        f"cannot store a value of type {type(value).__module__}.{type(value).__qualname__} "
        "as JSON; convert it to plain lists/dicts/strings/numbers, or open the app with "
        "App(..., serializer='pickle') for trusted databases"
    )


class Codec:
    """Turns Python values into stored text and back."""

    def __init__(
        self, serializer: str = "json", max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    ) -> None:
        if serializer not in SERIALIZERS:
            raise ConfigurationError(
                f"unknown serializer {serializer!r}; choose one of {', '.join(SERIALIZERS)}"
            )
        check_number("max_payload_bytes", max_payload_bytes, positive=True, integer=True)
        self.serializer = serializer
        self.max_payload_bytes = max_payload_bytes
        # What json.dumps builds on every call with these options, built once.
        self._json = json.JSONEncoder(default=_refuse, separators=(",", ":"))

    def dumps(self, value: Any, check_keys: bool = True) -> str:
        """``value`` as stored text.  ``check_keys=False`` lets JSON turn non-string dict
        keys into strings: for text that is only hashed, never loaded back."""
        text = self._dumps(value)
        # After the encoder, which refuses cycles and deep nesting; text without a "{"
        # holds no dict (a list of numbers, say), so its walk is skipped.
        if check_keys and self.serializer == "json" and "{" in text:
            _check_keys(value)
        # JSON is written with ensure_ascii and pickle as base64: one character, one byte.
        if len(text) > self.max_payload_bytes:
            raise SerializationError(
                f"a value of type {type(value).__qualname__} takes {len(text):,} bytes stored, "
                f"over the limit of {self.max_payload_bytes:,} bytes "
                "(App(..., max_payload_bytes=...)); store big data elsewhere (a file, "
                "object storage) and pass its path"
            )
        return text

    def _dumps(self, value: Any) -> str:
        if self.serializer == "pickle":
            try:
                data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:  # pickling raises many kinds of errors
                raise SerializationError(
                    f"cannot pickle a value of type {type(value).__qualname__}: {exc}"
                ) from exc
            return _PICKLE_PREFIX + base64.b64encode(data).decode("ascii")
        try:
            return self._json.encode(value)
        except SerializationError:
            raise
        except (TypeError, ValueError, RecursionError) as exc:
            raise SerializationError(
                f"cannot store a value of type {type(value).__qualname__} as JSON: {exc}; "
                "or open the app with App(..., serializer='pickle')"
            ) from exc

    def loads(self, text: str | None) -> Any:
        if text is None:
            return None
        if text.startswith(_PICKLE_PREFIX):
            if self.serializer != "pickle":
                raise SerializationError(
                    "this value was stored with pickle; open the app with "
                    "App(..., serializer='pickle') to load it (only for trusted databases)"
                )
            try:
                return pickle.loads(base64.b64decode(text[len(_PICKLE_PREFIX) :]))
            except Exception as exc:  # unpickling raises many kinds of errors
                raise SerializationError(
                    f"a stored pickled value cannot be loaded: {type(exc).__name__}: {exc}"
                ) from exc
        try:
            return json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise SerializationError(
                f"a stored value is not valid JSON ({type(exc).__name__}: {exc}); the row "
                f"was written by something other than nbjobs: {text[:60]!r}"
            ) from exc


def digest(text: str | bytes) -> str:
    """A short stable hash, for argument hashes and code fingerprints."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:16]
