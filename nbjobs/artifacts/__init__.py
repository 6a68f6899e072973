"""Values stored out of the database row: DataFrames, arrays, bytes, files, big JSON.

* :mod:`.types`: which values are artifacts and how each is written (the registry,
  :class:`File`, :func:`register_type`);
* :mod:`.store`: :class:`ArtifactStore`, content-addressed and crash-safe on any fsspec
  URL;
* :mod:`.reference`: the small JSON reference a row keeps, :func:`encode` and
  :func:`decode`;
* :mod:`.location`: the default folder and the several-hosts check.

Importing this package imports no optional library: pandas, pyarrow, polars, numpy and
fsspec are imported when a value of theirs is stored or a store is opened.
"""

from .location import check_hosts, default_location, is_private_folder
from .reference import INLINE_BYTES, MARKER, Reference, decode, encode, store_text, store_value
from .store import ArtifactStore
from .types import File, find_type, register_type

__all__ = [
    "INLINE_BYTES",
    "MARKER",
    "ArtifactStore",
    "File",
    "Reference",
    "check_hosts",
    "decode",
    "default_location",
    "encode",
    "find_type",
    "is_private_folder",
    "register_type",
    "store_text",
    "store_value",
]
