"""The spool: a directory of segment files that holds the sending queue on disk.

The files themselves (names, format, lock) are in ``_segments``. Readers
ignore ``*.tmp`` files; a segment whose header, count or checksum does not
match is moved to ``corrupt/`` (outside the byte bound) and reported through
``on_drop("spool_corrupt", n)``.

Crash safety. *Writing* goes to a temp file in the same directory, which is
``fsync``-ed before ``os.replace`` gives it its final name; the directory is
then ``fsync``-ed. The rename is atomic, so a reader sees a whole segment or
none: a crash before it leaves only a temp file (ignored, removed after an
hour), a crash after it leaves a complete, durable segment. The checksum
catches file systems that break this promise on power loss.

*Sending* holds the directory's exclusive lock, so two senders never send the
same segment. A segment leaves the spool only once Mixpanel has answered for
it: it is deleted when nothing remains, or atomically rewritten (temp file,
then ``os.replace`` over the same name) with the records still to deliver, so a
crash mid-rewrite leaves the old or the new version. The one unavoidable
window: a crash after Mixpanel answered but before that deletion or rewrite
makes the next start send the whole segment again. Delivery is thus
at-least-once, a duplicate is limited to that one segment, and it is the only
way an accepted, non-idempotent profile update ($add, $append) can be applied
twice. No other record is lost or duplicated by a crash.

*Bounding*: after each write the oldest segments are deleted until at most
``max_bytes`` of segments remain, reported as ``on_drop("spool_full", n)``.
Eviction does not take the lock, so a segment being sent may be evicted
meanwhile: its records then count as dropped even if delivered, or a partial
rewrite brings the kept ones back.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

from otel_mixpanel._queue._segments import (
    SEGMENT_SUFFIX,
    Segment,
    _CorruptSegment,
    _decode_segment,
    _DirLock,
    _new_segment_name,
    _parse_header,
    encode_segment,
)

__all__ = ["ReplayResult", "Segment", "SendFn", "Spool", "SpoolStatus", "replay_directory"]

TEMP_SUFFIX = ".tmp"
CORRUPT_DIR = "corrupt"
STALE_TEMP_SECONDS = 3600.0
_MAX_HEADER_BYTES = 4096

SendFn = Callable[[str, List[bytes]], Sequence[int]]
ProgressFn = Callable[[int, int], None]

# The header's "created" time; tests pin it to make segment sizes predictable.
_clock: Callable[[], float] = time.time


@dataclass(frozen=True)
class SpoolStatus:
    """What is waiting in a spool directory."""

    records: int
    bytes: int
    segments: int
    oldest: Optional[float]  # when the oldest waiting segment was written; None if empty
    by_endpoint: Dict[str, int]


@dataclass(frozen=True)
class ReplayResult:
    """The outcome of one replay pass.

    ``sent_segments`` counts segments handed to ``send`` that returned;
    ``done_records`` the records that left the spool (delivered or rejected for
    good); ``kept_records`` the records in the spool when replay returned.
    """

    sent_segments: int
    done_records: int
    kept_records: int
    locked: bool
    error: Optional[str]


class Spool:
    """A directory of segment files; see the module docstring for the format."""

    def __init__(
        self,
        directory: Union[str, os.PathLike[str]],
        *,
        max_bytes: int = 64 * 1024 * 1024,
        on_drop: Callable[[str, int], None] = lambda reason, count: None,
    ) -> None:
        """Use *directory*, creating it and its parents if missing.

        Raises ``NotADirectoryError`` if the path exists and is not a directory,
        or another ``OSError`` if it cannot be created.
        """
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise NotADirectoryError(f"spool path {str(self.directory)!r} is not a directory")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._on_drop = on_drop

    def write(self, endpoint: str, records: Sequence[bytes]) -> Optional[str]:
        """Durably add one segment, then evict the oldest beyond ``max_bytes``;
        the segment's name (names sort oldest first), None if nothing was kept.

        Raises ``ValueError`` for a record containing a raw newline, and
        ``OSError`` if the disk fails (nothing partial is left visible).
        """
        if not records:
            return None
        records = [bytes(record) for record in records]
        if any(b"\n" in record for record in records):
            raise ValueError("a spooled record must not contain a raw newline byte")
        data = encode_segment(endpoint, records, _clock())
        if len(data) > self.max_bytes:
            self._on_drop("spool_full", len(records))
            return None
        name = _new_segment_name()
        self._write_atomic(self.directory / name, data)
        self._evict()
        return name

    def _write_atomic(self, path: Path, data: bytes) -> None:
        temp = path.with_name(f"{path.name}.{os.getpid()}{TEMP_SUFFIX}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(temp, flags, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        if os.name == "nt":  # directories cannot be opened, and NTFS needs no such fsync
            return
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        except OSError:
            pass  # some file systems refuse fsync on a directory; best effort
        finally:
            os.close(fd)

    def _evict(self) -> None:
        entries = self._sized_segment_paths()
        total = sum(size for _, size in entries)
        dropped = deleted = 0
        for path, size in entries:
            if total <= self.max_bytes:
                break
            count = self._header_count(path)
            total -= size
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue  # replayed or evicted by someone else meanwhile
            dropped += count
            deleted += 1
        if deleted:
            self._fsync_dir()
            self._on_drop("spool_full", dropped)

    def _sized_segment_paths(self) -> List[tuple[Path, int]]:
        entries = []
        with os.scandir(self.directory) as scan:
            for entry in scan:
                if not entry.name.endswith(SEGMENT_SUFFIX):
                    continue
                try:
                    if entry.is_file():
                        entries.append((Path(entry.path), entry.stat().st_size))
                except FileNotFoundError:
                    continue
        entries.sort(key=lambda item: item[0].name)
        return entries

    def segment_paths(self) -> List[Path]:
        """The segment files, oldest first."""
        return [path for path, _ in self._sized_segment_paths()]


    def rewrite(self, segment: Segment, records: Sequence[bytes]) -> None:
        """Atomically replace *segment* with one holding only *records*."""
        self._write_atomic(segment.path, encode_segment(segment.endpoint, records, segment.created))

    @staticmethod
    def _read_header(path: Path) -> Optional[Dict[str, Any]]:
        try:
            with open(path, "rb") as file:
                line = file.readline(_MAX_HEADER_BYTES)
        except OSError:
            return None
        return _parse_header(line) if line.endswith(b"\n") else None

    def _header_count(self, path: Path) -> int:
        header = self._read_header(path)
        return int(header["count"]) if header is not None else 0

    def status(self) -> SpoolStatus:
        """Counts from the segment headers (checksums are not verified here)."""
        records = size_total = segments = 0
        oldest: Optional[float] = None
        by_endpoint: Dict[str, int] = {}
        for path, size in self._sized_segment_paths():
            header = self._read_header(path)
            segments += 1
            size_total += size
            if header is None:
                continue
            count, endpoint = header["count"], header["endpoint"]
            records += count
            by_endpoint[endpoint] = by_endpoint.get(endpoint, 0) + count
            created = float(header["created"])
            oldest = created if oldest is None else min(oldest, created)
        return SpoolStatus(records, size_total, segments, oldest, by_endpoint)

    def segments(self) -> Iterator[Segment]:
        """Verified segments, oldest first; corrupt ones are quarantined and skipped."""
        self._remove_stale_temps()
        for path in self.segment_paths():
            segment = self._load(path)
            if segment is not None:
                yield segment

    def _load(self, path: Path) -> Optional[Segment]:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            endpoint, created, records = _decode_segment(data)
        except _CorruptSegment as corrupt:
            self._quarantine(path, corrupt.count)
            return None
        return Segment(path, endpoint, records, created)

    def _quarantine(self, path: Path, count: int) -> None:
        corrupt_dir = self.directory / CORRUPT_DIR
        corrupt_dir.mkdir(exist_ok=True)
        try:
            os.replace(path, corrupt_dir / path.name)
        except FileNotFoundError:
            return  # another reader quarantined it first and reported it
        self._fsync_dir()
        self._on_drop("spool_corrupt", count)

    def _remove_stale_temps(self) -> None:
        cutoff = time.time() - STALE_TEMP_SECONDS
        with os.scandir(self.directory) as scan:
            for entry in scan:
                try:
                    if entry.name.endswith(TEMP_SUFFIX) and entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                except OSError:
                    continue

    def replay(
        self,
        send: SendFn,
        *,
        should_stop: Callable[[], bool] = lambda: False,
        progress: Optional[ProgressFn] = None,
    ) -> ReplayResult:
        """Send the waiting segments oldest-first under an exclusive directory lock.

        ``send(endpoint, records)`` returns the indices of the records still
        to keep (Mixpanel unreachable for them); the others are done. An empty
        answer deletes the segment; otherwise the segment is rewritten with the
        kept records and replay stops. If ``send`` raises, or returns an index
        out of range, the segment is kept untouched, replay stops and the
        error is reported in the result. If another replayer holds the lock,
        returns at once with ``locked=True``.

        A crash after ``send`` returned but before the segment is deleted or
        rewritten makes the next replay send that whole segment again.
        """
        lock = _DirLock(self.directory)
        try:
            acquired = lock.acquire()
        except OSError as error:
            return ReplayResult(0, 0, self.status().records, False, f"lock failed: {error}")
        if not acquired:
            return ReplayResult(0, 0, self.status().records, True, None)
        try:
            sent, done, error_text = self._replay_locked(send, should_stop, progress)
        finally:
            lock.release()
        return ReplayResult(sent, done, self.status().records, False, error_text)

    def _replay_locked(
        self,
        send: SendFn,
        should_stop: Callable[[], bool],
        progress: Optional[ProgressFn],
    ) -> tuple[int, int, Optional[str]]:
        self._remove_stale_temps()
        paths = self.segment_paths()
        total = sum(self._header_count(path) for path in paths)
        sent = done = 0
        for path in paths:
            if should_stop():
                break
            segment = self._load(path)
            if segment is None:
                continue
            keep: List[int] = []
            if segment.records:
                try:
                    keep = _checked_indices(
                        send(segment.endpoint, list(segment.records)), len(segment.records)
                    )
                except Exception as error:
                    return sent, done, f"{type(error).__name__}: {error}"
                sent += 1
            try:
                if keep:
                    kept = [segment.records[i] for i in keep]
                    self._write_atomic(
                        path, encode_segment(segment.endpoint, kept, segment.created)
                    )
                else:
                    with contextlib.suppress(FileNotFoundError):  # evicted meanwhile
                        os.unlink(path)
                    self._fsync_dir()
            except OSError as error:
                # send's answer is lost; the segment is re-sent next time.
                return sent, done, f"{type(error).__name__}: {error}"
            done += len(segment.records) - len(keep)
            if progress is not None:
                progress(done, total)
            if keep:
                break  # Mixpanel is unreachable again; retry later
        return sent, done, None

    def clear(self) -> int:
        """Delete every segment; return how many records they held."""
        deleted = 0
        for path in self.segment_paths():
            count = self._header_count(path)
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            deleted += count
        self._fsync_dir()
        return deleted


def _checked_indices(indices: Sequence[int], size: int) -> List[int]:
    keep = sorted(set(indices))
    for index in keep:
        if type(index) is not int or not 0 <= index < size:
            raise ValueError(f"send returned index {index!r} for {size} records")
    return keep


def replay_directory(
    directory: Union[str, os.PathLike[str]],
    send: SendFn,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    progress: Optional[ProgressFn] = None,
    on_drop: Callable[[str, int], None] = lambda reason, count: None,
) -> ReplayResult:
    """Replay the spool in *directory* once: ``Spool(directory).replay(send, ...)``."""
    return Spool(directory, on_drop=on_drop).replay(
        send, should_stop=should_stop, progress=progress
    )
