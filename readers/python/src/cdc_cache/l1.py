"""The two in-process caches (readers/spec.md section 8). Pure state behind a
lock, shared by the asyncio and the threaded cache; the connections that feed
them invalidations live in the drivers.

- ``BoundedL1``: entries served while verified within a bound, dropped early
  by the daemon's notices (spec section 8).
- ``ExactL1``: version records and values, valid until Redis reports a change
  of a version record through client tracking; a record read is stored only
  when no invalidation of it arrived while the read was in flight.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from .naming import Layout

__all__ = ["BoundedL1", "ExactL1", "Pending"]


@dataclass
class _Entry:
    data_key: str
    value: bytes
    records: tuple[str, ...]
    verified: float


class BoundedL1:
    """Entries keyed by the cache key and its records; at most
    ``max_entries``, the oldest inserted evicted first."""

    def __init__(self, max_entries: int, prefix: str) -> None:
        self._max = max(1, max_entries)
        self._epoch_record = f"{prefix}epoch"
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, ...], _Entry] = OrderedDict()
        self._by_record: dict[str, set[tuple[str, ...]]] = {}

    @staticmethod
    def entry_id(layout: Layout) -> tuple[str, ...]:
        return (layout.key, *layout.records)

    def fresh(self, entry_id: tuple[str, ...], bound: float) -> tuple[bytes, str] | None:
        """The entry's value and data key when verified within ``bound`` seconds."""
        with self._lock:
            entry = self._entries.get(entry_id)
            if entry is None or time.monotonic() - entry.verified > bound:
                return None
            return entry.value, entry.data_key

    def put(self, entry_id: tuple[str, ...], data_key: str, value: bytes, verified: float) -> None:
        """Stores or re-verifies an entry. ``verified`` is when the Redis read
        began, so the bound also covers a notice that raced with the read."""
        records = entry_id[1:]
        with self._lock:
            if entry_id not in self._entries:
                while len(self._entries) >= self._max:
                    oldest, _ = self._entries.popitem(last=False)
                    self._unindex(oldest)
                for record in records:
                    self._by_record.setdefault(record, set()).add(entry_id)
            self._entries[entry_id] = _Entry(data_key, value, records, verified)

    def invalidate(self, record: str) -> int:
        """Drops every entry depending on ``record``; returns how many."""
        if record == self._epoch_record:
            return self.clear()
        with self._lock:
            ids = self._by_record.pop(record, set())
            dropped = 0
            for entry_id in ids:
                if self._entries.pop(entry_id, None) is not None:
                    dropped += 1
                    self._unindex(entry_id)
            return dropped

    def clear(self) -> int:
        with self._lock:
            n = len(self._entries)
            self._entries.clear()
            self._by_record.clear()
            return n

    def _unindex(self, entry_id: tuple[str, ...]) -> None:
        for record in entry_id[1:]:
            ids = self._by_record.get(record)
            if ids is not None:
                ids.discard(entry_id)
                if not ids:
                    del self._by_record[record]

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(eq=False)
class Pending:
    """A read of version records in flight: dirty once an invalidation of
    one of them (or a reset) is processed before the read is committed."""

    records: tuple[str, ...]
    session: int
    dirty: bool = False


@dataclass
class _Value:
    value: bytes
    records: tuple[str, ...]
    expires: float | None


@dataclass
class _Stats:
    records: int = 0
    values: int = 0
    bytes: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class ExactL1:
    """Version records (record key -> ``v``, or ``e`` for the epoch) and
    values (data key -> bytes), valid while tracking is live and no
    invalidation named their records. Bounded: ``max_entries`` records,
    ``max_entries`` values and ``max_bytes`` of values, least recently used
    evicted first."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self._max_entries = max(1, max_entries)
        self._max_bytes = max(1, max_bytes)
        self._lock = threading.Lock()
        self._records: OrderedDict[str, int] = OrderedDict()
        self._values: OrderedDict[str, _Value] = OrderedDict()
        self._by_record: dict[str, set[str]] = {}
        self._bytes = 0
        self._pending: dict[str, set[Pending]] = {}
        # Bumped on every (re)start and loss of tracking: a read begun in an
        # older session is never committed.
        self._session = 0
        self._live = False

    # -- tracking state (called by the connection that listens) ----------

    def go_live(self) -> int:
        """Tracking is established: a new session begins on an empty L1."""
        with self._lock:
            dropped = self._reset_locked()
            self._live = True
            return dropped

    def go_dark(self) -> int:
        """Tracking is lost: the L1 is emptied and not used until it is back."""
        with self._lock:
            self._live = False
            return self._reset_locked()

    def invalidate(self, keys: Iterable[str] | None) -> int:
        """Redis reported a change of ``keys`` (``None``: a flush of the whole
        database). Returns how many records and values were dropped."""
        with self._lock:
            if keys is None:
                return self._reset_locked(new_session=False)
            dropped = 0
            for record in keys:
                for pending in self._pending.get(record, ()):
                    pending.dirty = True
                if self._records.pop(record, None) is not None:
                    dropped += 1
                for data_key in self._by_record.pop(record, ()):
                    dropped += self._drop_value(data_key)
            return dropped

    # -- reads ------------------------------------------------------------

    @property
    def live(self) -> bool:
        return self._live

    def lookup(self, layout: Layout, now: float) -> tuple[str, bytes] | None:
        """The data key and value when every record and the value are held."""
        with self._lock:
            if not self._live:
                return None
            records = self._records
            try:
                epoch = records[layout.records[0]]
                versions = [records[r] for r in layout.records[1:]]
            except KeyError:
                return None
            data_key = layout.data_key(epoch, versions)
            held = self._values.get(data_key)
            if held is None:
                return None
            if held.expires is not None and now >= held.expires:
                self._drop_value(data_key)
                return None
            self._values.move_to_end(data_key)
            for record in layout.records:
                records.move_to_end(record)
            return data_key, held.value

    def begin(self, records: Sequence[str]) -> Pending | None:
        """Registers a read of ``records`` about to be sent; ``None`` while
        tracking is not live (nothing will be stored)."""
        with self._lock:
            if not self._live:
                return None
            pending = Pending(tuple(records), self._session)
            for record in pending.records:
                self._pending.setdefault(record, set()).add(pending)
            return pending

    def commit(
        self,
        pending: Pending | None,
        versions: Sequence[int] | None,
        covered: Callable[[str], bool] | None = None,
    ) -> bool:
        """Ends a read; stores its versions (the epoch's ``e``, then each
        record's ``v``, in ``pending.records`` order) unless an invalidation
        or a reset came while it was in flight, or ``covered`` says a record
        lives where no tracking connection listens. ``versions=None``: the
        read failed, nothing is stored."""
        if pending is None:
            return False
        with self._lock:
            for record in pending.records:
                waiting = self._pending.get(record)
                if waiting is not None:
                    waiting.discard(pending)
                    if not waiting:
                        del self._pending[record]
            if (
                versions is None
                or pending.dirty
                or not self._live
                or pending.session != self._session
                or (covered is not None and not all(map(covered, pending.records)))
            ):
                return False
            for record, version in zip(pending.records, versions, strict=True):
                self._records[record] = version
                self._records.move_to_end(record)
            while len(self._records) > self._max_entries:
                oldest, _ = self._records.popitem(last=False)
                for data_key in self._by_record.pop(oldest, ()):
                    self._drop_value(data_key)
            return True

    def put_value(
        self, data_key: str, value: bytes, records: Sequence[str], expires: float | None
    ) -> None:
        """Holds a value whose records were committed; a value is never
        held past ``expires`` (its Redis time to live), so no L1 value
        outlives the TTL the daemon counts on."""
        if len(value) > self._max_bytes:
            return
        with self._lock:
            if not self._live or not all(r in self._records for r in records):
                # Its records were invalidated meanwhile (or never held):
                # nothing would find it, and nothing would drop it.
                return
            self._drop_value(data_key)
            self._values[data_key] = _Value(value, tuple(records), expires)
            self._bytes += len(value)
            for record in records:
                self._by_record.setdefault(record, set()).add(data_key)
            while len(self._values) > self._max_entries or self._bytes > self._max_bytes:
                oldest = next(iter(self._values))
                self._drop_value(oldest)

    def stats(self) -> _Stats:
        with self._lock:
            return _Stats(len(self._records), len(self._values), self._bytes)

    # -- internals (lock held) -----------------------------------------------

    def _drop_value(self, data_key: str) -> int:
        held = self._values.pop(data_key, None)
        if held is None:
            return 0
        self._bytes -= len(held.value)
        for record in held.records:
            keys = self._by_record.get(record)
            if keys is not None:
                keys.discard(data_key)
                if not keys:
                    del self._by_record[record]
        return 1

    def _reset_locked(self, *, new_session: bool = True) -> int:
        dropped = len(self._records) + len(self._values)
        self._records.clear()
        self._values.clear()
        self._by_record.clear()
        self._bytes = 0
        for waiting in self._pending.values():
            for pending in waiting:
                pending.dirty = True
        if new_session:
            self._session += 1
        return dropped
