"""Batching per endpoint by count and by bytes, identity events first."""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import List

from otel_mixpanel._model import Endpoint, Event, GroupUpdate, IdentityEvent, Message, ProfileUpdate
from otel_mixpanel._queue._batch import MAX_RECORD_BYTES, Batch, encode, make_batches
from otel_mixpanel._stats import Stats


def events(count: int, size: int = 10) -> List[Message]:
    return [Event("E", {"i": i, "pad": "x" * size}) for i in range(count)]


def test_split_by_count() -> None:
    """4500 events make batches of 2000, 2000 and 500."""
    batches = make_batches(events(4500), "tok", Stats())
    assert [len(b.records) for b in batches] == [2000, 2000, 500]


def test_split_by_bytes() -> None:
    """No body exceeds the byte bound; the bodies are valid JSON arrays."""
    batches = make_batches(events(50, size=1000), "tok", Stats(), max_bytes=10_000)
    assert len(batches) > 1
    assert sum(len(b.records) for b in batches) == 50
    for batch in batches:
        body = batch.body()
        assert len(body) <= 10_000
        assert len(body) == batch.size
        assert len(json.loads(body)) == len(batch.records)


def test_body_is_the_records_as_one_array() -> None:
    """The body is exactly "[" + the records joined by "," + "]", at every size."""
    for count in range(4):
        batch = Batch.of_records(Endpoint.IMPORT, [b'{"n":%d}' % i for i in range(count)])
        expected = "[" + ",".join(f'{{"n":{i}}}' for i in range(count)) + "]"
        assert batch.body() == expected.encode()
        assert len(batch.body()) == batch.size


def test_an_event_of_any_mapping_is_encoded() -> None:
    """Properties held in a read-only mapping encode like a dict."""
    event = Event("E", MappingProxyType({"a": 1, "d": 5e-5}))
    assert encode(event, None, Stats()) == b'{"event":"E","properties":{"a":1,"d":5e-05}}'


def test_endpoint_order_and_identity_first() -> None:
    """Sent as /import (identity events first), /engage, /groups; order kept within."""
    messages: List[Message] = [
        GroupUpdate("company", "acme", "$set", {"a": 1}),
        Event("First", {}),
        ProfileUpdate("u", "$set", {"a": 1}),
        IdentityEvent("$identify", {}),
        Event("Second", {}),
    ]
    batches = make_batches(messages, "tok", Stats())
    assert [b.endpoint for b in batches] == [Endpoint.IMPORT, Endpoint.ENGAGE, Endpoint.GROUPS]
    names = [json.loads(r)["event"] for r in batches[0].records]
    assert names == ["$identify", "First", "Second"]


def test_token_in_updates_only() -> None:
    """$token fills profile and group updates; events are authenticated per request."""
    batches = make_batches(
        [Event("E", {}), ProfileUpdate("u", "$set", {"a": 1})], "tok", Stats()
    )
    assert "$token" not in json.loads(batches[0].records[0])
    assert json.loads(batches[1].records[0])["$token"] == "tok"


def test_oversized_record_dropped() -> None:
    """A record over 1 MB is dropped with its reason; the others go."""
    stats = Stats()
    big = Event("Big", {"blob": "x" * (MAX_RECORD_BYTES + 1)})
    batches = make_batches([big, Event("Small", {})], "tok", stats)
    assert [len(b.records) for b in batches] == [1]
    assert stats.snapshot()["dropped"] == {"record_too_large": 1}


def test_lone_surrogate_replaced() -> None:
    """Invalid unicode cannot be UTF-8: replaced, counted, record kept."""
    stats = Stats()
    record = encode(Event("E", {"s": "a\ud800b"}), None, stats)
    assert record is not None and json.loads(record)["properties"]["s"] == "a\\ud800b"
    assert stats.snapshot()["adjusted"] == {"invalid_unicode": 1}


def test_unserialisable_dropped() -> None:
    """A NaN that escaped the limits is caught at encoding, not sent."""
    stats = Stats()
    assert encode(Event("E", {"x": float("nan")}), None, stats) is None
    assert stats.snapshot()["dropped"] == {"unserialisable": 1}


def test_fits_counts_separators() -> None:
    """The size bound includes brackets and commas."""
    batch = Batch(Endpoint.IMPORT)
    batch.add(Event("E", {}), b"12345")
    assert batch.size == 7
    assert batch.fits(b"1", 10, 9) and not batch.fits(b"12", 10, 9)
