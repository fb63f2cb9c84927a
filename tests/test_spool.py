"""The on-disk spool: format, byte bound, replay semantics, locking and crash safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path
from typing import Callable, List, Sequence, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_mixpanel._model import Endpoint
from otel_mixpanel._queue import _segments, _spool
from otel_mixpanel._queue._disk import DiskBackend
from otel_mixpanel._queue._segments import encode_segment
from otel_mixpanel._queue._spool import (
    ReplayResult,
    Spool,
    SpoolStatus,
    replay_directory,
)

SPOOL_FILE = Path(_spool.__file__)
Sent = List[Tuple[str, List[bytes]]]
SendFn = Callable[[str, List[bytes]], Sequence[int]]


def recs(start: int, count: int) -> List[bytes]:
    """Distinct compact-JSON records ``{"i":start}`` … ``{"i":start+count-1}``."""
    return [
        json.dumps({"i": i}, separators=(",", ":")).encode() for i in range(start, start + count)
    ]


def deliver_all(sent: Sent) -> SendFn:
    """A send that records every call and accepts everything."""

    def send(endpoint: str, records: List[bytes]) -> Sequence[int]:
        sent.append((endpoint, list(records)))
        return []

    return send


def seg_files(directory: Path) -> List[Path]:
    """The segment files, sorted by name."""
    return sorted(directory.glob("*.seg"))


def run_child(
    directory: Path, body: str, timeout: float = 20.0
) -> subprocess.CompletedProcess[str]:
    """Run *body* in a fresh interpreter with ``spool`` loaded straight from the source file.

    Loading by path keeps the child independent of the package ``__init__`` and fast.
    """
    prelude = textwrap.dedent(
        f"""
        import importlib.util, os, sys
        _s = importlib.util.spec_from_file_location("spool_child", {str(SPOOL_FILE)!r})
        spool = importlib.util.module_from_spec(_s)
        sys.modules["spool_child"] = spool
        _s.loader.exec_module(spool)
        DIRECTORY = {str(directory)!r}
        """
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(body)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- format and basic behaviour ------------------------------------------------


def test_records_round_trip_byte_for_byte(tmp_path: Path) -> None:
    """Records come back exactly as written, with endpoint and order."""
    records = [b'{"a":"\\n\\u00e9"}', '{"b":"é🙂"}'.encode(), b"{}", b"\x00\xff\r", b""]
    spool = Spool(tmp_path)
    spool.write("/engage", records)
    segments = list(spool.segments())
    assert len(segments) == 1
    assert segments[0].endpoint == "/engage"
    assert segments[0].records == records


def test_segment_file_format(tmp_path: Path) -> None:
    """Line 1 is the JSON header with count and crc32 of the body; then one record per line."""
    spool = Spool(tmp_path)
    before = time.time()
    spool.write("/import", recs(0, 3))
    (path,) = seg_files(tmp_path)
    header_line, body = path.read_bytes().split(b"\n", 1)
    header = json.loads(header_line)
    assert header["v"] == 1 and header["endpoint"] == "/import" and header["count"] == 3
    assert header["crc32"] == zlib.crc32(body)
    assert before - 1 <= header["created"] <= time.time() + 1
    assert body == b"".join(r + b"\n" for r in recs(0, 3))


def test_empty_write_writes_nothing(tmp_path: Path) -> None:
    """An empty batch creates no segment."""
    spool = Spool(tmp_path)
    spool.write("/import", [])
    assert seg_files(tmp_path) == []
    assert spool.status().segments == 0


def test_record_with_raw_newline_is_refused(tmp_path: Path) -> None:
    """A raw newline would break the framing, so write raises and leaves nothing."""
    spool = Spool(tmp_path)
    with pytest.raises(ValueError, match="newline"):
        spool.write("/import", [b"{}", b"{\n}"])
    assert list(tmp_path.iterdir()) == []


def test_directory_is_created_with_parents(tmp_path: Path) -> None:
    """A missing spool directory and its parents are created."""
    target = tmp_path / "a" / "b" / "spool"
    Spool(str(target)).write("/import", recs(0, 1))
    assert target.is_dir() and len(seg_files(target)) == 1


def test_directory_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    """A path that is a regular file raises NotADirectoryError naming it."""
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        Spool(target)


def test_names_sort_oldest_first_and_are_unique_across_threads(tmp_path: Path) -> None:
    """Concurrent writers get distinct names; each thread's segments sort in write order."""
    spool = Spool(tmp_path)

    def writer(thread: int) -> None:
        for n in range(25):
            spool.write("/import", recs(thread * 1000 + n, 1))

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    segments = list(spool.segments())
    assert len(segments) == 100 == len({s.path.name for s in segments})
    for t in range(4):
        mine = [
            json.loads(s.records[0])["i"] for s in segments if s.records[0] in recs(t * 1000, 25)
        ]
        assert mine == list(range(t * 1000, t * 1000 + 25))


def test_status_counts(tmp_path: Path) -> None:
    """status() reports records, bytes, segments, per-endpoint counts and the oldest time."""
    spool = Spool(tmp_path)
    assert spool.status() == SpoolStatus(0, 0, 0, None, {})
    spool.write("/import", recs(0, 3))
    time.sleep(0.01)
    spool.write("/engage", recs(3, 2))
    spool.write("/import", recs(5, 1))
    status = spool.status()
    files = seg_files(tmp_path)
    first_created = json.loads(files[0].read_bytes().split(b"\n", 1)[0])["created"]
    assert status.records == 6 and status.segments == 3
    assert status.bytes == sum(f.stat().st_size for f in files)
    assert status.by_endpoint == {"/import": 4, "/engage": 2}
    assert status.oldest == first_created


def test_temp_files_are_ignored_and_stale_ones_removed(tmp_path: Path) -> None:
    """Readers skip temp files; segments() deletes those older than an hour only."""
    spool = Spool(tmp_path)
    spool.write("/import", recs(0, 1))
    fresh = tmp_path / "00000000000000000001-1-1.seg.1.tmp"
    stale = tmp_path / "00000000000000000000-1-1.seg.1.tmp"
    fresh.write_bytes(b"half a segm")
    stale.write_bytes(b"half a segm")
    old = time.time() - 2 * _spool.STALE_TEMP_SECONDS
    os.utime(stale, (old, old))
    assert spool.status().segments == 1
    assert [s.records for s in spool.segments()] == [recs(0, 1)]
    assert fresh.exists() and not stale.exists()


def test_clear_deletes_everything_and_counts(tmp_path: Path) -> None:
    """clear() removes every segment and returns the records they held."""
    spool = Spool(tmp_path)
    spool.write("/import", recs(0, 3))
    spool.write("/groups", recs(3, 4))
    assert spool.clear() == 7
    assert spool.status().records == 0 and seg_files(tmp_path) == []


def test_write_returns_the_segment_name(tmp_path: Path) -> None:
    """write() names the segment it made (names sort oldest first); None when
    nothing was kept (an empty batch, or one larger than the bound)."""
    spool = Spool(tmp_path, max_bytes=300)
    first = spool.write("/import", recs(0, 1))
    second = spool.write("/engage", recs(1, 1))
    assert first is not None and second is not None and first < second
    assert [p.name for p in seg_files(tmp_path)] == [first, second]
    assert spool.write("/import", []) is None
    assert spool.write("/import", [b"x" * 400]) is None


def test_segment_paths_lists_segments_oldest_first(tmp_path: Path) -> None:
    """segment_paths() gives the segment files in write order, nothing else."""
    spool = Spool(tmp_path)
    names = [spool.write("/import", recs(n, 1)) for n in range(3)]
    (tmp_path / "00000000000000000000-1-1.seg.1.tmp").write_bytes(b"half")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in spool.segment_paths()] == names
    assert all(p.parent == tmp_path for p in spool.segment_paths())


def test_rewrite_keeps_name_and_time(tmp_path: Path) -> None:
    """rewrite() replaces a segment's records in place: same name, same write
    time (so it keeps its place in line), a valid header for the new count."""
    spool = Spool(tmp_path)
    spool.write("/engage", recs(0, 5))
    spool.write("/engage", recs(5, 1))
    segment = next(spool.segments())
    spool.rewrite(segment, [recs(0, 5)[1], recs(0, 5)[4]])
    again = list(spool.segments())
    assert again[0].path == segment.path and again[0].created == segment.created
    assert again[0].endpoint == "/engage" and again[0].records == [recs(0, 5)[1], recs(0, 5)[4]]
    assert again[1].records == recs(5, 1)
    assert spool.status().records == 3 and list(tmp_path.glob("*.tmp")) == []


# -- corruption ----------------------------------------------------------------


def corrupt_truncate(path: Path) -> None:
    """Cut the file in the middle of its body."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 5])


def corrupt_flip(path: Path) -> None:
    """Flip one bit in the last record."""
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))


def corrupt_header(path: Path) -> None:
    """Replace the header line with garbage."""
    path.write_bytes(b"not json\n" + path.read_bytes().split(b"\n", 1)[1])


def corrupt_count(path: Path) -> None:
    """Claim one record more than the body holds, with a matching checksum."""
    header_line, body = path.read_bytes().split(b"\n", 1)
    header = json.loads(header_line)
    header["count"] += 1
    path.write_bytes(json.dumps(header).encode() + b"\n" + body)


@pytest.mark.parametrize(
    ("damage", "reported"),
    [(corrupt_truncate, 2), (corrupt_flip, 2), (corrupt_header, 0), (corrupt_count, 3)],
)
def test_corrupt_segment_is_quarantined_and_others_replay(
    tmp_path: Path, damage: Callable[[Path], None], reported: int
) -> None:
    """A damaged segment moves to corrupt/, is reported once, and the rest still replay."""
    drops: List[Tuple[str, int]] = []
    spool = Spool(tmp_path, on_drop=lambda reason, n: drops.append((reason, n)))
    spool.write("/import", recs(0, 1))
    spool.write("/import", recs(1, 2))
    spool.write("/engage", recs(3, 1))
    bad = seg_files(tmp_path)[1]
    damage(bad)
    sent: Sent = []
    result = spool.replay(deliver_all(sent))
    assert sent == [("/import", recs(0, 1)), ("/engage", recs(3, 1))]
    assert drops == [("spool_corrupt", reported)]
    assert (tmp_path / "corrupt" / bad.name).exists() and not bad.exists()
    assert result.sent_segments == 2 and result.done_records == 2 and result.kept_records == 0
    assert list(spool.segments()) == [] and drops == [("spool_corrupt", reported)]


# -- byte bound ----------------------------------------------------------------


def test_eviction_drops_oldest_first_and_reports(tmp_path: Path) -> None:
    """Past max_bytes the oldest segments go, counted as spool_full; the total stays bounded."""
    size = len(encode_segment("/import", recs(0, 10), time.time()))
    drops: List[Tuple[str, int]] = []
    spool = Spool(tmp_path, max_bytes=int(size * 2.5), on_drop=lambda r, n: drops.append((r, n)))
    for batch in range(4):
        spool.write("/import", recs(batch * 10, 10))
    assert [s.records for s in spool.segments()] == [recs(20, 10), recs(30, 10)]
    assert drops == [("spool_full", 10), ("spool_full", 10)]
    assert spool.status().bytes <= spool.max_bytes


def test_segment_larger_than_bound_is_not_written(tmp_path: Path) -> None:
    """A single batch bigger than max_bytes is dropped whole and nothing else is evicted."""
    drops: List[Tuple[str, int]] = []
    spool = Spool(tmp_path, max_bytes=300, on_drop=lambda r, n: drops.append((r, n)))
    spool.write("/import", recs(0, 1))
    spool.write("/import", [b"x" * 400, b"y"])
    assert drops == [("spool_full", 2)]
    assert [s.records for s in spool.segments()] == [recs(0, 1)]


@settings(max_examples=60, deadline=None)
@given(
    batches=st.lists(st.lists(st.integers(0, 120), min_size=0, max_size=4), max_size=12),
    max_bytes=st.integers(60, 600),
)
def test_byte_bound_keeps_exactly_the_newest_that_fit(
    tmp_path_factory: pytest.TempPathFactory, batches: List[List[int]], max_bytes: int
) -> None:
    """Total ≤ max_bytes; kept = the newest segments that fit; dropped + kept == written."""
    directory = tmp_path_factory.mktemp("bound")
    dropped: List[int] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_spool, "_clock", lambda: 1700000000.25)
        spool = Spool(directory, max_bytes=max_bytes, on_drop=lambda r, n: dropped.append(n))
        written: List[Tuple[List[bytes], int]] = []
        counter = 0
        for lengths in batches:
            batch = []
            for length in lengths:
                batch.append(b'"' + str(counter).encode().rjust(length, b"0") + b'"')
                counter += 1
            spool.write("/import", batch)
            if batch:
                written.append((batch, len(encode_segment("/import", batch, 1700000000.25))))
            assert spool.status().bytes <= max_bytes
        fitting = [(batch, size) for batch, size in written if size <= max_bytes]
        kept: List[List[bytes]] = []
        total = 0
        for batch, size in reversed(fitting):
            if total + size > max_bytes:
                break
            kept.insert(0, batch)
            total += size
        assert [s.records for s in spool.segments()] == kept
        assert sum(dropped) + sum(len(b) for b in kept) == sum(len(b) for b, _ in written)


# -- replay ----------------------------------------------------------------------


def test_replay_sends_everything_oldest_first_and_empties(tmp_path: Path) -> None:
    """All segments go out in write order, are deleted, and progress is reported per segment."""
    spool = Spool(tmp_path)
    spool.write("/import", recs(0, 2))
    spool.write("/engage", recs(2, 3))
    spool.write("/groups", recs(5, 1))
    sent: Sent = []
    calls: List[Tuple[int, int]] = []
    result = spool.replay(
        deliver_all(sent), progress=lambda done, total: calls.append((done, total))
    )
    assert sent == [("/import", recs(0, 2)), ("/engage", recs(2, 3)), ("/groups", recs(5, 1))]
    assert result == ReplayResult(3, 6, 0, False, None)
    assert calls == [(2, 6), (5, 6), (6, 6)]
    assert seg_files(tmp_path) == []


def test_partial_acceptance_keeps_exactly_the_remaining_records(tmp_path: Path) -> None:
    """Returned indices stay, in order, in the same file; replay stops; the next sends only them."""
    spool = Spool(tmp_path)
    spool.write("/engage", recs(0, 5))
    spool.write("/engage", recs(5, 2))
    first = seg_files(tmp_path)[0]
    created = next(spool.segments()).created
    sent: Sent = []

    def flaky(endpoint: str, records: List[bytes]) -> Sequence[int]:
        sent.append((endpoint, records))
        return [3, 1]

    result = spool.replay(flaky)
    assert sent == [("/engage", recs(0, 5))]
    assert result == ReplayResult(1, 3, 4, False, None)
    again = list(spool.segments())
    assert again[0].path == first and again[0].records == [recs(0, 5)[1], recs(0, 5)[3]]
    assert again[0].created == created and again[1].records == recs(5, 2)
    sent.clear()
    assert spool.replay(deliver_all(sent)) == ReplayResult(2, 4, 0, False, None)
    assert sent == [("/engage", [recs(0, 5)[1], recs(0, 5)[3]]), ("/engage", recs(5, 2))]


def test_send_error_keeps_segment_and_stops(tmp_path: Path) -> None:
    """If send raises, the segment is untouched, later ones wait, and the error is reported."""
    spool = Spool(tmp_path)
    spool.write("/import", recs(0, 1))
    spool.write("/import", recs(1, 1))
    before = [p.read_bytes() for p in seg_files(tmp_path)]
    calls: List[List[bytes]] = []

    def broken(endpoint: str, records: List[bytes]) -> Sequence[int]:
        calls.append(records)
        raise ConnectionError("mixpanel down")

    result = spool.replay(broken)
    assert calls == [recs(0, 1)]
    assert result.error == "ConnectionError: mixpanel down" and not result.locked
    assert result.done_records == 0 and result.kept_records == 2 and result.sent_segments == 0
    assert [p.read_bytes() for p in seg_files(tmp_path)] == before


def test_out_of_range_index_is_an_error_not_a_loss(tmp_path: Path) -> None:
    """A send answer with a bad index keeps the segment whole and reports the error."""
    spool = Spool(tmp_path)
    spool.write("/import", recs(0, 2))
    result = spool.replay(lambda endpoint, records: [5])
    assert result.error is not None and "index 5" in result.error
    assert [s.records for s in spool.segments()] == [recs(0, 2)]


def test_should_stop_is_checked_before_each_segment(tmp_path: Path) -> None:
    """Replay stops between segments once should_stop() turns true."""
    spool = Spool(tmp_path)
    for n in range(3):
        spool.write("/import", recs(n, 1))
    sent: Sent = []
    result = spool.replay(deliver_all(sent), should_stop=lambda: len(sent) >= 2)
    assert [r for _, r in sent] == [recs(0, 1), recs(1, 1)]
    assert result == ReplayResult(2, 2, 1, False, None)


def test_replay_directory_convenience(tmp_path: Path) -> None:
    """replay_directory replays the spool found in a directory."""
    Spool(tmp_path).write("/groups", recs(0, 2))
    sent: Sent = []
    assert replay_directory(str(tmp_path), deliver_all(sent)).done_records == 2
    assert sent == [("/groups", recs(0, 2))]


# -- locking -----------------------------------------------------------------------


def test_second_replayer_is_locked_out(tmp_path: Path) -> None:
    """While one Spool replays, another on the same directory returns locked=True at once."""
    Spool(tmp_path).write("/engage", recs(0, 1))
    inside, release = threading.Event(), threading.Event()
    sent: Sent = []

    def slow(endpoint: str, records: List[bytes]) -> Sequence[int]:
        sent.append((endpoint, records))
        inside.set()
        assert release.wait(5)
        return []

    results: List[ReplayResult] = []
    worker = threading.Thread(target=lambda: results.append(Spool(tmp_path).replay(slow)))
    worker.start()
    assert inside.wait(5)
    other = Spool(tmp_path).replay(deliver_all(sent))
    release.set()
    worker.join(5)
    assert other == ReplayResult(0, 0, 1, True, None)
    assert results == [ReplayResult(1, 1, 0, False, None)]
    assert sent == [("/engage", recs(0, 1))]


def test_concurrent_replayers_never_send_a_segment_twice(tmp_path: Path) -> None:
    """Threads replaying in a loop while a writer adds segments deliver each record exactly once."""
    writer_spool = Spool(tmp_path)
    sent: Sent = []
    sent_lock = threading.Lock()
    done = threading.Event()

    def send(endpoint: str, records: List[bytes]) -> Sequence[int]:
        with sent_lock:
            sent.append((endpoint, records))
        time.sleep(0.001)
        return []

    def replayer() -> None:
        spool = Spool(tmp_path)
        while not done.is_set():
            spool.replay(send)
        spool.replay(send)

    threads = [threading.Thread(target=replayer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for n in range(100):
        writer_spool.write("/engage", recs(n, 1))
    done.set()
    for thread in threads:
        thread.join(10)
    Spool(tmp_path).replay(send)
    delivered = [r for _, batch in sent for r in batch]
    assert sorted(delivered) == sorted(recs(0, 100))


def test_lock_file_fallback_without_flock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The O_EXCL fallback excludes a second replayer and removes its lock file afterwards."""
    monkeypatch.setattr(_segments, "_USE_FLOCK", False)
    Spool(tmp_path).write("/import", recs(0, 1))
    seen: List[ReplayResult] = []

    def send(endpoint: str, records: List[bytes]) -> Sequence[int]:
        assert (tmp_path / _segments.EXCL_LOCK_NAME).exists()
        seen.append(Spool(tmp_path).replay(lambda e, r: []))
        return []

    assert Spool(tmp_path).replay(send) == ReplayResult(1, 1, 0, False, None)
    assert seen == [ReplayResult(0, 0, 1, True, None)]
    assert not (tmp_path / _segments.EXCL_LOCK_NAME).exists()


# -- crash safety (real subprocesses) -----------------------------------------------


def all_segments_valid(directory: Path) -> List[List[bytes]]:
    """Records of every segment; fails the test if any segment is quarantined."""
    drops: List[Tuple[str, int]] = []
    records = [
        s.records for s in Spool(directory, on_drop=lambda r, n: drops.append((r, n))).segments()
    ]
    assert drops == []
    return records


def test_kill_mid_write_leaves_previous_segments_and_no_partial(tmp_path: Path) -> None:
    """A writer killed with half its temp file on disk leaves only whole segments visible."""
    child = run_child(
        tmp_path,
        """
        s = spool.Spool(DIRECTORY)
        s.write("/import", [b'{"i":0}', b'{"i":1}'])
        def die(fd):
            os.ftruncate(fd, os.fstat(fd).st_size // 2)
            os._exit(9)
        os.fsync = die
        s.write("/engage", [b'{"big":"' + b"x" * 100000 + b'"}'] * 3)
        """,
    )
    assert child.returncode == 9, child.stderr
    temps = list(tmp_path.glob("*.tmp"))
    assert len(temps) == 1 and 0 < temps[0].stat().st_size < 3 * 100_010 // 2 + 100
    assert all_segments_valid(tmp_path) == [recs(0, 2)]
    spool = Spool(tmp_path)
    assert spool.status() == SpoolStatus(
        2, seg_files(tmp_path)[0].stat().st_size, 1, spool.status().oldest, {"/import": 2}
    )
    spool.write("/import", recs(2, 1))
    assert all_segments_valid(tmp_path) == [recs(0, 2), recs(2, 1)]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_during_a_stream_of_writes(tmp_path: Path) -> None:
    """A writer SIGKILLed at an arbitrary moment leaves only complete, consecutive segments."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import importlib.util, sys
            _s = importlib.util.spec_from_file_location("spool_child", {str(SPOOL_FILE)!r})
            spool = importlib.util.module_from_spec(_s)
            sys.modules["spool_child"] = spool
            _s.loader.exec_module(spool)
            s = spool.Spool({str(tmp_path)!r})
            n = 0
            while True:
                s.write("/import", [b'{{"i":%d,"pad":"%s"}}' % (n, b"p" * 20000)] * 3)
                if n == 0:
                    print("ready", flush=True)
                n += 1
            """),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    segments = all_segments_valid(tmp_path)
    numbers = [json.loads(records[0])["i"] for records in segments]
    assert numbers == list(range(len(numbers))) and len(numbers) >= 1
    assert all(len(records) == 3 for records in segments)


REPLAY_CHILD = """
    s = spool.Spool(DIRECTORY)
    calls = []
    def send(endpoint, records):
        calls.append(records)
        with open(DIRECTORY + "/../child-sent", "ab") as log:
            log.write(b"".join(r + b"\\n" for r in records))
        if len(calls) == K:
            arm()
            return KEEP
        return []
    s.replay(send)
    sys.exit(3)  # not reached: arm() kills the process
"""


def child_replay(tmp_path: Path, directory: Path, k: int, keep: List[int], arm: str) -> List[bytes]:
    """Replay in a child that dies in the k-th segment (1-based) via *arm*; return what it sent."""
    body = f"K = {k}\nKEEP = {keep!r}\n" + textwrap.dedent(arm) + textwrap.dedent(REPLAY_CHILD)
    child = run_child(directory, body)
    assert child.returncode == 9, child.stderr
    log = tmp_path / "child-sent"
    return log.read_bytes().split(b"\n")[:-1] if log.exists() else []


def fill(directory: Path, segments: int = 5, size: int = 3) -> Spool:
    """A spool holding *segments* segments of *size* distinct records each."""
    spool = Spool(directory)
    for n in range(segments):
        spool.write("/engage", recs(n * size, size))
    return spool


def test_kill_after_send_before_delete_resends_only_that_segment(tmp_path: Path) -> None:
    """The documented window: segment k is sent again, nothing else is lost or duplicated."""
    directory = tmp_path / "spool"
    spool = fill(directory)
    arm = """
        def arm():
            def die(path, *a, **kw):
                os._exit(9)
            os.unlink = die
    """
    child_sent = child_replay(tmp_path, directory, 3, [], arm)
    assert child_sent == recs(0, 9)
    assert all_segments_valid(directory) == [recs(6, 3), recs(9, 3), recs(12, 3)]
    sent: Sent = []
    assert spool.replay(deliver_all(sent)).done_records == 9
    parent_sent = [r for _, batch in sent for r in batch]
    assert parent_sent == recs(6, 9)
    assert sorted(child_sent + parent_sent) == sorted(recs(0, 15) + recs(6, 3))


def test_kill_mid_rewrite_leaves_the_old_version(tmp_path: Path) -> None:
    """Killed while writing the rewritten segment: the old segment is intact and re-sent whole."""
    directory = tmp_path / "spool"
    spool = fill(directory)
    arm = """
        def arm():
            def die(fd):
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
                os._exit(9)
            os.fsync = die
    """
    child_replay(tmp_path, directory, 2, [0, 2], arm)
    assert all_segments_valid(directory) == [recs(3, 3), recs(6, 3), recs(9, 3), recs(12, 3)]
    sent: Sent = []
    spool.replay(deliver_all(sent))
    assert [r for _, batch in sent for r in batch] == recs(3, 12)


def test_kill_right_after_rewrite_leaves_the_new_version(tmp_path: Path) -> None:
    """Killed after the rewrite's rename: only the kept records remain, later segments intact."""
    directory = tmp_path / "spool"
    spool = fill(directory)
    name = seg_files(directory)[1].name
    arm = """
        def arm():
            real = os.replace
            def replace_then_die(src, dst):
                real(src, dst)
                os._exit(9)
            os.replace = replace_then_die
    """
    child_replay(tmp_path, directory, 2, [0, 2], arm)
    assert seg_files(directory)[0].name == name
    kept = [recs(3, 3)[0], recs(3, 3)[2]]
    assert all_segments_valid(directory) == [kept, recs(6, 3), recs(9, 3), recs(12, 3)]
    sent: Sent = []
    spool.replay(deliver_all(sent))
    assert [r for _, batch in sent for r in batch] == kept + recs(6, 9)


def test_two_processes_write_concurrently(tmp_path: Path) -> None:
    """Parallel writer processes produce distinct, valid segments holding every record."""
    script = textwrap.dedent(f"""
        import importlib.util, sys
        _s = importlib.util.spec_from_file_location("spool_child", {str(SPOOL_FILE)!r})
        spool = importlib.util.module_from_spec(_s)
        sys.modules["spool_child"] = spool
        _s.loader.exec_module(spool)
        s = spool.Spool({str(tmp_path)!r})
        base = int(sys.argv[1])
        for n in range(40):
            s.write("/import", [b'{{"i":%d}}' % (base + n)])
        """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(b)]) for b in (0, 1000, 2000)]
    for proc in procs:
        assert proc.wait(20) == 0
    segments = all_segments_valid(tmp_path)
    assert len(segments) == 120 == len(seg_files(tmp_path))
    numbers = [json.loads(records[0])["i"] for records in segments]
    assert sorted(numbers) == sorted(i for b in (0, 1000, 2000) for i in range(b, b + 40))
    for base in (0, 1000, 2000):
        assert [n for n in numbers if base <= n < base + 40] == list(range(base, base + 40))


# -- the sending queue's disk backend ---------------------------------------------------


def disk_backend(directory: Path, drops: List[Tuple[str, int]]) -> DiskBackend:
    return DiskBackend(
        str(directory), 64 * 1024 * 1024,
        on_drop=lambda reason, count: drops.append((reason, count)),
        on_unknown_endpoint=lambda endpoint, count: drops.append((endpoint, count)),
    )


def test_disk_backend_tickets_are_segment_names(tmp_path: Path) -> None:
    """Each append is one durable segment; its ticket is answered once every
    segment up to it has left; count() is what the spool holds."""
    backend = disk_backend(tmp_path, [])
    assert backend.last_ticket() is None and backend.answered("anything")
    first = backend.append(Endpoint.IMPORT, recs(0, 2))
    second = backend.append(Endpoint.ENGAGE, recs(2, 1))
    assert backend.waiting_segments() == [first, second] == [p.name for p in seg_files(tmp_path)]
    assert backend.last_ticket() == second
    assert backend.count() == (3, sum(p.stat().st_size for p in seg_files(tmp_path)))
    assert not backend.answered(first)
    take = backend.take(100, 1 << 20)
    assert take is not None and take.records == recs(0, 2)
    backend.settle(take, [])
    assert backend.answered(first) and not backend.answered(second)


def test_disk_backend_take_merges_one_endpoint_within_limits(tmp_path: Path) -> None:
    """A take is the oldest records of the head's endpoint, across segments, up
    to the record limit; it stops at another endpoint."""
    backend = disk_backend(tmp_path, [])
    for n in range(3):
        backend.append(Endpoint.IMPORT, recs(n * 3, 3))
    backend.append(Endpoint.ENGAGE, recs(9, 1))
    take = backend.take(7, 1 << 20)
    assert take is not None
    assert take.endpoint is Endpoint.IMPORT and take.records == recs(0, 7)
    backend.release(take)
    take = backend.take(100, 1 << 20)
    assert take is not None and take.records == recs(0, 9)
    backend.release(take)
    size = len(recs(0, 1)[0]) + 1
    take = backend.take(100, 2 + 4 * size)  # four records fit in the bytes
    assert take is not None and take.records == recs(0, 4)
    backend.release(take)


def test_disk_backend_settle_keeps_exactly_the_remaining(tmp_path: Path) -> None:
    """Answered records leave; the remaining stay in their segment (same name, in
    order); a segment answered in full is deleted; a failed probe changes nothing."""
    backend = disk_backend(tmp_path, [])
    first = backend.append(Endpoint.ENGAGE, recs(0, 3))
    second = backend.append(Endpoint.ENGAGE, recs(3, 3))
    take = backend.take(5, 1 << 20)  # all of the first segment, two of the second
    assert take is not None and take.records == recs(0, 5)
    backend.settle(take, [1, 4])
    segments = list(Spool(tmp_path).segments())
    assert [s.path.name for s in segments] == [first, second]
    assert [s.records for s in segments] == [[recs(0, 3)[1]], [recs(3, 3)[1], recs(3, 3)[2]]]
    probe = backend.take(1, 1 << 20)
    assert probe is not None and probe.records == [recs(0, 3)[1]]
    backend.settle(probe, [0])  # Mixpanel failed again: nothing changes
    assert [s.records for s in Spool(tmp_path).segments()] == [s.records for s in segments]
    take = backend.take(100, 1 << 20)
    assert take is not None
    backend.settle(take, [])
    assert seg_files(tmp_path) == [] and backend.last_ticket() is None


def test_disk_backend_sends_under_the_directory_lock(tmp_path: Path) -> None:
    """From take to settle the directory is locked: another process's sender or
    a replay waits its turn, so no segment is sent twice at once."""
    backend = disk_backend(tmp_path, [])
    backend.append(Endpoint.IMPORT, recs(0, 1))
    take = backend.take(100, 1 << 20)
    assert take is not None
    other = disk_backend(tmp_path, [])
    assert other.take(100, 1 << 20) is None
    assert Spool(tmp_path).replay(lambda endpoint, records: []).locked
    backend.settle(take, [0])
    take = other.take(100, 1 << 20)
    assert take is not None and take.records == recs(0, 1)
    other.release(take)
    assert backend.count()[0] == 1


def test_disk_backend_leaves_out_what_it_cannot_send(tmp_path: Path) -> None:
    """A segment naming an endpoint we do not send to leaves the spool, counted;
    an empty segment leaves too; the next records are taken."""
    drops: List[Tuple[str, int]] = []
    backend = disk_backend(tmp_path, drops)
    Spool(tmp_path).write("/nowhere", recs(0, 2))
    empty = tmp_path / "00000000000000000001-0000001-000000.seg"
    empty.write_bytes(encode_segment("/import", [], time.time()))
    backend.append(Endpoint.GROUPS, recs(2, 1))
    take = backend.take(100, 1 << 20)
    assert take is not None and take.endpoint is Endpoint.GROUPS and take.records == recs(2, 1)
    backend.release(take)
    assert drops == [("/nowhere", 2)]
    assert len(seg_files(tmp_path)) == 1
