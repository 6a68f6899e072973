"""The cross-run step cache: find an entry by its key, save one, clear them.

An entry (``nbjobs_step_cache``) is the newest successful result of a cached step under
its key (see ``nbjobs.caching``).  A hit is one primary-key read and the fenced
checkpoint write with a ``cached_from`` detail (:meth:`CacheQueries.record_cached_checkpoint`):
one statement on PostgreSQL, one transaction of two on SQLite, and one statement on both
for an entry this store has seen (made or read) before, whose text it remembers (see
:class:`_Memo`); a miss saves its entry after its checkpoint committed.  Entries are not job rows:
``purge_jobs`` leaves them (and, through ``texts_containing``, their artifacts) alone;
only ``clear_step_cache`` deletes them.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any, NamedTuple

from sqlalchemy import bindparam, delete, exists, insert, literal, literal_column, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError

from ..schema import CACHED_FROM, cached_detail, checkpoints, jobs, step_cache
from .core import _FENCED, CoreStore
from .jobs import _READ_FENCED_CHECKPOINT

log = logging.getLogger(__name__)

_FIND = select(step_cache.c.job_id, step_cache.c.value, step_cache.c.created_at).where(
    step_cache.c.key == bindparam("k_key")
)
_FIND_FRESH = _FIND.where(step_cache.c.created_at >= bindparam("k_after"))
_REPLACE = (
    update(step_cache)
    .where(step_cache.c.key == bindparam("k_key"))
    .values(
        job_id=bindparam("k_job"),
        value=bindparam("k_value"),
        created_at=bindparam("k_created"),
    )
)
_INSERT = insert(step_cache)

#: No ``ttl``: every entry is fresh enough.
_ANY_AGE = -1e300


def _hit_statement() -> object:
    """A hit as one statement (read-fence dialects): the checkpoint row is inserted
    from the entry, with the ``cached_from`` detail built in SQL, only when the entry
    is there and fresh and the job's lease holds (read under a share lock, leaving the
    job row alone, as ``_READ_FENCED_CHECKPOINT``); it returns the value inserted."""
    detail = literal('{"' + CACHED_FROM + '": "') + step_cache.c.job_id + literal('"}')
    fresh = (
        step_cache.c.key == bindparam("k_key"),
        step_cache.c.created_at >= bindparam("k_after"),
        # A job never reuses its own entry: h.retry(from_checkpoint=...) recomputes.
        step_cache.c.job_id != bindparam("f_id"),
    )
    fence = exists(select(jobs.c.id).where(*_FENCED).with_for_update(read=True))
    values = [
        step_cache.c.value
        if c.name == "value"
        else detail
        if c.name == "detail"
        else bindparam(c.name, type_=c.type)
        for c in checkpoints.c
    ]
    return (
        insert(checkpoints)
        .from_select([c.name for c in checkpoints.c], select(*values).where(*fresh, fence))
        .returning(checkpoints.c.value, checkpoints.c.detail)
    )


#: An entry's ``rowid``, where the dialect has them (see ``Dialect.rowids``).
_entry_rowid: Any = literal_column(f"{step_cache.name}.rowid")


def _known_hit_statement(by_rowid: bool) -> object:
    """A hit of an entry the memo knows, as one statement and no read back: the
    checkpoint row is inserted from the entry only while it is still the version the
    memo knows (its key, ``created_at`` and job: not cleared, not replaced) and the
    job's lease holds.  The value comes from the entry row, the detail is bound.
    ``by_rowid``: the entry is found by the rowid the memo knows too (SQLite), the key
    still compared (a rowid another entry took since is no hit)."""
    fence = exists(select(jobs.c.id).where(*_FENCED).with_for_update(read=True))
    values = [
        step_cache.c.value if c.name == "value" else bindparam(c.name, type_=c.type)
        for c in checkpoints.c
    ]
    where = [
        step_cache.c.key == bindparam("k_key"),
        step_cache.c.created_at == bindparam("k_created"),
        step_cache.c.job_id == bindparam("k_source"),
        fence,
    ]
    if by_rowid:
        where.insert(0, _entry_rowid == bindparam("k_rowid"))
    return insert(checkpoints).from_select(
        [c.name for c in checkpoints.c], select(*values).where(*where)
    )


_HIT = _hit_statement()
_KNOWN_HIT = _known_hit_statement(by_rowid=False)
_KNOWN_HIT_BY_ROWID = _known_hit_statement(by_rowid=True)
#: A hit's read of its entry where the hit is two statements (SQLite), and the same
#: with the entry's rowid (``Dialect.rowids``).
_FIND_FOR_HIT = select(step_cache.c.job_id, step_cache.c.value, step_cache.c.created_at).where(
    step_cache.c.key == bindparam("k_key"),
    step_cache.c.created_at >= bindparam("k_after"),
    step_cache.c.job_id != bindparam("f_id"),
)
_FIND_FOR_HIT_ROWID = _FIND_FOR_HIT.add_columns(_entry_rowid.label("rowid"))
#: The rowid of the entry just saved (where the dialect has them).
_SAVED_ROWID = select(_entry_rowid).where(step_cache.c.key == bindparam("k_key"))


class _Hit(NamedTuple):
    """A hit's checkpoint (``value``, ``detail``), and the version of the entry it came
    from (``job_id``, ``created_at``): what the memo keeps."""

    value: str | None
    detail: str
    job_id: str
    created_at: float
    rowid: int | None = None


#: The most entries, and characters of their values, a store's memo keeps; a value
#: longer than ``MEMO_CHARS // 64`` is not kept (its hits read the entry).
MEMO_ENTRIES = 4096
MEMO_CHARS = 8 * 1024 * 1024


class _Memo:
    """This process's knowledge of entries: key -> the entry's version and its text.

    A version (key, ``created_at``, job) never changes its value: a replaced entry gets
    a new ``created_at``.  So a hit of a known entry needs no read: its checkpoint is
    written from the entry row, fenced on the row still being that version, and the
    value returned is the known text.  Another process that clears or replaces the
    entry makes that write insert nothing, and the hit falls back to reading the entry.
    Bounded: the oldest entries go first.
    """

    def __init__(self) -> None:
        self._entries: dict[str, _Hit] = {}
        self._chars = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> _Hit | None:
        return self._entries.get(key)

    def put(self, key: str, hit: _Hit) -> None:
        size = len(hit.value or "")
        if size > MEMO_CHARS // 64:
            self.drop(key)
            return
        with self._lock:
            entries = self._entries
            old = entries.pop(key, None)
            if old is not None:
                self._chars -= len(old.value or "")
            entries[key] = hit
            self._chars += size
            while len(entries) > MEMO_ENTRIES or self._chars > MEMO_CHARS:
                oldest = entries.pop(next(iter(entries)))
                self._chars -= len(oldest.value or "")

    def drop(self, key: str, hit: _Hit | None = None) -> None:
        """Forget ``key`` (only if it is still ``hit``, when given)."""
        with self._lock:
            old = self._entries.get(key)
            if old is not None and (hit is None or old is hit):
                del self._entries[key]
                self._chars -= len(old.value or "")

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._chars = 0


class CacheQueries(CoreStore):
    """Entries of the step cache, by key."""

    @functools.cached_property
    def _step_memo(self) -> _Memo:
        """The entries this store made or read (see :class:`_Memo`)."""
        return _Memo()

    def find_cached_step(self, key: str, fresh_after: float | None) -> Row | None:
        """The entry under ``key`` made at or after ``fresh_after`` (any age for
        None): ``job_id``, ``value``, ``created_at``; None on a miss."""
        params: dict[str, Any] = {"k_key": key}
        if fresh_after is None:
            statement = _FIND
        else:
            statement, params["k_after"] = _FIND_FRESH, fresh_after
        if self.dialect.autocommit_single:
            # PostgreSQL: one round trip in autocommit mode, not BEGIN, SELECT, COMMIT.
            rows = self._single_statement(lambda conn: self._run(conn, statement, params).all())
        else:
            with self._read() as conn:
                rows = self._run(conn, statement, params).all()
        if not rows:
            return None
        found = rows[0]
        if self.hits_in_one_statement:
            self._step_memo.put(
                key,
                _Hit(found.value, cached_detail(found.job_id), found.job_id, found.created_at),
            )
        return found

    @property
    def hits_in_one_statement(self) -> bool:
        """A hit that leaves the job row alone can be one short transaction
        (:meth:`record_cached_checkpoint`): the read-fence dialects, whose INSERT can
        read the lease without writing the job row."""
        return self.dialect.read_fence

    def record_cached_checkpoint(
        self,
        *,
        key: str,
        fresh_after: float | None,
        job_id: str,
        token: str,
        name: str,
        seq: int,
        args_hash: str | None,
        code_fingerprint: str | None,
        attempt: int,
        started_at: float,
    ) -> Row | _Hit | None:
        """Record the entry under ``key`` (made at or after ``fresh_after``) as this
        job's checkpoint ``name``, in one transaction that leaves the job row alone (the
        caller counts the step later, see ``record_checkpoint(count=None)``).  Returns
        the row's ``value`` and ``detail``; None when nothing was written: no fresh entry,
        or the lease is lost (the step's own write then finds out).

        An entry the memo knows is written in one statement with nothing read back;
        when that writes nothing (the entry was cleared or replaced by another process,
        or the lease is lost) the memo forgets it and the hit reads the entry as usual."""
        params = dict(
            k_key=key,
            k_after=_ANY_AGE if fresh_after is None else fresh_after,
            f_id=job_id,
            f_token=token,
            job_id=job_id,
            name=name,
            seq=seq,
            kind="step",
            done=True,
            args_hash=args_hash,
            code_fingerprint=code_fingerprint,
            attempt=attempt,
            started_at=started_at,
            finished_at=started_at,  # a hit takes no time: one clock read
        )
        memo = self._step_memo
        known = memo.get(key)
        if (
            known is not None
            and known.job_id != job_id  # a job never reuses its own entry
            and (fresh_after is None or known.created_at >= fresh_after)
        ):
            params["k_created"] = known.created_at
            params["k_source"] = known.job_id
            params["detail"] = known.detail
            if known.rowid is None:
                statement = _KNOWN_HIT
            else:
                statement, params["k_rowid"] = _KNOWN_HIT_BY_ROWID, known.rowid
            if self._write_one(statement, params) == 1:
                return known
            memo.drop(key, known)
        if self.dialect.autocommit_single:
            # PostgreSQL: one round trip, the INSERT's RETURNING is cheap.
            rows = self._single_statement(lambda conn: self._run(conn, _HIT, params).all())
            return rows[0] if rows else None
        # SQLite: an INSERT ... SELECT with RETURNING fills two temporary tables, which
        # costs more than reading the entry and writing the row in one transaction
        # (callgrind: 148k instructions against 107k per hit, statement and commit).
        return self._retry_conflicts(lambda conn: self._hit_in_two(conn, params), hot=True)

    def _hit_in_two(self, conn: Any, params: dict[str, Any]) -> _Hit | None:
        rowids = self.dialect.rowids
        found = self._run(conn, _FIND_FOR_HIT_ROWID if rowids else _FIND_FOR_HIT, params).all()
        if not found:
            return None
        entry = found[0]
        params["value"] = entry.value
        params["detail"] = cached_detail(entry.job_id)
        if self._run(conn, _READ_FENCED_CHECKPOINT, params).rowcount != 1:
            return None
        rowid = entry.rowid if rowids else None
        hit = _Hit(entry.value, params["detail"], entry.job_id, entry.created_at, rowid)
        self._step_memo.put(params["k_key"], hit)
        return hit

    def save_cached_step(
        self, *, key: str, workflow: str, step: str, job_id: str, value: str, created_at: float
    ) -> None:
        """Make the entry under ``key`` this result (replacing an older one).  Two
        workers saving one key at once: one insert loses, and either entry is right."""
        replace = dict(k_key=key, k_job=job_id, k_value=value, k_created=created_at)
        row = dict(
            key=key, workflow=workflow, step=step, job_id=job_id, value=value, created_at=created_at
        )
        memo = self._step_memo
        memo.drop(key)
        rowid = None
        try:
            with self._write() as conn:
                if self._run(conn, _REPLACE, replace).rowcount == 0:
                    self._run(conn, _INSERT, row)
                if self.dialect.rowids:
                    rowid = self._run(conn, _SAVED_ROWID, {"k_key": key}).all()[0][0]
        except IntegrityError:
            log.debug("step cache entry %s saved by another worker first", key)
            return
        if self.hits_in_one_statement:
            memo.put(key, _Hit(value, cached_detail(job_id), job_id, created_at, rowid))

    def clear_step_cache(self, workflow: str | None = None, step: str | None = None) -> int:
        """Delete the entries of ``workflow`` (all workflows for None), of its step
        ``step`` only if given; returns how many.  The checkpoints that reused them keep
        their values; artifacts no row refers to any more go at the next sweep."""
        statement = delete(step_cache)
        if workflow is not None:
            statement = statement.where(step_cache.c.workflow == workflow)
        if step is not None:
            statement = statement.where(step_cache.c.step == step)
        try:
            with self._write() as conn:
                return int(conn.execute(statement).rowcount or 0)
        finally:
            # All of it: the memo does not know entries' workflows (and another
            # process's clear is caught by the fence of each hit anyway).
            self._step_memo.clear()
