"""The disk backend: the sending queue kept in a spool directory.

Every submitted batch becomes a durable segment (see ``otel_mixpanel._queue._spool``
for the format and its crash guarantees) before it is sent, so what waits
survives a restart, and a restarted process sends it first. Sending holds the
directory's exclusive lock from take to settle: several processes may share
one directory (pre-fork servers); one of them sends at a time, oldest first,
whoever wrote it. A segment leaves only once Mixpanel answered for every
record in it; a partial answer rewrites it with the records still to send.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from otel_mixpanel._model import Endpoint
from otel_mixpanel._queue._backend import Backend, Take
from otel_mixpanel._queue._segments import Segment, _DirLock
from otel_mixpanel._queue._spool import Spool


class DiskBackend(Backend):
    """Entries are segment files; tickets are segment names (they sort by age)."""

    def __init__(
        self,
        directory: str,
        max_bytes: int,
        on_drop: Callable[[str, int], None],
        on_unknown_endpoint: Callable[[str, int], None],
        on_write_error: Callable[[str, OSError], None] = lambda name, error: None,
    ) -> None:
        self.spool = Spool(directory, max_bytes=max_bytes, on_drop=on_drop)
        self._on_unknown_endpoint = on_unknown_endpoint
        self._on_write_error = on_write_error
        self._lock: Optional[_DirLock] = None
        # Segments whose rewrite failed: their records still to send, by path.
        self._unwritten: Dict[Path, List[bytes]] = {}

    def append(
        self, endpoint: Endpoint, records: Sequence[bytes], *, compact: bool = True
    ) -> Optional[str]:
        return self.spool.write(endpoint.value, records)

    def take(self, max_records: int, max_bytes: int) -> Optional[Take]:
        lock = _DirLock(self.spool.directory)
        try:
            if not lock.acquire():
                return None  # another process is sending this directory
        except OSError:
            return None
        try:
            take = self._read(max_records, max_bytes)
        except BaseException:
            lock.release()
            raise
        if take is None:
            lock.release()
            return None
        self._lock = lock
        return take

    def _read(self, max_records: int, max_bytes: int) -> Optional[Take]:
        take: Optional[Take] = None
        for found in self.spool.segments():
            segment = found
            try:
                endpoint = Endpoint(segment.endpoint)
            except ValueError:
                # Not ours to send (a damaged or foreign header): leave the spool, counted.
                self._on_unknown_endpoint(segment.endpoint, len(segment.records))
                self._remove(segment)
                continue
            if found.path in self._unwritten:
                segment = Segment(found.path, found.endpoint, self._unwritten[found.path],
                                  found.created)
            if not segment.records:
                self._remove(segment)
                continue
            if take is None:
                take = Take(endpoint, [])
            elif endpoint is not take.endpoint:
                break
            if take.fill(segment, segment.records, max_records, max_bytes) < len(segment.records):
                break
        return take

    def settle(self, take: Take, remaining: Sequence[int]) -> None:
        try:
            keep = set(remaining)
            offset = 0
            for segment, used in take.parts:
                left = [r for i, r in enumerate(segment.records[:used]) if offset + i in keep]
                left += segment.records[used:]
                offset += used
                if len(left) == len(segment.records):
                    continue  # nothing answered: the file is right as it is
                try:
                    if left:
                        self.spool.rewrite(segment, left)
                    else:
                        self._remove(segment)
                    self._unwritten.pop(segment.path, None)
                except OSError as error:
                    # A full disk, say. What Mixpanel answered must not be sent
                    # again (a $add would apply twice): until a rewrite succeeds,
                    # this process reads the segment as it should be.
                    self._unwritten[segment.path] = left
                    self._on_write_error(segment.path.name, error)
        finally:
            self.release(take)

    def _remove(self, segment: Segment) -> None:
        with contextlib.suppress(FileNotFoundError):  # evicted meanwhile
            os.unlink(segment.path)

    def release(self, take: Take) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def after_fork(self) -> None:
        # The parent's lock descriptor (if it was sending) is the parent's to release.
        self._lock = None

    def answered(self, ticket: Any) -> bool:
        oldest = self._oldest()
        return oldest is None or oldest > ticket

    def _oldest(self) -> Optional[str]:
        paths = self.spool.segment_paths()
        return paths[0].name if paths else None

    def last_ticket(self) -> Optional[str]:
        paths = self.spool.segment_paths()
        return paths[-1].name if paths else None

    def count(self) -> Tuple[int, int]:
        status = self.spool.status()
        return status.records, status.bytes

    def waiting_segments(self) -> List[str]:
        """Names of the segments waiting, oldest first."""
        return [path.name for path in self.spool.segment_paths()]
