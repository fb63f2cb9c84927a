"""The spool's files: segment names, the segment format, the directory lock.

Format: one directory of *segment* files, one per queued batch, named
``<time_ns:020d>-<pid:07d>-<counter:06d>.seg`` so that names sort oldest-first
and never collide across threads or processes (within a process the time part
is forced to increase). A segment is a JSON header line
``{"v":1,"endpoint":"/import","created":<unix float>,"count":N,"crc32":<int>}``
followed by N records, each ending in a raw ``\\n``; ``crc32`` covers every byte
after the header line. Records are compact JSON, which escapes newlines, so
they round-trip byte for byte.

The lock: sending a directory holds an exclusive lock on it, so two senders
(processes sharing the directory, or the ``spool replay`` command) never send
the same segment. This module uses only the standard library.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

if sys.platform != "win32":
    import fcntl

__all__ = ["Segment", "encode_segment"]

SEGMENT_SUFFIX = ".seg"
FORMAT_VERSION = 1
LOCK_NAME = ".lock"
EXCL_LOCK_NAME = ".lock.excl"
# Windows has no flock; tests switch this off to exercise the fallback.
_USE_FLOCK = sys.platform != "win32"


class _Names:
    """Segment names that increase within a process and are unique across processes."""

    lock = threading.Lock()
    counter = itertools.count()
    last_ns = 0


if hasattr(os, "register_at_fork"):  # a fork while another thread held the lock would deadlock
    os.register_at_fork(after_in_child=lambda: setattr(_Names, "lock", threading.Lock()))


@dataclass(frozen=True)
class Segment:
    """One verified segment file: the records of one spooled batch."""

    path: Path
    endpoint: str
    records: List[bytes]
    created: float


class _CorruptSegment(Exception):
    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.count = count


def _new_segment_name() -> str:
    with _Names.lock:
        # time_ns can stall or step back; names must still increase.
        ns = _Names.last_ns = max(time.time_ns(), _Names.last_ns + 1)
        n = next(_Names.counter)
    return f"{ns:020d}-{os.getpid():07d}-{n:06d}{SEGMENT_SUFFIX}"


def encode_segment(endpoint: str, records: Sequence[bytes], created: float) -> bytes:
    """The bytes of a segment file holding *records*."""
    body = b"".join(record + b"\n" for record in records)
    header = {
        "v": FORMAT_VERSION,
        "endpoint": endpoint,
        "created": created,
        "count": len(records),
        "crc32": zlib.crc32(body),
    }
    return json.dumps(header, separators=(",", ":")).encode("ascii") + b"\n" + body


def _parse_header(line: bytes) -> Optional[Dict[str, Any]]:
    try:
        header = json.loads(line)
    except ValueError:
        return None
    if not isinstance(header, dict) or header.get("v") != FORMAT_VERSION:
        return None
    ok = (
        isinstance(header.get("endpoint"), str)
        and type(header.get("created")) in (int, float)
        and type(header.get("count")) is int
        and header["count"] >= 0
        and type(header.get("crc32")) is int
    )
    return header if ok else None


def _decode_segment(data: bytes) -> tuple[str, float, List[bytes]]:
    newline = data.find(b"\n")
    header = _parse_header(data[:newline]) if newline >= 0 else None
    if header is None:
        raise _CorruptSegment(0)
    count: int = header["count"]
    body = data[newline + 1 :]
    if zlib.crc32(body) != header["crc32"] or (body and not body.endswith(b"\n")):
        raise _CorruptSegment(count)
    records = body.split(b"\n")[:-1] if body else []
    if len(records) != count:
        raise _CorruptSegment(count)
    return header["endpoint"], float(header["created"]), records


class _DirLock:
    """Exclusive, non-blocking lock on a spool directory for one replay.

    With ``flock`` the kernel releases the lock when its holder dies. The
    fallback (Windows) is the existence of an ``O_EXCL`` lock file, which a
    replayer that crashed leaves behind: replays then report ``locked`` until
    someone deletes ``.lock.excl`` by hand.
    """

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._fd: Optional[int] = None
        self._flock = _USE_FLOCK

    def acquire(self) -> bool:
        if self._flock:
            assert sys.platform != "win32"
            fd = os.open(self._directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BaseException as error:
                os.close(fd)
                if isinstance(error, BlockingIOError):
                    return False
                raise
        else:
            try:
                fd = os.open(self._directory / EXCL_LOCK_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        # A flock'ed .lock file stays: deleting it would let a second replayer
        # lock a new inode while a third still holds the old one.
        if not self._flock:
            os.unlink(self._directory / EXCL_LOCK_NAME)
