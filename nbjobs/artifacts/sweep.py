"""Deleting artifacts nothing refers to any more: a mark-and-sweep that never races a write.

Purge and retention delete job rows; the artifacts those rows referred to stay until a
sweep (``app.sweep_artifacts()``, and hourly by every worker when retention is on) finds
that no stored text refers to them.  Nothing is counted on the hot path: a row's text
holds every digest it keeps alive (spilled text lists the artifacts nested in it), so
the mark is a scan of the rows that contain a reference.

The order makes it safe against writes in flight:

1. **List** the artifacts (final names only) with their modification times.
2. **Mark**: collect every digest the database refers to, after the listing, so an
   artifact listed and referenced by a commit before the mark is kept.
3. **Sweep** each listed artifact that is unmarked and older than ``grace_seconds``
   (one hour by default).  An artifact written but not yet referenced is younger than
   that: its checkpoint commits right after the write.  A write that finds its content
   stored already *reuses* it, and marks it as used (a local file's time is set;
   object storage gets a ``touched/`` marker) before its reference commits.  To close
   the last window (a reuse between the sweep's look and its delete), the sweep first
   moves the file aside (a rename locally; a copy then delete on object storage), then
   looks at the reuse mark again: a reuse since the listing puts the file back.

The stated limit: a write whose reference commits more than ``grace_seconds`` after the
write itself (a step's commit blocked for an hour) may find its artifact swept; loading
it then raises :class:`nbjobs.ArtifactError`, and ``retry(from_checkpoint=...)``
computes it again.  Orphans of crashed writers (temporary files, artifacts whose
checkpoint never committed) are swept the same way once past the grace period, and
fingerprint entries and cached copies of swept artifacts go with them.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .layout import FINGERPRINTS, TEMP_FOLDER, TOUCHED

if TYPE_CHECKING:
    from .store import ArtifactStore

log = logging.getLogger(__name__)

#: A digest anywhere in a stored text (a reference's ``sha256`` or a spilled text's
#: ``refs``).  A user string that looks like one only keeps a file longer: safe.
_DIGEST = re.compile(r"[0-9a-f]{64}")
_FINAL = re.compile(r"^([0-9a-f]{2})/([0-9a-f]{64})\.([a-z0-9][a-z0-9.]{0,15})$")
#: Where the sweep moves a file on object storage while it looks at its reuse marker.
_TRASH = "trash"


def referenced_digests(texts: Iterable[str]) -> set[str]:
    """Every artifact digest the stored ``texts`` refer to."""
    found: set[str] = set()
    for text in texts:
        found.update(_DIGEST.findall(text))
    return found


def sweep(
    store: ArtifactStore,
    referencing_texts: Callable[[], Iterable[str]],
    grace_seconds: float = 3600.0,
) -> dict[str, int]:
    """One sweep of ``store``; ``referencing_texts()`` reads the stored texts that hold
    references (called after the listing).  Returns counts: ``deleted``, ``bytes``
    freed, ``kept`` (referenced or young), ``temporary`` orphans removed."""
    listed = list(_artifacts(store))
    keep = referenced_digests(referencing_texts())
    cutoff = time.time() - grace_seconds
    deleted = freed = kept = 0
    gone: set[str] = set()
    for sha, suffix, path, mtime, size in listed:
        if sha in keep or mtime >= cutoff:
            kept += 1
            continue
        removed = (
            _remove_local(path, cutoff)
            if store.local
            else _remove_remote(store, sha, suffix, path, cutoff)
        )
        if removed:
            deleted += 1
            freed += size
            gone.add(sha)
        else:
            kept += 1
    temporary = store.sweep_temporary(grace_seconds)
    if gone:
        _forget(store, gone)
    if deleted or temporary:
        log.info(
            "artifact sweep of %s: deleted %d artifact(s), %d bytes; %d temporary file(s)",
            store.url, deleted, freed, temporary,
        )  # fmt: skip
    return {"deleted": deleted, "bytes": freed, "kept": kept, "temporary": temporary}


def _artifacts(store: ArtifactStore) -> Iterator[tuple[str, str, str, float, int]]:
    """(sha256, suffix, path, modification time, size) of every artifact under a final name."""
    root = store.root
    if store.local:
        if not os.path.isdir(root):
            return
        for path in Path(root).glob("??/*"):
            match = _FINAL.match(f"{path.parent.name}/{path.name}")
            if match is None or match.group(1) != match.group(2)[:2]:
                continue  # a file moved aside as corrupt, or not the store's
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            yield match.group(2), match.group(3), str(path), st.st_mtime, st.st_size
        return
    try:
        found = store.fs.find(root, detail=True)
    except FileNotFoundError:
        return
    for path, info in found.items():
        match = _FINAL.match(path[len(root) + 1 :])
        if match is None or match.group(1) != match.group(2)[:2]:
            continue
        yield match.group(2), match.group(3), path, _mtime(info), int(info.get("size") or 0)


def _remove_local(path: str, cutoff: float) -> bool:
    """Move the file aside, then delete it unless a reuse touched it meanwhile."""
    aside = os.path.join(os.path.dirname(os.path.dirname(path)), TEMP_FOLDER,
                         f"{os.path.basename(path)}.sweep-{uuid.uuid4().hex}")  # fmt: skip
    try:
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        os.rename(path, aside)
    except FileNotFoundError:
        return False  # another sweep took it
    try:
        if os.stat(aside).st_mtime >= cutoff:  # reused since the listing: put it back
            try:
                os.link(aside, path)
            except FileExistsError:
                pass  # the reusing writer stored it anew meanwhile
            return False
        return True
    finally:
        os.unlink(aside)


def _remove_remote(store: ArtifactStore, sha: str, suffix: str, path: str, cutoff: float) -> bool:
    """Copy aside, delete, then look at the reuse marker: a writer that saw the file
    before the delete wrote its marker before that, so it is seen here."""
    fs = store.fs
    if _marked_since(store, sha, suffix, cutoff):
        return False
    aside = f"{store.root}/{_TRASH}/{sha}.{suffix}"
    try:
        fs.copy(path, aside)
        fs.rm_file(path)
    except FileNotFoundError:
        return False
    try:
        if _marked_since(store, sha, suffix, cutoff):
            if not store.exists(sha, suffix):
                fs.copy(aside, path)
            return False
        return True
    finally:
        fs.rm_file(aside)


def _marked_since(store: ArtifactStore, sha: str, suffix: str, cutoff: float) -> bool:
    try:
        return _mtime(store.fs.info(store.touched_path(sha, suffix))) >= cutoff
    except FileNotFoundError:
        return False


def _mtime(info: dict[str, Any]) -> float:
    """An fsspec ``info`` entry's modification time (S3: ``LastModified``)."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return time.time()  # unknown: treat as new, never delete on a guess


def _forget(store: ArtifactStore, gone: set[str]) -> None:
    """Fingerprint entries, reuse markers and cached copies of swept artifacts."""
    root = store.root
    if store.local:
        for entry in Path(root, FINGERPRINTS).glob("??/*.json"):
            try:
                if any(sha in entry.read_text() for sha in gone):
                    entry.unlink()
            except OSError:
                continue
        for sha in gone:
            shutil.rmtree(os.path.join(store.cache_dir, sha), ignore_errors=True)
        return
    fs = store.fs
    for sha in gone:
        for marker in fs.glob(f"{root}/{TOUCHED}/{sha}.*"):
            fs.rm_file(marker)
    try:
        entries = fs.find(f"{root}/{FINGERPRINTS}")
    except FileNotFoundError:
        entries = []
    for entry in entries:
        try:
            if any(sha in fs.cat_file(entry).decode() for sha in gone):
                fs.rm_file(entry)
        except (OSError, UnicodeDecodeError):
            continue
