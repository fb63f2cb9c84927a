"""orjson (a dependency on CPython) must give the very bytes json.dumps gives,
record by record and for a whole batch encoded in one call."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_mixpanel._model import Event
from otel_mixpanel._queue import _batch
from otel_mixpanel._stats import Stats

if _batch._orjson is None:  # another interpreter than CPython
    pytest.skip("no orjson here: json.dumps encodes every record", allow_module_level=True)


def test_large_floats_are_spelt_as_json_spells_them_whatever_the_orjson_release() -> None:
    # Releases before 3.12 (the newest for Python 3.9) write 1e16, json 1e+16.
    payload = {"event": "E", "properties": {"x": 1e16, "y": -2.5e300, "z": 1e15}}
    assert _batch.dumps(payload) == reference(payload)
    assert _batch.dumps({"e": [1e16]}) in (None, reference({"e": [1e16]}))


def reference(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=1e-12, max_value=1e-3), st.text(),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e-4, -5e-5, 1e16]),
    st.text(alphabet="\x00\x1f\x7f\u2028\u2029\"\\e-0."),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.text(), values, max_size=8))
def test_dumps_is_json_dumps_or_declines(payload: Any) -> None:
    fast = _batch.dumps(payload)
    assert fast is None or fast == reference(payload)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.text(), scalars, max_size=8),
    st.floats(allow_nan=False, allow_infinity=False),
)
def test_encode_gives_the_same_bytes_with_or_without_orjson(
    properties: Any, duration: float
) -> None:
    event = Event("E", {**properties, "$duration": duration, "time": 1, "distinct_id": "u"})
    with_orjson = _batch.encode(event, None, Stats())
    saved = _batch._orjson
    _batch._orjson = None
    try:
        without = _batch.encode(event, None, Stats())
    finally:
        _batch._orjson = saved
    assert with_orjson == without


@pytest.mark.parametrize("value", [1e-5, 5.1687e-05, 2.5e-7, 1e-9, 1e16, 1e22, -0.0, 2**63, 2**64])
def test_numbers_json_and_orjson_spell_differently_are_left_to_json(value: Any) -> None:
    payload = {"event": "E", "properties": {"$duration": value, "x": value}}
    fast = _batch.dumps(payload)
    assert fast is None or fast == reference(payload)


def test_a_short_span_duration_stays_on_the_fast_path() -> None:
    event = Event("E", {"$duration": 5.1687e-05, "time": 1, "distinct_id": "u"})
    fast = _batch.dumps(event.payload(None))
    assert fast is not None
    assert fast == reference(event.payload(None))
    assert event.properties["$duration"] == 5.1687e-05  # spelt in a copy


def test_not_a_number_is_still_refused() -> None:
    stats = Stats()
    assert _batch.encode(Event("E", {"x": math.nan}), None, stats) is None
    assert stats.snapshot()["dropped"] == {"unserialisable": 1}


def test_lone_surrogates_take_the_json_path() -> None:
    stats = Stats()
    record = _batch.encode(Event("E", {"x": "\ud800"}), None, stats)
    assert record == b'{"event":"E","properties":{"x":"\\\\ud800"}}'


messages = st.lists(
    st.builds(
        lambda properties, duration: Event(
            "E", {**properties, "$duration": duration, "time": 1, "distinct_id": "u"}),
        st.dictionaries(st.text(), values, max_size=6),
        st.floats(allow_nan=False, allow_infinity=False),
    ),
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(messages)
def test_a_batch_encoded_in_one_call_gives_each_record_s_own_bytes(events: Any) -> None:
    stats, alone = Stats(), Stats()
    together = _batch.encode_many(events, None, stats)
    assert together == [_batch.encode(event, None, alone) for event in events]
    assert stats.snapshot() == alone.snapshot()
    saved = _batch._orjson
    _batch._orjson = None
    try:
        assert together == [_batch.encode(event, None, Stats()) for event in events]
    finally:
        _batch._orjson = saved


def test_newlines_in_values_do_not_split_a_batch_s_records() -> None:
    events = [Event("E", {"x": "a\n,\n,b", "y": ",\n,"}), Event("F", {"x": "\n"})]
    assert _batch.encode_many(events, None, Stats()) == [
        reference(event.payload(None)) for event in events]
