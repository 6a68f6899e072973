"""How values are stored: JSON by default, pickle when the app opts in.

Stored text carries its codec: JSON text as is, pickle as ``pickle:`` plus base64.  An app
that did not opt into pickle refuses to load pickled text, so a database written by
someone else cannot run code in this process.
"""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
from typing import Any

from .errors import ConfigurationError, SerializationError

_PICKLE_PREFIX = "pickle:"
SERIALIZERS = ("json", "pickle")


def _refuse(value: Any) -> Any:
    raise SerializationError(
        f"cannot store a value of type {type(value).__module__}.{type(value).__qualname__} "
        "as JSON; convert it to plain lists/dicts/strings/numbers, or open the app with "
        "App(..., serializer='pickle') for trusted databases"
    )


class Codec:
    """Turns Python values into stored text and back."""

    def __init__(self, serializer: str = "json") -> None:
        if serializer not in SERIALIZERS:
            raise ConfigurationError(
                f"unknown serializer {serializer!r}; choose one of {', '.join(SERIALIZERS)}"
            )
        self.serializer = serializer

    def dumps(self, value: Any) -> str:
        if self.serializer == "pickle":
            try:
                data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:  # pickling raises many kinds of errors
                raise SerializationError(
                    f"cannot pickle a value of type {type(value).__qualname__}: {exc}"
                ) from exc
            return _PICKLE_PREFIX + base64.b64encode(data).decode("ascii")
        try:
            return json.dumps(value, default=_refuse, separators=(",", ":"))
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
            return pickle.loads(base64.b64decode(text[len(_PICKLE_PREFIX) :]))
        return json.loads(text)


def digest(text: str | bytes) -> str:
    """A short stable hash, for argument hashes and code fingerprints."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:16]
