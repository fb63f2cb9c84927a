"""Group messages into requests: one endpoint each, bounded by count and bytes.

Each record is serialised exactly once; its byte length decides the batch it
joins, and the batch body is the joined bytes.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from otel_mixpanel._model import Endpoint, IdentityEvent, Message
from otel_mixpanel._stats import Stats

MAX_BATCH_RECORDS = 2000
MAX_BATCH_BYTES = 2 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024 - 1  # "under 1 MB" per event or update

_orjson: Any
try:  # a dependency on CPython: several times faster than json.dumps, the same bytes (see dumps)
    _orjson = importlib.import_module("orjson")
except ImportError:  # pragma: no cover - another interpreter, or removed by hand
    _orjson = None
if _orjson is not None and not hasattr(_orjson, "Fragment"):  # pragma: no cover - before 3.9
    _orjson = None
# Releases before 3.12 (the newest for Python 3.9 among them) write large
# floats without the exponent's sign (1e16, json: 1e+16): such values are then
# pre-spelt like the small ones, and records that are not plain are checked for it.
_SIGNLESS_EXPONENT = _orjson is not None and _orjson.dumps(1e16) == b"1e16"
_PLAIN_KINDS = frozenset({int, bool, type(None)})
if _orjson is not None:
    _ORJSON_OPTIONS = (
        _orjson.OPT_PASSTHROUGH_SUBCLASS
        | _orjson.OPT_PASSTHROUGH_DATETIME
        | _orjson.OPT_PASSTHROUGH_DATACLASS
    )
    # Written verbatim between the records of one dumps() call: compact JSON
    # never holds a raw newline (one in a string is escaped), so the call's
    # output splits back into records exactly at ",\n,".
    _SEPARATOR = _orjson.Fragment(b"\n")


@dataclass
class Batch:
    """Records for one request; ``messages[i]`` was encoded as ``records[i]``."""

    endpoint: Endpoint
    messages: List[Message] = field(default_factory=list)
    records: List[bytes] = field(default_factory=list)
    size: int = 2  # the brackets of the JSON array

    def body(self) -> bytes:
        """The JSON array Mixpanel receives (uncompressed)."""
        records = self.records
        if len(records) < 2:
            return b"[" + b"".join(records) + b"]"
        # One copy of a body that may be megabytes, where "[" + join + "]" made three.
        return b",".join([b"[" + records[0], *records[1:-1], records[-1] + b"]"])

    def fits(self, record: bytes, max_records: int, max_bytes: int) -> bool:
        """Whether *record* can join without breaking either bound."""
        extra = len(record) + (1 if self.records else 0)
        return len(self.records) < max_records and self.size + extra <= max_bytes

    def add(self, message: Optional[Message], record: bytes) -> None:
        """Append one encoded record (its message is unknown when replaying a spool)."""
        self.size += len(record) + (1 if self.records else 0)
        if message is not None:
            self.messages.append(message)
        self.records.append(record)

    def subset(self, indices: Sequence[int]) -> Batch:
        """A batch of the records at *indices*, in that order."""
        part = Batch(self.endpoint)
        for index in indices:
            part.add(self.messages[index] if self.messages else None, self.records[index])
        return part

    @classmethod
    def of_records(cls, endpoint: Endpoint, records: Sequence[bytes]) -> Batch:
        """A batch of records already encoded (read back from the spool)."""
        batch = cls(endpoint, records=list(records))
        # add()'s sizes, summed in C: the sender builds one of these per request.
        batch.size = 2 + sum(map(len, records)) + max(0, len(records) - 1)
        return batch


def dumps(payload: Any) -> Optional[bytes]:
    """*payload* as compact UTF-8 JSON by orjson, when installed, or None when
    orjson is absent or its bytes might differ from the standard library's.

    orjson spells the same values the same way (``ensure_ascii=False``, no
    spaces, shortest round-trip floats) except: NaN and infinity become
    ``null`` (json refuses them), floats between 1e-9 and 1e-4 are written
    ``0.00001`` / ``1e-7`` (json: ``1e-05`` / ``1e-07``). A record of plain
    values (the usual event) has its small floats pre-spelt as json spells
    them; any other record is encoded, then left to json when the output
    holds ``null``, ``0.0000`` or a one-digit negative exponent anywhere (a
    string included). Anything orjson refuses (lone surrogates, ints beyond
    64 bits, non-str keys) is left to json too. tests/test_encoding.py checks
    the bytes.
    """
    if _orjson is None:
        return None
    spelt = _spelt_for_orjson(payload) if type(payload) is dict else None
    try:
        record: bytes = _orjson.dumps(payload if spelt is None else spelt, option=_ORJSON_OPTIONS)
    except (TypeError, ValueError, RecursionError):
        return None
    if spelt is None:  # not checked value by value: check the bytes
        if b"null" in record or b"0.0000" in record:
            return None
        if b"e-" in record and _has_short_exponent(record):
            return None
        if _SIGNLESS_EXPONENT and _SIGNLESS.search(record):
            return None
    # A copy of exactly its length: orjson's own bytes are a shrunk larger
    # buffer, and a batch of those kept alive fragments glibc's heap so that
    # each batch pays fresh page faults (5 µs a record against 0.7 with the copy;
    # docs/performance.md).
    return bytes(memoryview(record))


def _spelt_for_orjson(value: Dict[Any, Any], depth: int = 0) -> Optional[Dict[Any, Any]]:
    """*value* with each float json spells unlike orjson (under 1e-4, or from
    1e16 with an old orjson) pre-spelt as json spells it, so that orjson
    writes json's bytes (the same dict when there is none; a span shorter
    than 100 µs has one in ``$duration``). None when it holds what only a
    check of the bytes can judge: NaN, infinity, a str, int or float
    subclass, a list, or a dict below the properties.

    One pass over the values costs less than searching the encoded record
    three times (and less than gathering their kinds in C first)."""
    spelt = value
    for name, item in value.items():
        kind = type(item)
        if kind is str or kind in _PLAIN_KINDS:  # most values are str: tested first
            continue
        if kind is float:
            if (item and -1e-4 < item < 1e-4) or not -1e16 < item < 1e16:
                if not -math.inf < item < math.inf:
                    return None
                if spelt is value:
                    spelt = dict(value)
                spelt[name] = _orjson.Fragment(b"%r" % item)  # json's spelling: repr
            continue
        if kind is dict and not depth:
            inner = _spelt_for_orjson(item, 1)
            if inner is None:
                return None
            if inner is not item:
                if spelt is value:
                    spelt = dict(value)
                spelt[name] = inner
            continue
        return None
    return spelt


_SIGNLESS = re.compile(rb"[0-9]e[0-9]")


def _has_short_exponent(record: bytes) -> bool:
    """Whether *record* holds ``e-`` and one digit (``1e-7``; json writes
    ``1e-07``). A find per occurrence, not a regex scan of the whole record."""
    at = record.find(b"e-")
    while at >= 0:
        if record[at + 2 : at + 3].isdigit() and not record[at + 3 : at + 4].isdigit():
            return True
        at = record.find(b"e-", at + 2)
    return False


def encode(message: Message, token: Optional[str], stats: Stats) -> Optional[bytes]:
    """The record's JSON bytes, or None (counted) when it cannot be sent."""
    payload = message.payload(token)
    if _orjson is not None:
        fast = dumps(payload)
        if fast is not None:
            return _within_limit(fast, message, stats)
    try:
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        stats.dropped("unserialisable", detail=type(error).__name__)
        return None
    try:
        record = text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (from invalid input) cannot be UTF-8. Spelling them out
        # as text ("\\ud800") keeps every name distinct, where "?" could merge
        # two keys and a JSON escape would bring the surrogate back.
        stats.adjusted("invalid_unicode")
        payload = _spell_out_surrogates(message.payload(token))
        record = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return _within_limit(record, message, stats)


def _within_limit(record: bytes, message: Message, stats: Stats) -> Optional[bytes]:
    """*record*, or None (counted) when Mixpanel would refuse its size."""
    if len(record) > MAX_RECORD_BYTES:
        stats.dropped("record_too_large", detail=message.endpoint.value)
        return None
    return record


def encode_many(
    messages: Sequence[Message], token: Optional[str], stats: Stats
) -> List[Optional[bytes]]:
    """``[encode(m, token, stats) for m in messages]``, the same bytes, faster.

    Plain records (all but the rare ones dumps() must check or leave to json)
    are encoded by one orjson call for the whole batch, with a separator that
    compact JSON cannot hold between them, then split: one call and one split
    in C cost a fifth of a call per record (whose result buffers also fragment
    the heap, see dumps())."""
    if _orjson is None:
        return [encode(message, token, stats) for message in messages]
    records: List[Optional[bytes]] = [None] * len(messages)
    together: List[Any] = []
    places: List[int] = []
    for index, message in enumerate(messages):
        payload = message.payload(token)
        spelt = _spelt_for_orjson(payload) if type(payload) is dict else None
        if spelt is None:
            records[index] = encode(message, token, stats)
        else:
            together.append(spelt)
            together.append(_SEPARATOR)
            places.append(index)
    if not places:
        return records
    try:
        joined: bytes = _orjson.dumps(together, option=_ORJSON_OPTIONS)
    except (TypeError, ValueError, RecursionError):  # one it refuses: each on its own
        for index in places:
            records[index] = encode(messages[index], token, stats)
        return records
    # "[" record ",\n," record ... ",\n]"
    for index, record in zip(places, joined[1:-3].split(b",\n,")):
        records[index] = _within_limit(record, messages[index], stats)
    return records


def make_batches(
    messages: Sequence[Message],
    token: Optional[str],
    stats: Stats,
    *,
    max_records: int = MAX_BATCH_RECORDS,
    max_bytes: int = MAX_BATCH_BYTES,
) -> List[Batch]:
    """Batches in sending order: ``/import`` (identity events first), ``/engage``,
    ``/groups``; within an endpoint the messages keep their order."""
    ordered = sorted(messages, key=_send_order)  # stable: keeps each endpoint's order
    batches: List[Batch] = []
    batch: Optional[Batch] = None
    for message, record in zip(ordered, encode_many(ordered, token, stats)):
        if record is None:
            continue
        # Sorted, so a new endpoint never returns: only the last batch can grow.
        if batch is None or batch.endpoint is not message.endpoint or not batch.fits(
            record, max_records, max_bytes
        ):
            batch = Batch(message.endpoint)
            batches.append(batch)
        batch.add(message, record)
    return batches


_ENDPOINT_ORDER = {endpoint: index * 2 for index, endpoint in enumerate(Endpoint)}


def _send_order(message: Message) -> int:
    rank = _ENDPOINT_ORDER[message.endpoint]
    return rank if isinstance(message, IdentityEvent) else rank + 1


def _spell_out_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_spell_out_surrogates(k): _spell_out_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_spell_out_surrogates(item) for item in value]
    return value
