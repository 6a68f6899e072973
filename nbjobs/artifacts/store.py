"""A content-addressed artifact store in a local folder or on any fsspec URL.

An artifact's name is the SHA-256 of its bytes: ``<root>/<sha[:2]>/<sha>.<suffix>``.
Writes are crash-safe: the bytes go to a temporary name and only a complete file is
renamed (a local folder) or uploaded in one request (object storage: a single PUT, or a
multipart upload, which S3 also makes visible only when complete), so a SIGKILL at any
moment leaves at most a temporary file, never a partial file under a final name.  The
digest is computed by a second thread reading the temporary file behind the writer
(from the page cache), never on a second in-memory copy.  Object storage is written
through a local spool file (``cache_dir``), since the name is known only at the end.

A digest already stored is not written again: equal content is stored once.  An Arrow
table (a pandas frame converted) is also fingerprinted in memory (SHA-256 of its Arrow
IPC stream) beside the Parquet write; ``fingerprints/`` maps a fingerprint to the digest
it was stored under, so storing the same frame again stops the write and costs about
one hash.  A fingerprint entry whose artifact is gone is ignored.  Loads
verify the digest (on a local folder concurrently with parsing, so the check costs
little wall time); a missing or corrupt artifact raises :class:`nbjobs.ArtifactError`
naming its URI, and a corrupt file is moved aside (``*.corrupt-<time>``; deleted on
object storage) so that recomputing the step writes it anew.

Durability: by default the file is not fsynced, like SQLite's ``synchronous=NORMAL``: a
crash of the process loses nothing, a power loss may lose a recent artifact, which the
digest check then reports.  ``fsync=True`` flushes the file and its folder before the
write returns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

from ..errors import ArtifactError, ConfigurationError
from .hashing import CHUNK, HashingWriter, TailHasher, arrow_fingerprint, hash_file, quick_print
from .layout import FINGERPRINTS, TEMP_FOLDER, TOUCHED

log = logging.getLogger(__name__)
T = TypeVar("T")

SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


class _Stop(Exception):
    """Raised into a speculative write: its content turned out to be stored already."""


class _Stoppable:
    """A file that refuses further writes once ``stop`` is set (see ``write_arrow``)."""

    def __init__(self, target: IO[bytes], stop: threading.Event) -> None:
        self._target = target
        self._stop = stop
        self.closed = False

    def write(self, data: Any) -> int:
        if self._stop.is_set():
            raise _Stop
        return self._target.write(data)

    def tell(self) -> int:
        return self._target.tell()

    def flush(self) -> None:
        self._target.flush()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


class ArtifactStore:
    """Content-addressed files under ``url`` (a local path or any fsspec URL).

    ``options`` go to the fsspec filesystem (``endpoint_url``, ``key``, ``secret``...
    for s3fs).  ``cache_dir`` holds the local copies of loaded :class:`nbjobs.File`
    values (and downloads in flight for object storage); ``fsync`` is described above.
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        *,
        fsync: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> None:
        text = os.fspath(url)
        if not text:
            raise ConfigurationError("the artifact store needs a URL or a folder, not ''")
        scheme, _, rest = text.partition("://") if "://" in text else ("", "", text)
        self.url = text
        self.fsync = fsync
        #: A local folder is used through ``os`` alone: fsspec is imported only for
        #: other URLs, and only when the store is first used.
        self.local = scheme.lower() in ("", "file", "local")
        self._fs: Any = None
        self._options = options
        if self.local:
            if options:
                raise ConfigurationError(
                    f"artifact store options {sorted(options)} are for object storage, "
                    f"not the local folder {text!r}"
                )
            self._root = os.path.abspath(os.path.expanduser(rest))
        # s3fs and friends take client options nested; accept the flat endpoint_url too.
        elif scheme in ("s3", "s3a") and "endpoint_url" in options:
            client = dict(options.pop("client_kwargs", {}))
            client.setdefault("endpoint_url", options.pop("endpoint_url"))
            options["client_kwargs"] = client
        default_cache = (
            os.path.join(self._root, ".files")
            if self.local
            else os.path.join(tempfile.gettempdir(), "nbjobs-artifacts", _slug(text))
        )
        self.cache_dir = os.fspath(cache_dir or default_cache)

    @property
    def fs(self) -> Any:
        """The fsspec filesystem of an object store (opened on first use)."""
        if self._fs is None:
            if self.local:
                raise AssertionError("a local artifact folder is used through os, not fsspec")
            try:
                import fsspec

                self._fs, root = fsspec.core.url_to_fs(self.url, **self._options)
            except ImportError as exc:
                raise ConfigurationError(
                    f"the artifact store {self.url!r} needs {exc.name or 'fsspec'}: "
                    "pip install 'nbjobs[artifacts]' and the fsspec driver of that URL "
                    "(s3fs, gcsfs, adlfs)"
                ) from exc
            self._root = root.rstrip("/")
        return self._fs

    @property
    def root(self) -> str:
        if not self.local:
            self.fs  # noqa: B018 - opening the filesystem sets the root
        return self._root

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    # ------------------------------------------------------------------ names

    def path(self, sha256: str, suffix: str) -> str:
        return f"{self.root}/{sha256[:2]}/{sha256}.{suffix}"

    def uri(self, sha256: str, suffix: str) -> str:
        """Where other tools read the artifact: a plain path locally, ``s3://...`` else."""
        path = self.path(sha256, suffix)
        return path if self.local else self.fs.unstrip_protocol(path)

    def exists(self, sha256: str, suffix: str, size: int | None = None) -> bool:
        path = self.path(sha256, suffix)
        try:
            info_size = os.path.getsize(path) if self.local else self.fs.info(path)["size"]
        except (FileNotFoundError, OSError):
            return False
        return size is None or info_size == size

    def _reuse(self, sha256: str, suffix: str, size: int) -> bool:
        """Whether the artifact is stored already; if so it is marked as used now, so
        that a sweep running at this moment keeps it (the write that reuses it commits
        its reference later).  A local file's time is set; object storage gets a marker
        (``touched/``), written before the second look, which is what the sweep's
        restore relies on (see :mod:`.sweep`)."""
        path = self.path(sha256, suffix)
        if self.local:
            try:
                if os.path.getsize(path) != size:
                    return False
                os.utime(path)  # fails if a sweep moved the file away: then write it
            except OSError:
                return False
            return True
        if not self.exists(sha256, suffix, size):
            return False
        self.fs.pipe_file(self.touched_path(sha256, suffix), b"")
        return self.exists(sha256, suffix, size)

    def touched_path(self, sha256: str, suffix: str) -> str:
        return f"{self.root}/{TOUCHED}/{sha256}.{suffix}"

    # ----------------------------------------------------------------- writes

    def write(self, dump: Callable[[Any], Any], suffix: str) -> tuple[str, int]:
        """Write what ``dump(file)`` produces; returns ``(sha256, size)``.  The artifact is
        complete under its final name when this returns."""
        if self.local:
            return self._write_local(dump, suffix)
        return self._write_remote(dump, suffix)

    def write_bytes(self, data: bytes, suffix: str) -> tuple[str, int]:
        """Store bytes already in memory: hashed first, so a stored digest costs no I/O."""
        sha = hashlib.sha256(data).hexdigest()
        if self._reuse(sha, suffix, len(data)):
            return sha, len(data)
        if self.local:
            return self._write_local(lambda f: f.write(data), suffix)
        self.fs.makedirs(f"{self.root}/{sha[:2]}", exist_ok=True)
        self.fs.pipe_file(self.path(sha, suffix), data)
        return sha, len(data)

    def write_arrow(
        self, table: Any, suffix: str, dump: Callable[[Any, Any], Any]
    ) -> tuple[str, int]:
        """Write an Arrow table with ``dump(table, file)`` (Parquet), unless a table with the
        same fingerprint is stored already: then storing it again costs about one hash.

        The Parquet write starts at once and the fingerprint is computed beside it (the
        first store of a table pays no delay); when the fingerprint names an artifact
        this store holds, the write is stopped and its temporary file removed.
        """
        quick = quick_print(table)
        if self._seen_quick(quick):
            # A table much like this one was stored: hash it alone first, with no Parquet
            # encoding competing for the cores; the write starts only on a miss.
            known = arrow_fingerprint(table)
            hit = self._lookup(known, suffix)
            if hit is not None:
                return hit
            sha, size = self.write(lambda f: dump(table, f), suffix)
            self._remember(known, sha, size, suffix, quick)
            return sha, size
        found: list[tuple[str | None, tuple[str, int] | None]] = []
        stop = threading.Event()

        def fingerprint() -> None:
            try:
                digest = arrow_fingerprint(table)
                hit = self._lookup(digest, suffix)
            except Exception:  # a fingerprint is an optimisation: never fail the write
                log.debug("cannot fingerprint an Arrow table", exc_info=True)
                found.append((None, None))
                return
            found.append((digest, hit))
            if hit is not None:
                stop.set()

        thread = threading.Thread(target=fingerprint, name="nbjobs-fingerprint", daemon=True)
        thread.start()
        try:
            sha, size = self.write(lambda f: dump(table, _Stoppable(f, stop)), suffix)
        except BaseException:
            thread.join()
            if stop.is_set() and found and found[0][1] is not None:
                return found[0][1]
            raise
        thread.join()
        digest, hit = found[0]
        if digest is not None and hit is None:
            self._remember(digest, sha, size, suffix, quick)
        return sha, size

    def _seen_quick(self, quick: str) -> bool:
        path = f"{self.root}/{FINGERPRINTS}/quick/{quick[:2]}/{quick}"
        try:
            return os.path.exists(path) if self.local else bool(self.fs.exists(path))
        except OSError:
            return False

    def _fingerprint_path(self, fingerprint: str) -> str:
        return f"{self.root}/{FINGERPRINTS}/{fingerprint[:2]}/{fingerprint}.json"

    def _lookup(self, fingerprint: str, suffix: str) -> tuple[str, int] | None:
        """The stored ``(sha256, size)`` of a fingerprint, if the artifact is still there."""
        path = self._fingerprint_path(fingerprint)
        try:
            if self.local:
                with open(path, "rb") as f:
                    entry = json.load(f)
            else:
                entry = json.loads(self.fs.cat_file(path))
            sha, size = entry["sha256"], entry["size"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not (isinstance(sha, str) and SHA256_PATTERN.match(sha) and isinstance(size, int)):
            return None
        return (sha, size) if self._reuse(sha, suffix, size) else None

    def _remember(self, fingerprint: str, sha256: str, size: int, suffix: str, quick: str) -> None:
        """Record the fingerprint's artifact, and the table's quick print (a marker that
        says: hash a table with this print before writing it, see ``write_arrow``)."""
        entry = json.dumps({"sha256": sha256, "size": size, "suffix": suffix}).encode()
        path = self._fingerprint_path(fingerprint)
        marker = f"{self.root}/{FINGERPRINTS}/quick/{quick[:2]}/{quick}"
        try:
            if self.local:
                temp = os.path.join(self.root, TEMP_FOLDER, f"{uuid.uuid4().hex}.part")
                with open(temp, "wb") as f:
                    f.write(entry)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.replace(temp, path)
                os.makedirs(os.path.dirname(marker), exist_ok=True)
                with open(marker, "wb"):
                    pass
            else:
                self.fs.pipe_file(path, entry)
                self.fs.pipe_file(marker, b"")
        except OSError:  # an optimisation: the next store of this table encodes it again
            log.warning("cannot record the fingerprint of artifact %s", sha256, exc_info=True)

    def _write_local(self, dump: Callable[[Any], Any], suffix: str) -> tuple[str, int]:
        folder = os.path.join(self.root, TEMP_FOLDER)
        os.makedirs(folder, exist_ok=True)  # on first use: an unused store leaves no folder
        temp = os.path.join(folder, f"{os.getpid()}-{uuid.uuid4().hex}.part")
        hasher: TailHasher | None = None
        try:
            with open(temp, "wb") as f:
                hasher = TailHasher(temp)
                dump(f)
                f.flush()
                size = f.tell()
                if self.fsync:
                    os.fsync(f.fileno())
            sha = hasher.finish(size)
            hasher = None
            final = self.path(sha, suffix)
            if self._reuse(sha, suffix, size):
                os.unlink(temp)
                return sha, size
            os.chmod(temp, 0o444)
            folder = os.path.dirname(final)
            os.makedirs(folder, exist_ok=True)
            os.replace(temp, final)
            if self.fsync:
                _fsync_folder(folder)
            return sha, size
        except BaseException:
            if hasher is not None:
                hasher.abandon()
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
            raise

    def _write_remote(self, dump: Callable[[Any], Any], suffix: str) -> tuple[str, int]:
        # Spooled to a local file first: the name is the digest, known only at the end.
        os.makedirs(self.cache_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.cache_dir, suffix=".part") as f:
            hasher = TailHasher(f.name)
            try:
                dump(f)
                f.flush()
            except BaseException:
                hasher.abandon()
                raise
            size = f.tell()
            sha = hasher.finish(size)
            if not self._reuse(sha, suffix, size):
                self.fs.makedirs(f"{self.root}/{sha[:2]}", exist_ok=True)
                self.fs.put_file(f.name, self.path(sha, suffix))
        return sha, size

    # ------------------------------------------------------------------ reads

    def read(self, sha256: str, suffix: str, load: Callable[[str], T]) -> T:
        """``load(local_path)`` of a verified artifact.

        The digest is checked whatever ``load`` does: a mismatch raises
        :class:`ArtifactError` even if the bytes happened to parse.
        """
        uri = self.uri(sha256, suffix)
        if not self.local:
            return self._read_remote(sha256, suffix, load, uri)
        path = self.path(sha256, suffix)
        if not os.path.exists(path):
            raise ArtifactError(f"artifact {uri} is missing")
        found: list[str | BaseException] = []

        def check() -> None:
            try:
                found.append(hash_file(path))
            except BaseException as exc:  # reported below, with the URI
                found.append(exc)

        checker = threading.Thread(target=check, name="nbjobs-artifact-digest", daemon=True)
        checker.start()
        try:
            value = load(path)
        except BaseException as exc:
            checker.join()
            self._verify(found[0], sha256, uri, path)
            if isinstance(exc, Exception):
                raise ArtifactError(f"artifact {uri} cannot be loaded: {exc}") from exc
            raise
        checker.join()
        self._verify(found[0], sha256, uri, path)
        return value

    def _read_remote(self, sha256: str, suffix: str, load: Callable[[str], T], uri: str) -> T:
        os.makedirs(self.cache_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.cache_dir, suffix=f".{suffix}") as f:
            sink = HashingWriter(f)
            try:
                with self.fs.open(self.path(sha256, suffix), "rb") as remote:
                    while chunk := remote.read(CHUNK):
                        sink.write(chunk)
            except FileNotFoundError:
                raise ArtifactError(f"artifact {uri} is missing") from None
            f.flush()
            self._verify(sink.hexdigest(), sha256, uri, self.path(sha256, suffix))
            try:
                return load(f.name)
            except Exception as exc:
                raise ArtifactError(f"artifact {uri} cannot be loaded: {exc}") from exc

    def _verify(self, found: str | BaseException, sha256: str, uri: str, path: str) -> None:
        if isinstance(found, FileNotFoundError):
            raise ArtifactError(f"artifact {uri} is missing") from found
        if isinstance(found, BaseException):
            raise ArtifactError(f"artifact {uri} cannot be read: {found}") from found
        if found == sha256:
            return
        # Out of the way, so that recomputing the step stores the content again (a write
        # skips a digest already present).
        moved = ""
        try:
            if self.local:
                aside = f"{path}.corrupt-{int(time.time())}"
                os.replace(path, aside)
                moved = f"; moved aside to {aside}"
            else:
                self.fs.rm_file(path)
                moved = "; deleted"
        except OSError:
            pass
        raise ArtifactError(
            f"artifact {uri} is corrupt: its content has SHA-256 {found}, not the "
            f"{sha256} it was stored with{moved}"
        )

    # ------------------------------------------------------------ housekeeping

    def sweep_temporary(self, older_than: float = 3600.0) -> int:
        """Delete writes in flight older than ``older_than`` seconds (orphans of killed
        writers); returns how many.  Only a local root has them: object stores never
        see a partial upload under any name."""
        if not self.local:
            return 0
        folder = Path(self.root) / TEMP_FOLDER
        cutoff = time.time() - older_than
        removed = 0
        for path in folder.glob("*.part"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


def _fsync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _slug(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
