"""What crosses the pipe between the application and its helper process.

A frame is a 4-byte big-endian length and that many bytes. The application
sends one settings frame, then one frame per batch of records; the helper
answers each with the batch's encoded records and what it counted.

Records travel as JSON (orjson, one call per batch): every attribute value
the SDK allows comes back equal, except what :func:`dump_records` refuses
(bytes, ints beyond 64 bits, non-str keys, NaN and infinity, which orjson
would write as ``null``): such a batch is translated in the application, as
before, so the helper never changes a byte of what is sent.
"""

from __future__ import annotations

import os
import selectors
import struct
import time
from itertools import chain
from typing import IO, Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import orjson

from otel_mixpanel._config import Settings
from otel_mixpanel._convention._translate import Record
from otel_mixpanel._model import Endpoint
from otel_mixpanel._stats import Call
from otel_mixpanel._version import __version__
from otel_mixpanel.trace import span_record

# The wire format changes with the release; orjson's with its own.
VERSION = f"{__version__}/orjson {orjson.__version__}"

_LENGTH = struct.Struct(">I")
PIPE_BYTES = 1024 * 1024  # Linux's default most a process may ask for
_OPTIONS = (
    orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
)
Row = Tuple[Record, bool]  # a record and whether its events carry trace ids
Batches = List[Tuple[Endpoint, List[bytes]]]
Calls = List[Call]  # what the helper counted (a Tally's calls)
_ENDPOINTS = {endpoint.value: endpoint for endpoint in Endpoint}
# What a batch frame holds: records, or spans as read when they ended (whose
# events carry trace ids, or not).
_RECORDS, _SPANS, _SPANS_NO_IDS = b"R", b"S", b"s"
_EMPTY: Dict[str, Any] = {}


def write_frame(stream: IO[bytes], *parts: bytes) -> None:
    """One frame, in as few writes as the pipe takes (each write may let
    another thread take the interpreter lock, and getting it back can cost
    a switch interval)."""
    data = memoryview(b"".join((_LENGTH.pack(sum(map(len, parts))), *parts)))
    while data:
        written = stream.write(data)
        data = data[written if written is not None else len(data):]
    stream.flush()


def read_frame(stream: IO[bytes]) -> Optional[bytes]:
    """The next frame, or None at the end of the stream (the other side is gone)."""
    head = _read_exactly(stream, _LENGTH.size)
    if head is None:
        return None
    (length,) = _LENGTH.unpack(head)
    return _read_exactly(stream, length)


def _read_exactly(stream: IO[bytes], size: int) -> Optional[bytes]:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        count = stream.readinto(view[got:])  # type: ignore[attr-defined]
        if not count:
            return None
        got += count
    return bytes(buffer)


class Pipe:
    """The application's end of the two pipes, with a deadline on every frame.

    Where the system allows (POSIX) both are non-blocking and waited on with a
    selector (epoll on Linux: any descriptor number), so no write into a full
    pipe and no read of a late answer outlasts the deadline. Elsewhere
    (Windows pipes) the frames are written and read plainly, without one.
    """

    def __init__(self, writer: IO[bytes], reader: IO[bytes]) -> None:
        self._writer, self._reader = writer, reader
        self._buffer = bytearray(PIPE_BYTES)  # grows to the largest answer
        self._selector: Optional[selectors.BaseSelector] = None
        try:
            os.set_blocking(writer.fileno(), False)
            os.set_blocking(reader.fileno(), False)
            self._selector = selectors.DefaultSelector()
        except (OSError, AttributeError, ValueError):  # pragma: no cover - Windows
            self._selector = None

    def exchange(
        self, body: bytes, deadline: float, meanwhile: Optional[Callable[[], None]] = None,
    ) -> Optional[bytes]:
        """Send *body* as a frame, call *meanwhile* (while the helper works), and
        return the answering frame (None: the helper is gone); TimeoutError once
        ``time.monotonic()`` passes *deadline*."""
        if self._selector is None:  # pragma: no cover - Windows
            write_frame(self._writer, body)
            if meanwhile is not None:
                meanwhile()
            return read_frame(self._reader)
        fd = self._writer.fileno()
        data = memoryview(_LENGTH.pack(len(body)) + body)
        while data:
            try:
                data = data[os.write(fd, data):]
            except BlockingIOError:
                self._wait(fd, selectors.EVENT_WRITE, deadline)
        if meanwhile is not None:
            meanwhile()
        return self._answer(deadline)

    def _answer(self, deadline: float) -> Optional[bytes]:
        """The answering frame: wait until there is something, then take all
        there is in one read. Each system call lets the application's threads
        take the interpreter lock, and getting it back may cost this thread a
        whole switch interval (5 ms): two calls for a batch, not four."""
        fd, buffer, got, size = self._reader.fileno(), self._buffer, 0, None
        while size is None or got < size:
            self._wait(fd, selectors.EVENT_READ, deadline)
            try:
                count = os.readv(fd, [memoryview(buffer)[got:]])
            except BlockingIOError:
                continue
            if not count:
                return None
            got += count
            if size is None and got >= _LENGTH.size:
                size = _LENGTH.size + _LENGTH.unpack_from(buffer)[0]
                if size > len(buffer):
                    buffer.extend(bytes(size - len(buffer)))
            if got == len(buffer) and (size is None or got < size):
                buffer.extend(bytes(len(buffer)))
        assert size is not None
        return bytes(memoryview(buffer)[_LENGTH.size:size])

    def _wait(self, fd: int, event: int, deadline: float) -> None:
        assert self._selector is not None
        # Past the deadline, one look without waiting: an answer already there
        # (ready while the flushing thread translated its half) is taken.
        left = max(0.0, deadline - time.monotonic())
        self._selector.register(fd, event)
        try:
            ready = self._selector.select(left)
        finally:
            self._selector.unregister(fd)
        if not ready:
            raise TimeoutError("no answer in time")

    def close(self) -> None:
        if self._selector is not None:
            self._selector.close()


def widen(stream: IO[bytes]) -> None:
    """Make the pipe behind *stream* hold a whole batch, where the system lets
    us (Linux): one write and one read per frame instead of sixteen."""
    try:
        import fcntl  # noqa: PLC0415 - POSIX only

        fcntl.fcntl(stream.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except (ImportError, OSError, ValueError):
        pass


def dump_settings(settings: Settings) -> bytes:
    """What the helper needs of the settings: no secret crosses the pipe."""
    return orjson.dumps({
        "version": VERSION,
        "token": settings.token,
        "service_account": settings.uses_service_account,
        "allowlist": sorted(settings.property_allowlist)
        if settings.property_allowlist is not None else None,
        "denylist": sorted(settings.property_denylist),
    })


def load_settings(data: bytes) -> Settings:
    """The settings sent by dump_settings; ValueError when the application runs
    another release than the helper found on disk (an upgrade in place)."""
    fields = orjson.loads(data)
    if fields.get("version") != VERSION:
        raise ValueError(f"the application runs {fields.get('version')}, the helper {VERSION}")
    allowlist = fields["allowlist"]
    return Settings(
        base_url="",
        token=fields["token"],
        service_account_username="(in the application)" if fields["service_account"] else None,
        property_allowlist=frozenset(allowlist) if allowlist is not None else None,
        property_denylist=frozenset(fields["denylist"]),
    )


def _refuse(value: Any) -> Any:
    raise TypeError(type(value).__name__)


def _plain(mapping: Any) -> Any:
    """A mapping's plain dict (the SDK's BoundedAttributes keeps one)."""
    if type(mapping) is dict:
        return mapping
    inner = getattr(mapping, "_dict", None)
    return inner if type(inner) is dict else dict(mapping)


_SCALARS = frozenset({str, int, float, bool})
_CONTAINERS = frozenset({tuple, list, dict})
_VALUES = _SCALARS | _CONTAINERS


def _only_json(values: Iterable[Any]) -> bool:
    """Whether every value is of a kind JSON gives back as it was (orjson would
    also write a UUID, an Enum or a dataclass, which come back as something else)."""
    values = list(values)
    kinds = set(map(type, values))
    if kinds <= _SCALARS:
        return True
    if not kinds <= _VALUES:
        return False
    return all(
        _only_json(value.values() if type(value) is dict else value)
        for value in values if type(value) in _CONTAINERS
    )


def dump_records(rows: Sequence[Row]) -> Optional[bytes]:
    """*rows* as one frame's body, or None when a value would not come back equal
    (or anything else about them is unusual: the application then translates them)."""
    try:
        return _dump_records(rows)
    except Exception:  # e.g. a time beyond 64 bits, an attribute mapping that fails
        return None


def _dump_records(rows: Sequence[Row]) -> Optional[bytes]:
    resources: Dict[int, int] = {}
    shared: List[Any] = []
    meta: List[Any] = []
    values: List[Any] = []
    for record, trace_ids in rows:
        resource = record.resource
        index = resources.get(id(resource))
        if index is None:
            index = resources[id(resource)] = len(shared)
            shared.append(_plain(resource))
        # time_ms, insert_id_seed, position, trace_id, span_id, duration: one slice.
        meta.append((record[1:7], index, trace_ids))
        attributes = record.attributes
        if type(attributes) is not dict:
            attributes = _plain(attributes)
        values.append(attributes)
        values.append(_plain(record.inherited) if record.inherited else _EMPTY)
    # Every value of every mapping, gathered in C; only containers walked further.
    if not _only_json(chain.from_iterable(map(dict.values, chain(shared, values)))):
        return None
    return _frame(_RECORDS, meta, shared, values)


def dump_spans(
    ended: Sequence[Any], properties_of: Callable[[Any], Mapping[str, Any]], trace_ids: bool,
) -> Optional[bytes]:
    """Spans as :func:`otel_mixpanel.trace.read_span` kept them, for the helper
    to make their records itself (the same :func:`~otel_mixpanel.trace.span_record`):
    the application's batch thread then only gathers references, where making
    the records took it 2.3 µs a span under the interpreter lock. None for
    anything but plain tagged spans (events, evicted attributes, values that
    would not come back equal): their records go as :func:`dump_records` has
    them."""
    try:
        resources: Dict[int, int] = {}
        shared: List[Any] = []
        meta: List[Any] = []
        values: List[Any] = []
        for attributes, tagged, evicted, events, trace, span, started, ended_at, resource in (
            ended
        ):
            if evicted or events or not tagged:
                return None
            index = resources.get(id(resource))
            if index is None:
                index = resources[id(resource)] = len(shared)
                shared.append(_plain(properties_of(resource)))
            # A trace id has 128 bits, more than JSON numbers carry here.
            meta.append(("%032x" % trace if trace is not None else None,  # noqa: UP031
                         span, started, ended_at, index))
            # An older SDK's OrderedDict, a wrapper's mapping: as a plain dict.
            values.append(attributes if type(attributes) is dict else _plain(attributes))
        if not _only_json(chain.from_iterable(map(dict.values, chain(shared, values)))):
            return None
        return _frame(_SPANS if trace_ids else _SPANS_NO_IDS, meta, shared, values)
    except Exception:  # e.g. a time beyond 64 bits
        return None


def _frame(kind: bytes, meta: List[Any], shared: List[Any], values: List[Any]) -> Optional[bytes]:
    data = orjson.dumps([shared, values], default=_refuse, option=_OPTIONS)
    # Only NaN and infinity write null here (None is not among the kinds above).
    if b"null" in data:
        return None
    head = orjson.dumps(meta)
    return kind + _LENGTH.pack(len(head)) + head + data


def load_records(body: bytes) -> List[Row]:
    kind, body = body[:1], body[1:]
    (length,) = _LENGTH.unpack_from(body)
    meta = orjson.loads(body[_LENGTH.size:_LENGTH.size + length])
    shared, values = orjson.loads(body[_LENGTH.size + length:])
    if kind != _RECORDS:
        trace_ids = kind == _SPANS
        return [(span_record(attributes, trace_id, span, started, ended_at, shared[index]),
                 trace_ids)
                for (trace_id, span, started, ended_at, index), attributes in zip(meta, values)]
    rows: List[Row] = []
    for number, ((time_ms, seed, position, trace_id, span_id, duration), index, trace_ids) in (
        enumerate(meta)
    ):
        inherited = values[2 * number + 1]
        record = Record(values[2 * number], time_ms, seed, position, trace_id, span_id, duration,
                        shared[index])
        if inherited:
            record = record._replace(inherited=inherited)
        rows.append((record, trace_ids))
    return rows


def dump_reply(batches: Batches, calls: Calls) -> Tuple[bytes, bytes]:
    head = orjson.dumps([[[endpoint.value, len(records)] for endpoint, records in batches], calls])
    # Compact JSON never holds a raw newline: the records split back exactly.
    return _LENGTH.pack(len(head)) + head, b"\n".join(
        record for _, records in batches for record in records)


def load_reply(body: bytes) -> Tuple[Batches, Calls]:
    (length,) = _LENGTH.unpack_from(body)
    shape, calls = orjson.loads(body[_LENGTH.size:_LENGTH.size + length])
    records = body[_LENGTH.size + length:].split(b"\n") if shape else []
    batches: Batches = []
    start = 0
    for endpoint, count in shape:
        batches.append((_ENDPOINTS[endpoint], records[start:start + count]))
        start += count
    return batches, [tuple(call) for call in calls]
