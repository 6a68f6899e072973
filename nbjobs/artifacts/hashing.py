"""Hashing for the artifact store: digests of what is written, as it is written, and
fingerprints of Arrow tables computed from memory.

* :class:`HashingWriter`: a sink that hashes what passes through it;
* :class:`TailHasher`: hashes a file in a second thread while it is being written;
* :func:`arrow_fingerprint`: SHA-256 of a table's Arrow IPC stream, so that storing an
  equal table again costs one hash instead of a Parquet encoding;
* :func:`quick_print`: a cheap print (schema, length, the ends of each buffer) that says
  a table was probably stored before.
"""

from __future__ import annotations

import hashlib
import threading
from typing import IO, Any

from ..errors import ArtifactError

#: Bytes read or hashed at a time.
CHUNK = 8 * 1024 * 1024


class HashingWriter:
    """A write-only binary file that hashes what passes through (to ``target`` or nowhere).

    It has what pyarrow, numpy and tarfile ask of a sink: ``write``, ``tell``, ``flush``
    and ``closed``.
    """

    def __init__(self, target: IO[bytes] | None) -> None:
        self._target = target
        self._hash = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        if self._target is not None:
            self._target.write(view)
        self._hash.update(view)
        self.size += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        if self._target is not None:
            self._target.flush()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class TailHasher:
    """Hashes a file in a second thread while this one appends to it.

    Parquet encoding and SHA-256 each take a core; run one after the other, hashing would
    add most of the encoding time again.  The hasher reads what the writer has already
    handed to the OS (from the page cache: no second in-memory copy of the value) and
    stops at the end of the file once :meth:`finish` says the writer is done.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._done = threading.Event()
        self._result: tuple[str, int] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="nbjobs-artifact-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            digest = hashlib.sha256()
            size = 0
            buffer = bytearray(CHUNK)
            view = memoryview(buffer)
            with open(self._path, "rb", buffering=0) as f:
                while True:
                    finished = self._done.is_set()  # before the read: then EOF is the end
                    n = f.readinto(buffer)
                    if n:
                        digest.update(view[:n])
                        size += n
                    elif finished:
                        break
                    else:
                        self._done.wait(0.002)
            self._result = (digest.hexdigest(), size)
        except BaseException as exc:  # re-raised in the writer's thread
            self._error = exc

    def abandon(self) -> None:
        self._done.set()
        self._thread.join()

    def finish(self, size: int) -> str:
        """The digest, once everything written (``size`` bytes, flushed) is hashed."""
        self._done.set()
        self._thread.join()
        if self._error is not None:
            raise ArtifactError(f"cannot hash {self._path}: {self._error}") from self._error
        assert self._result is not None
        digest, hashed = self._result
        if hashed != size:
            raise ArtifactError(f"hashed {hashed:,} bytes of {self._path}, not {size:,}")
        return digest


def arrow_fingerprint(table: Any) -> str:
    """SHA-256 of an Arrow table's IPC stream: its schema (metadata included) and data,
    computed from memory without encoding Parquet."""
    import pyarrow as pa

    sink = HashingWriter(None)
    sink.write(b"nbjobs arrow fingerprint 1\0")
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.hexdigest()


def quick_print(table: Any) -> str:
    """A cheap print of an Arrow table: its schema, its length and the first and last
    64 KiB of each column's buffers.  Equal tables have equal prints; a print seen before
    makes ``write_arrow`` expect a hit."""
    digest = hashlib.sha256(b"nbjobs quick print 1\0")
    digest.update(table.schema.serialize())
    digest.update(str(table.num_rows).encode())
    for column in table.columns:
        chunks = column.chunks
        for chunk in chunks[:1] + chunks[-1:] if len(chunks) > 1 else chunks:
            for buffer in chunk.buffers():
                if buffer is not None:
                    view = memoryview(buffer)
                    digest.update(view[:65536])
                    digest.update(view[-65536:])
    return digest.hexdigest()


def hash_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
