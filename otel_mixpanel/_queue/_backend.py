"""Where records wait: the interface both backends keep, and the memory one.

A backend is a FIFO of *entries*, one per submitted batch, each holding the
encoded records of one endpoint. The sender takes the oldest entries of one
endpoint (merged into one request), sends them, and settles: what Mixpanel
answered leaves, the rest stays at the head in its order. Tickets say when a
submission has been answered: every entry up to a ticket has left.

The caller (the sending queue) holds its lock around every method.
"""

from __future__ import annotations

import abc
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, List, Optional, Sequence, Tuple

from otel_mixpanel._model import Endpoint

# Held compressed once it waits behind others (an outage): ~10x smaller for events.
PACK_LEVEL = 1


@dataclass
class Take:
    """Records taken for one request: ``parts`` map them back to their entries."""

    endpoint: Endpoint
    records: List[bytes]
    parts: List[Tuple[Any, int]] = field(default_factory=list)  # (entry, records taken from it)
    size: int = 2  # the request body's bytes so far: the brackets of the JSON array

    def fill(self, entry: Any, records: Sequence[bytes], max_records: int, max_bytes: int) -> int:
        """Take the first of *records* (of *entry*) that fit; how many did."""
        count = len(records)
        if count and len(self.records) + count <= max_records:
            # The usual case, a whole entry that fits, measured and taken in C.
            total = sum(map(len, records)) + count
            if self.size + total <= max_bytes:
                self.records.extend(records)
                self.size += total
                self.parts.append((entry, count))
                return count
        used = 0
        for record in records:
            if self.records and (
                len(self.records) >= max_records or self.size + len(record) + 1 > max_bytes
            ):
                break
            self.records.append(record)
            self.size += len(record) + 1
            used += 1
        if used:
            self.parts.append((entry, used))
        return used


class Backend(abc.ABC):
    """The operations the sending queue needs from a place records wait in."""

    @abc.abstractmethod
    def append(
        self, endpoint: Endpoint, records: Sequence[bytes], *, compact: bool = True
    ) -> Optional[Any]:
        """Add one entry at the tail; its ticket, or None if it could not be kept.
        ``compact``: it is expected to wait, hold it compactly if you can."""

    @abc.abstractmethod
    def take(self, max_records: int, max_bytes: int) -> Optional[Take]:
        """The oldest records of one endpoint, or None when there are none (or
        another process holds the right to send them)."""

    @abc.abstractmethod
    def settle(self, take: Take, remaining: Sequence[int]) -> None:
        """*take* was sent: the records at *remaining* stay at the head, the rest leave."""

    @abc.abstractmethod
    def release(self, take: Take) -> None:
        """*take* was not sent: everything stays as it was."""

    @abc.abstractmethod
    def answered(self, ticket: Any) -> bool:
        """Whether every entry up to *ticket* has left."""

    @abc.abstractmethod
    def last_ticket(self) -> Optional[Any]:
        """The ticket of the newest entry, None when empty."""

    @abc.abstractmethod
    def count(self) -> Tuple[int, int]:
        """Records waiting and the bytes they hold."""

    def discard(self) -> int:
        """Forget everything (the process ends); how many records that was."""
        return 0

    def after_fork(self) -> None:  # noqa: B027 - optional hook
        """In a forked child: what the parent holds is the parent's to send."""


@dataclass(eq=False)  # entries are compared by identity
class _Entry:
    ticket: int
    endpoint: Endpoint
    count: int
    records: Optional[List[bytes]]  # None while packed
    packed: Optional[bytes] = None
    size: int = 0
    taken: bool = False

    def unpacked(self) -> List[bytes]:
        if self.records is None:
            assert self.packed is not None
            self.records = zlib.decompress(self.packed).split(b"\n")
            self.packed = None
            self.size = sum(len(record) for record in self.records)
        return self.records


class MemoryBackend(Backend):
    """Entries in a deque, bounded by the bytes they hold.

    While the queue moves, an entry waits a few milliseconds and is kept as
    it came. When the queue says it will wait (Mixpanel is failing, or much is
    already waiting), a new entry behind others is packed: its records joined
    by newlines (compact JSON has none) and deflated, so that a five-minute
    outage at 500 events/s fits in the default bound. Beyond the bound the
    oldest entries that are not being sent are evicted and reported through
    ``on_evict``; the newest entry is always kept, even when it alone is
    larger than the bound.
    """

    def __init__(self, max_bytes: int, on_evict: Callable[[int], None]) -> None:
        self.max_bytes = max_bytes
        self._on_evict = on_evict
        self._entries: Deque[_Entry] = deque()
        self._tickets = 0
        self._records = 0
        self._bytes = 0

    def append(
        self, endpoint: Endpoint, records: Sequence[bytes], *, compact: bool = True
    ) -> Optional[int]:
        self._tickets += 1
        entry = _Entry(self._tickets, endpoint, len(records), list(records))
        entry.size = sum(len(record) for record in records)
        if compact and self._entries:  # it will wait behind others
            entry.packed = zlib.compress(b"\n".join(records), PACK_LEVEL)
            entry.records = None
            entry.size = len(entry.packed)
        self._entries.append(entry)
        self._records += entry.count
        self._bytes += entry.size
        self._evict()
        return entry.ticket

    def _evict(self) -> None:
        evicted = 0
        while self._bytes > self.max_bytes:
            # The newest entry stays whatever its size: a bound smaller than
            # one batch must not lose everything while Mixpanel answers.
            newest = self._entries[-1]
            victim = next((e for e in self._entries if not e.taken and e is not newest), None)
            if victim is None:
                break
            self._entries.remove(victim)
            self._records -= victim.count
            self._bytes -= victim.size
            evicted += victim.count
        if evicted:
            self._on_evict(evicted)

    def take(self, max_records: int, max_bytes: int) -> Optional[Take]:
        if not self._entries:
            return None
        endpoint = self._entries[0].endpoint
        take = Take(endpoint, [])
        for entry in self._entries:
            if entry.endpoint is not endpoint:
                break
            records = self._unpacked(entry)
            used = take.fill(entry, records, max_records, max_bytes)
            entry.taken = used > 0
            if used < len(records):
                break
        return take

    def settle(self, take: Take, remaining: Sequence[int]) -> None:
        keep = set(remaining)
        offset = 0
        for entry, used in take.parts:
            entry.taken = False
            records = self._unpacked(entry)
            kept = [records[i] for i in range(used) if offset + i in keep]
            offset += used
            left = kept + records[used:]
            self._records -= entry.count - len(left)
            self._bytes -= entry.size
            entry.records, entry.count = left, len(left)
            entry.size = sum(len(record) for record in left)
            self._bytes += entry.size
            if not left and entry in self._entries:
                self._entries.remove(entry)

    def _unpacked(self, entry: _Entry) -> List[bytes]:
        """*entry*'s records, unpacked for good (it is about to be sent)."""
        held = entry.size
        records = entry.unpacked()
        self._bytes += entry.size - held
        return records

    def release(self, take: Take) -> None:
        for entry, _ in take.parts:
            entry.taken = False

    def answered(self, ticket: Any) -> bool:
        return not self._entries or self._entries[0].ticket > ticket

    def last_ticket(self) -> Optional[int]:
        return self._entries[-1].ticket if self._entries else None

    def count(self) -> Tuple[int, int]:
        return self._records, self._bytes

    def discard(self) -> int:
        lost = self._records
        self._entries.clear()
        self._records = self._bytes = 0
        return lost

    def after_fork(self) -> None:
        self.discard()
