"""Hostile input: whatever the attributes of a span or a log record hold, export
never raises, Mixpanel (the local server) refuses nothing, a named event
arrives, and every property that was cut or dropped is counted in ``stats()``.

Property-based (hypothesis) over real ReadableSpans and real SDK log records,
plus one explicit test per hostile category."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import math
import threading
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk._logs.export import (
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits
from opentelemetry.sdk.trace.export import SpanExportResult

from otel_mixpanel import MixpanelLogExporter, MixpanelSpanExporter
from otel_mixpanel._compat import LogRecordExportResult
from otel_mixpanel._convention._table import KEYS
from otel_mixpanel._queue._limits import DENYLISTED_DISTINCT_IDS
from otel_mixpanel.testing import LocalMixpanel
from tests import helpers
from tests.helpers import log

Exporter = TypeVar("Exporter", MixpanelSpanExporter, MixpanelLogExporter)

# Reasons under which a whole top-level event property is removed.
PROPERTY_DROPS = (
    "non_finite_number", "property_name_too_long", "collection_too_large",
    "too_many_properties", "unsupported_type", "property_not_allowed",
)
# What every span event carries besides the user's properties.
SPAN_AUTO = frozenset({
    "service.name", "trace_id", "span_id", "$duration", "mp_lib", "$lib_version",
    "time", "distinct_id", "$insert_id",
})
# What every log-record event (outside a span) carries besides the user's properties.
LOG_AUTO = frozenset(
    {"service.name", "mp_lib", "$lib_version", "time", "distinct_id", "$insert_id"}
)
IDENTITY_EVENT_NAMES = frozenset({"$create_alias", "$identify", "$merge"})
SURROGATES = ("\ud800", "\udbff", "\udc00", "\udfff")
EARLIEST_S = 31_536_000  # 1971-01-01
HYPOTHESIS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
        HealthCheck.data_too_large, HealthCheck.large_base_example,
    ],
)


# Building real SDK objects


def finished_spans(*attribute_sets: Mapping[str, Any]) -> List[ReadableSpan]:
    """Real ReadableSpans, one per attribute set, with room for 20k attributes
    and no value-length limit."""
    return helpers.finished_spans(*attribute_sets, span_limits=SpanLimits(
        max_span_attributes=20_000, max_attribute_length=None,
    ))


def emitted_records(
    *attribute_sets: Mapping[str, Any], timestamp: Optional[int] = None
) -> List[Any]:
    """Real SDK log records (cleaned by the SDK as an application's would be)."""
    memory = helpers.memory_log_exporter()
    provider = helpers.logger_provider(Resource.create({"service.name": "shop"}), 20_000)
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    logger = provider.get_logger("app")
    for attributes in attribute_sets:
        log(logger, timestamp=timestamp, body="hostile", attributes=dict(attributes))
    provider.shutdown()
    return list(memory.get_finished_logs())


# Every exporter made here, shut down after its test by ``shut_down_exporters``.
_made: List[Union[MixpanelSpanExporter, MixpanelLogExporter]] = []


def span_exporter(server: LocalMixpanel, **kwargs: Any) -> MixpanelSpanExporter:
    """A span exporter sending to *server*, shut down after the test."""
    exporter = MixpanelSpanExporter(token=server.token, api_host=server.url, **kwargs)
    _made.append(exporter)
    return exporter


def log_exporter(server: LocalMixpanel, **kwargs: Any) -> MixpanelLogExporter:
    """A log exporter sending to *server*, shut down after the test."""
    exporter = MixpanelLogExporter(token=server.token, api_host=server.url, **kwargs)
    _made.append(exporter)
    return exporter


@contextmanager
def shut_down_after(exporter: Exporter) -> Iterator[Exporter]:
    """Shut *exporter* down at the end of the block: a hypothesis example's
    exporter must not share its destination's queue, and counters, with the
    next example's."""
    try:
        yield exporter
    finally:
        exporter.shutdown()


@pytest.fixture(autouse=True)
def shut_down_exporters() -> Iterator[None]:
    """After each test: every exporter shut down, no sender thread left running."""
    before = set(threading.enumerate())
    yield
    while _made:
        exporter = _made.pop()
        if not exporter._is_shut_down:
            exporter.shutdown(timeout_millis=1_000)
    started = [t for t in threading.enumerate()
               if t.name == "otel-mixpanel-sender" and t not in before]
    for thread in started:
        thread.join(timeout=3.0)
    assert [t for t in started if t.is_alive()] == []


def assert_nothing_refused(server: LocalMixpanel) -> None:
    """Every request was answered 200 and no record was refused."""
    assert server.rejected == []
    assert [r.status for r in server.requests if r.status != 200] == []


def as_sent(text: str) -> str:
    """How a str with lone surrogates arrives: each surrogate spelled out (\\ud800)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def is_nonfinite(value: Any) -> bool:
    """Whether *value* is a NaN or infinite float."""
    return isinstance(value, float) and not math.isfinite(value)


def property_drops(stats: Mapping[str, Mapping[str, int]]) -> int:
    """Drops that remove a whole top-level property."""
    return sum(stats["dropped"].get(reason, 0) for reason in PROPERTY_DROPS)


@pytest.fixture(scope="module")
def server() -> Iterator[LocalMixpanel]:
    """One local Mixpanel for every example of a module's hypothesis tests."""
    with LocalMixpanel() as local:
        yield local


@pytest.fixture
def fresh(server: LocalMixpanel) -> LocalMixpanel:
    """The module's server, emptied."""
    server.clear()
    return server


# Strategies

hostile_text = st.one_of(
    st.text(max_size=12),
    st.lists(st.one_of(st.characters(), st.sampled_from(SURROGATES)), max_size=12).map("".join),
    st.builds(
        lambda char, count: char * count,
        st.characters(), st.sampled_from([255, 256, 300, 100_000]),
    ),
    st.sampled_from(sorted(DENYLISTED_DISTINCT_IDS)).flatmap(
        lambda value: st.sampled_from([value, value.upper(), f" {value} "])
    ),
)
scalar = st.one_of(
    hostile_text, st.integers(), st.floats(), st.booleans(), st.binary(max_size=16),
)
span_value = st.one_of(
    scalar,
    st.lists(st.one_of(st.text(max_size=8), st.integers(), st.floats()), max_size=20),
    st.builds(lambda n: ["v" * 300] * n, st.sampled_from([254, 255, 300])),
)
_KEYED = sorted(key.name for key in KEYS if key.keyed)
_CONTROLLED = frozenset({"mixpanel.event", "mixpanel.time", "mixpanel_event", "mixpanel_time"})
attribute_key = st.one_of(
    st.text(max_size=20),
    st.builds(lambda rest: "mixpanel." + rest, hostile_text),
    st.sampled_from(sorted(key.name for key in KEYS)),
    st.sampled_from(sorted(key.structlog_name for key in KEYS)),
    st.builds(lambda key, rest: f"{key}.{rest}", st.sampled_from(_KEYED), hostile_text),
).filter(lambda key: key not in _CONTROLLED)
event_name = st.one_of(
    st.none(), hostile_text, st.integers(), st.just("   "), st.just(""),
).filter(lambda name: name not in IDENTITY_EVENT_NAMES)


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat()


_OFFSETS = st.sampled_from([dt.timezone.utc, dt.timezone(dt.timedelta(hours=-11))])


def naive_or_aware(
    min_value: dt.datetime = dt.datetime.min, max_value: dt.datetime = dt.datetime.max
) -> st.SearchStrategy[dt.datetime]:
    """Datetimes without a timezone, in UTC, or at UTC-11."""
    return st.one_of(
        st.datetimes(min_value, max_value),
        st.datetimes(min_value, max_value, timezones=_OFFSETS),
    )

# (value of mixpanel.time or None, whether that time is before 1971; None when
# the value is not a time, so the span's or record's own time is used)
event_time: st.SearchStrategy[Tuple[Any, Optional[bool]]] = st.one_of(
    st.just((None, None)),
    st.integers(-(10**15), EARLIEST_S - 1).map(lambda v: (v, True)),
    st.integers(EARLIEST_S, 10**11 - 1).map(lambda v: (v, False)),  # seconds, 1971 ... 5138
    st.integers(10**11, 10**16).map(lambda v: (v, False)),  # milliseconds
    st.floats(min_value=3.2e7, max_value=1e16).map(lambda v: (v, False)),
    st.floats(max_value=31_535_999.0).map(lambda v: (v, True)),
    naive_or_aware(min_value=dt.datetime(1971, 1, 3)).map(lambda v: (_iso(v), False)),
    naive_or_aware(max_value=dt.datetime(1970, 12, 29)).map(lambda v: (_iso(v), True)),
    st.sampled_from(["", "nan", "inf", "-inf", "soon", "2024-13-45", "\ud800"]).map(
        lambda v: (v, None)
    ),
    st.sampled_from([float("nan"), float("inf"), True]).map(lambda v: (v, None)),
)


def _named(name: Any, too_early: Optional[bool]) -> Optional[str]:
    """The event name that must arrive exactly once, or None when none must."""
    if isinstance(name, str) and name.strip() and not too_early:
        return as_sent(cut(name))
    return None


def cut(text: str) -> str:
    """Mixpanel's 255-character (and 255-byte) limit, as the exporter applies it."""
    text = text[:255]
    encoded = text.encode("utf-8", "surrogatepass")
    return encoded[:255].decode("utf-8", "ignore") if len(encoded) > 255 else text


# Property-based: spans


@HYPOTHESIS
@given(
    attributes=st.dictionaries(attribute_key, span_value, max_size=12),
    name=event_name,
    when=event_time,
    filler=st.sampled_from([0, 0, 10, 300, 10_000]),
)
def test_any_span_attributes(
    server: LocalMixpanel,
    attributes: Dict[str, Any],
    name: Any,
    when: Tuple[Any, Optional[bool]],
    filler: int,
) -> None:
    """Arbitrary keys and values on a span (10k attributes, 100 kB strings, lone
    surrogates, NaN, bytes, denylisted ids, bad times): export succeeds, the local
    Mixpanel refuses nothing, and a named event arrives exactly once."""
    server.clear()
    time_value, too_early = when
    attrs = dict(attributes)
    attrs.update({f"mixpanel.properties.filler{i}": i for i in range(filler)})
    if name is not None:
        attrs["mixpanel.event"] = name
    if time_value is not None:
        attrs["mixpanel.time"] = time_value
    with shut_down_after(span_exporter(server)) as exporter:
        assert exporter.export(finished_spans(attrs)) is SpanExportResult.SUCCESS
        assert_nothing_refused(server)
        expected = _named(name, too_early)
        if expected is not None:
            assert len([e for e in server.events if e["event"] == expected]) == 1
        stats = exporter.stats()
        assert all(count > 0 for kind in ("dropped", "adjusted") for count in stats[kind].values())


span_property_name = st.one_of(
    st.text(min_size=1, max_size=12),
    st.lists(
        st.one_of(st.characters(), st.sampled_from(SURROGATES)), min_size=1, max_size=8
    ).map("".join),
    st.builds(lambda char, extra: char * (255 + extra), st.characters(), st.integers(0, 3)),
).filter(lambda n: n not in SPAN_AUTO and not n.startswith("filler"))
flat_value = st.one_of(
    hostile_text, st.integers(), st.floats(), st.booleans(), st.binary(max_size=16),
    st.lists(st.one_of(st.text(max_size=8), st.integers()), max_size=300),
)


@HYPOTHESIS
@given(
    properties=st.dictionaries(span_property_name, flat_value, max_size=15),
    filler=st.sampled_from([0, 0, 100, 250, 10_000]),
)
def test_span_properties_are_accounted_for(
    server: LocalMixpanel, properties: Dict[str, Any], filler: int
) -> None:
    """Properties received + properties dropped (by reason) = properties offered:
    none goes missing silently, and every received name was offered."""
    server.clear()
    attrs: Dict[str, Any] = {"mixpanel.event": "Accounted", "mixpanel.distinct_id": "u"}
    attrs.update({f"mixpanel.properties.{k}": v for k, v in properties.items()})
    attrs.update({f"mixpanel.properties.filler{i}": i for i in range(filler)})
    spans = finished_spans(attrs)
    # What the SDK kept reaches the exporter (older APIs drop undecodable bytes).
    kept = {k[len("mixpanel.properties."):] for k in spans[0].attributes or {}}
    properties = {k: v for k, v in properties.items() if k in kept}
    with shut_down_after(span_exporter(server)) as exporter:
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert_nothing_refused(server)
        (event,) = server.events_named("Accounted")
        received = event["properties"]
        offered = len(properties) + filler + len(SPAN_AUTO)
        stats = exporter.stats()
        assert len(received) + property_drops(stats) == offered, stats
        nonfinite = sum(is_nonfinite(v) for k, v in properties.items() if len(k) <= 255)
        assert stats["dropped"].get("non_finite_number", 0) == nonfinite
        sent_names = {as_sent(k) for k in properties} | SPAN_AUTO
        sent_names |= {f"filler{i}" for i in range(filler)}
        assert set(received) <= sent_names


# Property-based: log records

log_leaf = st.one_of(
    hostile_text, st.integers(-(2**70), 2**70), st.floats(), st.booleans(),
    st.binary(max_size=16), st.none(),
)
log_value = st.recursive(
    log_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(min_size=1, max_size=6), children, max_size=5),
    ),
    max_leaves=20,
)


def _deep(levels: int) -> Any:
    value: Any = "bottom"
    for level in range(levels):
        value = {"k": value} if level % 2 else [value, 1]
    return value


log_value_or_deep = st.one_of(log_value, st.integers(4, 60).map(_deep))
log_timestamp = st.one_of(
    st.none(),
    st.integers(1, EARLIEST_S * 10**9 - 1).map(lambda ns: (ns, True)),
    st.integers(EARLIEST_S * 10**9, 2**63 - 1).map(lambda ns: (ns, False)),
)


@HYPOTHESIS
@given(
    # The SDK drops an empty key itself, with a LogRecordDroppedAttributesWarning.
    attributes=st.dictionaries(attribute_key.filter(bool), log_value_or_deep, max_size=10),
    name=event_name,
    when=event_time,
    stamp=log_timestamp,
)
def test_any_log_record_attributes(
    server: LocalMixpanel,
    attributes: Dict[str, Any],
    name: Any,
    when: Tuple[Any, Optional[bool]],
    stamp: Optional[Tuple[int, bool]],
) -> None:
    """Arbitrary nested values (dicts, lists, bytes, NaN, surrogates) and record
    timestamps on a log record: export succeeds, nothing is refused, a named event
    arrives exactly once."""
    server.clear()
    time_value, too_early = when
    attrs = dict(attributes)
    if name is not None:
        attrs["mixpanel.event"] = name
    if time_value is not None:
        attrs["mixpanel.time"] = time_value
    timestamp = None if stamp is None else stamp[0]
    if too_early is None and stamp is not None:
        too_early = stamp[1]  # no usable mixpanel.time: the record's own time counts
    with shut_down_after(log_exporter(server)) as exporter:
        records = emitted_records(attrs, timestamp=timestamp)
        assert exporter.export(records) is LogRecordExportResult.SUCCESS
        assert_nothing_refused(server)
        expected = _named(name, too_early)
        if expected is not None:
            assert len([e for e in server.events if e["event"] == expected]) == 1


log_property_name = st.text(min_size=1, max_size=10).filter(lambda n: n not in LOG_AUTO)


@pytest.mark.needs_sdk("1.33", "mapping-valued log attributes")
@HYPOTHESIS
@given(
    properties=st.dictionaries(log_property_name, log_value_or_deep, max_size=15),
    filler=st.sampled_from([0, 0, 250, 10_000]),
)
def test_log_properties_are_accounted_for(
    server: LocalMixpanel, properties: Dict[str, Any], filler: int
) -> None:
    """For a ``mixpanel.properties`` mapping of nested values: received + dropped
    top-level properties = offered, and each top-level NaN is counted."""
    server.clear()
    mapping = dict(properties)
    mapping.update({f"\x00filler{i}": i for i in range(filler)})
    with shut_down_after(log_exporter(server)) as exporter:
        records = emitted_records({
            "mixpanel.event": "Accounted", "mixpanel.distinct_id": "u",
            "mixpanel.properties": mapping,
        })
        assert exporter.export(records) is LogRecordExportResult.SUCCESS
        assert_nothing_refused(server)
        (event,) = server.events_named("Accounted")
        stats = exporter.stats()
        nonfinite = sum(is_nonfinite(v) for k, v in mapping.items() if len(k) <= 255)
        dropped = stats["dropped"]
        removed = nonfinite + sum(
            dropped.get(reason, 0)
            for reason in ("property_name_too_long", "collection_too_large", "too_many_properties")
        )
        assert len(event["properties"]) + removed == len(mapping) + len(LOG_AUTO), stats
        assert dropped.get("non_finite_number", 0) >= nonfinite


# Explicit: one per hostile category


def test_huge_string_is_cut_and_counted(mixpanel: LocalMixpanel) -> None:
    """A 100 kB string property and a 100 kB distinct_id arrive cut to 255
    characters, each counted as string_truncated."""
    exporter = span_exporter(mixpanel)
    spans = finished_spans({
        "mixpanel.event": "Big", "mixpanel.distinct_id": "d" * 100_000,
        "mixpanel.properties.big": "x" * 100_000,
    })
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert_nothing_refused(mixpanel)
    (event,) = mixpanel.events
    assert event["properties"]["big"] == "x" * 255
    assert event["properties"]["distinct_id"] == "d" * 255
    assert exporter.stats()["adjusted"]["string_truncated"] == 2


def test_ten_thousand_attributes(mixpanel: LocalMixpanel) -> None:
    """10k property attributes on one span: 254 properties arrive (required ones
    included), the rest counted as too_many_properties."""
    attrs: Dict[str, Any] = {"mixpanel.event": "Many", "mixpanel.distinct_id": "u"}
    attrs.update({f"mixpanel.properties.p{i}": i for i in range(10_000)})
    exporter = span_exporter(mixpanel)
    assert exporter.export(finished_spans(attrs)) is SpanExportResult.SUCCESS
    assert_nothing_refused(mixpanel)
    (event,) = mixpanel.events
    props = event["properties"]
    assert len(props) == 254
    assert props["distinct_id"] == "u" and "time" in props and "$insert_id" in props
    assert exporter.stats()["dropped"]["too_many_properties"] == 10_000 + len(SPAN_AUTO) - 254


@pytest.mark.needs_sdk("1.33", "mapping-valued log attributes")
def test_deep_nesting_in_log_dict(mixpanel: LocalMixpanel) -> None:
    """A 200-level nested dict on a log record is cut at Mixpanel's depth, counted."""
    deep: Any = "bottom"
    for _ in range(200):
        deep = {"k": deep}
    exporter = log_exporter(mixpanel)
    records = emitted_records({"mixpanel.event": "Deep", "mixpanel.properties": {"d": deep}})
    assert exporter.export(records) is LogRecordExportResult.SUCCESS
    assert_nothing_refused(mixpanel)
    (event,) = mixpanel.events
    assert event["properties"]["d"] == {"k": {"k": {}}}
    assert exporter.stats()["dropped"]["nested_too_deep"] == 1


def test_lone_surrogates(mixpanel: LocalMixpanel) -> None:
    """Lone surrogates in the event name, a property name and value are spelled
    out as text (so no two names merge), the event still arrives, counted as
    invalid_unicode."""
    exporter = span_exporter(mixpanel)
    spans = finished_spans({
        "mixpanel.event": "Bad\ud800Name", "mixpanel.distinct_id": "u\udfff",
        "mixpanel.properties.k\udc00": "v\ud800",
    })
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert_nothing_refused(mixpanel)
    (event,) = mixpanel.events
    assert event["event"] == "Bad\\ud800Name"
    assert event["properties"]["k\\udc00"] == "v\\ud800"
    assert event["properties"]["distinct_id"] == "u\\udfff"
    assert exporter.stats()["adjusted"]["invalid_unicode"] == 1


def test_properties_merged_by_surrogate_replacement_are_counted(mixpanel: LocalMixpanel) -> None:
    """Two property names that differ only in their lone surrogate both arrive
    (spelled out differently), or a loss is counted."""
    exporter = span_exporter(mixpanel)
    twins = {f"mixpanel.properties.a{char}": n for n, char in enumerate(("\ud800", "\udc00"))}
    assert len(twins) == 2
    spans = finished_spans(
        {"mixpanel.event": "Twins", "mixpanel.distinct_id": "u", **twins}
    )
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    (event,) = mixpanel.events
    stats = exporter.stats()
    assert len(event["properties"]) + property_drops(stats) == 2 + len(SPAN_AUTO), stats


def test_nan_and_infinity(mixpanel: LocalMixpanel) -> None:
    """NaN/±inf properties (top level and in a list) are dropped alone and counted;
    NaN in ``mixpanel.time`` falls back to the span time, counted."""
    exporter = span_exporter(mixpanel)
    spans = finished_spans({
        "mixpanel.event": "NaN", "mixpanel.properties.nan": float("nan"),
        "mixpanel.properties.inf": float("inf"), "mixpanel.properties.ninf": float("-inf"),
        "mixpanel.properties.list": [1.0, float("nan")], "mixpanel.time": float("nan"),
    })
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert_nothing_refused(mixpanel)
    (event,) = mixpanel.events
    props = event["properties"]
    assert "nan" not in props and "inf" not in props and "ninf" not in props
    assert props["list"] == [1.0]
    assert spans[0].end_time is not None
    assert props["time"] == spans[0].end_time // 1_000_000
    stats = exporter.stats()
    assert stats["dropped"]["non_finite_number"] == 4
    assert stats["adjusted"]["invalid_time"] == 1


@pytest.mark.needs_sdk("1.45", "older APIs drop undecodable bytes before an exporter sees them")
def test_bytes(mixpanel: LocalMixpanel) -> None:
    """bytes values (span and log, invalid UTF-8 too) are decoded, counted; the
    span and log exporters of one destination share its counters."""
    exporter = span_exporter(mixpanel)
    spans = finished_spans({"mixpanel.event": "Bytes", "mixpanel.properties.b": b"ok\xff"})
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert exporter.stats()["adjusted"]["bytes_decoded"] == 1
    logs = log_exporter(mixpanel)
    records = emitted_records(
        {"mixpanel.event": "LogBytes", "mixpanel.properties": {"b": b"\xfe" * 300}}
    )
    assert logs.export(records) is LogRecordExportResult.SUCCESS
    assert_nothing_refused(mixpanel)
    assert mixpanel.events_named("Bytes")[0]["properties"]["b"] == "ok\ufffd"
    assert mixpanel.events_named("LogBytes")[0]["properties"]["b"] == "\ufffd" * 85
    assert exporter.stats()["adjusted"]["bytes_decoded"] == 2
    assert logs.stats() == exporter.stats()


@pytest.mark.needs_sdk("1.39", "older SDKs drop datetime log attributes; 1.39 writes str()")
def test_naive_and_aware_datetimes_in_logs(mixpanel: LocalMixpanel) -> None:
    """Datetimes on log records (the SDK turns them into str): a naive
    ``mixpanel.time`` is UTC, an aware one keeps its offset, properties arrive as text."""
    naive = dt.datetime(2024, 1, 1, 12, 0, 0)
    aware = dt.datetime(2024, 1, 1, 12, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    exporter = log_exporter(mixpanel)
    records = emitted_records(
        {"mixpanel.event": "Naive", "mixpanel.time": naive, "mixpanel.properties.at": aware},
        {"mixpanel.event": "Aware", "mixpanel.time": aware},
    )
    assert exporter.export(records) is LogRecordExportResult.SUCCESS
    assert_nothing_refused(mixpanel)
    (naive_event,) = mixpanel.events_named("Naive")
    (aware_event,) = mixpanel.events_named("Aware")
    assert naive_event["properties"]["time"] == 1_704_110_400_000
    assert aware_event["properties"]["time"] == 1_704_110_400_000 - 2 * 3_600_000
    assert naive_event["properties"]["at"].startswith("2024-01-01")


@pytest.mark.parametrize("when", [0, -1, 31_535_999, "1970-06-01T00:00:00Z", -(10**18)])
def test_time_before_1971_is_dropped_and_counted(mixpanel: LocalMixpanel, when: Any) -> None:
    """An event time before 1971 cannot be imported: the event is dropped, counted."""
    exporter = span_exporter(mixpanel)
    spans = finished_spans({"mixpanel.event": "Old", "mixpanel.time": when})
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert_nothing_refused(mixpanel)
    assert mixpanel.events == []
    assert exporter.stats()["dropped"] == {"time_before_1971": 1}


@pytest.mark.parametrize("when", [10**11 - 1, 10**15, 1e300, "9999-12-31T23:59:59+00:00"])
def test_far_future_time_is_clamped_and_counted(mixpanel: LocalMixpanel, when: Any) -> None:
    """A time more than an hour ahead is clamped to now, counted as time_in_future."""
    exporter = span_exporter(mixpanel)
    spans = finished_spans({"mixpanel.event": "Future", "mixpanel.time": when})
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert_nothing_refused(mixpanel)
    assert len(mixpanel.events_named("Future")) == 1
    assert exporter.stats()["adjusted"] == {"time_in_future": 1}


@pytest.mark.parametrize(
    "when", [EARLIEST_S, 50_000_000, 99_999_999, "1972-06-01T00:00:00Z"]
)
def test_time_between_1971_and_1973_arrives(mixpanel: LocalMixpanel, when: Any) -> None:
    """1971-01-01 .. 1973-03-03 is importable, so such an event must arrive; sent in
    milliseconds below 1e11 Mixpanel reads it as seconds (year 2969+) and refuses it."""
    exporter = span_exporter(mixpanel)
    spans = finished_spans({"mixpanel.event": "Early", "mixpanel.time": when})
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert_nothing_refused(mixpanel)
    assert len(mixpanel.events_named("Early")) == 1


def test_log_record_timestamp_in_1972_arrives(mixpanel: LocalMixpanel) -> None:
    """A log record stamped in 1972 (no mixpanel.time) arrives, not refused."""
    exporter = log_exporter(mixpanel)
    records = emitted_records({"mixpanel.event": "Old log"}, timestamp=70_000_000 * 10**9)
    assert exporter.export(records) is LogRecordExportResult.SUCCESS
    assert_nothing_refused(mixpanel)
    assert len(mixpanel.events_named("Old log")) == 1


@pytest.mark.parametrize("distinct_id", sorted(DENYLISTED_DISTINCT_IDS))
def test_denylisted_distinct_ids(mixpanel: LocalMixpanel, distinct_id: str) -> None:
    """A distinct_id Mixpanel refuses (any letter case): the event arrives anonymous,
    the profile update and the identity event are dropped, all counted."""
    exporter = span_exporter(mixpanel)
    spans = finished_spans({
        "mixpanel.event": "Denied", "mixpanel.distinct_id": distinct_id.upper(),
        "mixpanel.people.set.plan": "pro", "mixpanel.alias": "other",
    })
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert_nothing_refused(mixpanel)
    (event,) = mixpanel.events
    assert event["event"] == "Denied" and event["properties"]["distinct_id"] == ""
    assert mixpanel.profile_updates == []
    stats = exporter.stats()
    assert stats["adjusted"]["denylisted_distinct_id"] == 1
    assert stats["dropped"]["denylisted_distinct_id"] == 2


@pytest.mark.parametrize(
    "insert_id", ["", "a" * 37, "has space", "under_score", "ünï", "x\ud800", 42, 1.5, True]
)
def test_invalid_insert_id_override(mixpanel: LocalMixpanel, insert_id: Any) -> None:
    """An invalid ``mixpanel.insert_id`` is replaced by the derived id, counted,
    never sent."""
    exporter = span_exporter(mixpanel)
    spans = finished_spans({"mixpanel.event": "Ins", "mixpanel.insert_id": insert_id})
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert_nothing_refused(mixpanel)
    (event,) = mixpanel.events
    sent = event["properties"]["$insert_id"]
    assert sent != insert_id and len(sent) == 32
    assert exporter.stats()["adjusted"] == {"invalid_insert_id": 1}


@pytest.mark.parametrize(
    "attributes",
    [
        {"mixpanel.properties.huge": 10**5000},
        {"mixpanel.properties.huge": [1, 10**5000]},
        {"mixpanel.distinct_id": 10**5000},
    ],
    ids=["property", "in-list", "distinct_id"],
)
def test_int_too_long_to_print_costs_only_itself(
    mixpanel: LocalMixpanel, attributes: Dict[str, Any]
) -> None:
    """An int Python refuses to turn into text (over 4300 digits) is one bad value:
    the event still arrives (without it), the span beside it too, export succeeds."""
    exporter = span_exporter(mixpanel)
    spans = finished_spans(
        {"mixpanel.event": "Huge", **attributes}, {"mixpanel.event": "Neighbour"}
    )
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert_nothing_refused(mixpanel)
    assert len(mixpanel.events_named("Neighbour")) == 1
    assert len(mixpanel.events_named("Huge")) == 1


@pytest.mark.parametrize("when", [1e20, -1e18, "9999-12-31T23:59:59Z"])
def test_charge_with_extreme_time_costs_only_itself(mixpanel: LocalMixpanel, when: Any) -> None:
    """``mixpanel.people.track_charge`` with an extreme ``mixpanel.time``: export
    succeeds, and the other span of the batch still arrives."""
    exporter = span_exporter(mixpanel)
    spans = finished_spans(
        {"mixpanel.distinct_id": "u", "mixpanel.time": when,
         "mixpanel.people.track_charge": 9.99},
        {"mixpanel.event": "Neighbour", "mixpanel.distinct_id": "u"},
    )
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert_nothing_refused(mixpanel)
    assert len(mixpanel.events_named("Neighbour")) == 1


def test_merge_without_service_account_is_not_sent(mixpanel: LocalMixpanel) -> None:
    """``$merge`` needs service-account auth: with a project token only, it is
    dropped and counted on our side, never refused by Mixpanel."""
    exporter = span_exporter(mixpanel)
    spans = finished_spans(
        {"mixpanel.event": "E", "mixpanel.distinct_id": "a", "mixpanel.merge": "b"}
    )
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert_nothing_refused(mixpanel)
    assert [e["event"] for e in mixpanel.events] == ["E"]
    assert sum(exporter.stats()["dropped"].values()) == 1


def test_many_large_collections_keep_the_event(mixpanel: LocalMixpanel) -> None:
    """250 list properties of ~7.7 kB each (every one under the 8 KB limit) make a
    record over 1 MB: properties should go, not the whole event."""
    attrs: Dict[str, Any] = {"mixpanel.event": "Wide"}
    attrs.update({f"mixpanel.properties.p{i}": ["y" * 250] * 30 for i in range(250)})
    exporter = span_exporter(mixpanel)
    assert exporter.export(finished_spans(attrs)) is SpanExportResult.SUCCESS
    assert_nothing_refused(mixpanel)
    assert len(mixpanel.events_named("Wide")) == 1


def test_long_distinct_id_same_on_event_and_profile(mixpanel: LocalMixpanel) -> None:
    """A 300-character distinct_id is cut on the event; the profile update of the
    same span must address the same (cut) distinct_id."""
    exporter = span_exporter(mixpanel)
    spans = finished_spans({
        "mixpanel.event": "Long", "mixpanel.distinct_id": "d" * 300,
        "mixpanel.people.set.plan": "pro",
    })
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert_nothing_refused(mixpanel)
    (event,) = mixpanel.events
    assert list(mixpanel.profiles) == [event["properties"]["distinct_id"]]


def test_multibyte_string_cut_to_255_bytes(mixpanel: LocalMixpanel) -> None:
    """docs/attributes.md: strings are cut to 255 characters *and* 255 bytes; 200
    euro signs are 600 bytes."""
    exporter = span_exporter(mixpanel)
    spans = finished_spans({"mixpanel.event": "Euro", "mixpanel.properties.e": "€" * 200})
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    (event,) = mixpanel.events
    assert len(event["properties"]["e"].encode("utf-8")) <= 255
    assert exporter.stats()["adjusted"]["string_truncated"] == 1


def test_shadowed_user_property_is_counted(mixpanel: LocalMixpanel) -> None:
    """``mixpanel.properties.time`` cannot overwrite the event time (documented);
    the user's value is lost, so it is counted, not silently discarded."""
    exporter = span_exporter(mixpanel)
    spans = finished_spans({
        "mixpanel.event": "Shadow", "mixpanel.properties.time": 5,
        "mixpanel.properties.distinct_id": "x",
    })
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    (event,) = mixpanel.events
    assert event["properties"]["time"] != 5 and event["properties"]["distinct_id"] == ""
    stats = exporter.stats()
    assert sum(stats["dropped"].values()) + sum(stats["adjusted"].values()) >= 2


def test_raw_bodies_are_valid_json(mixpanel: LocalMixpanel) -> None:
    """Whatever went in, every request body is UTF-8 JSON (gzip for /import)."""
    exporter = span_exporter(mixpanel)
    spans = finished_spans({
        "mixpanel.event": "J\ud800", "mixpanel.distinct_id": "u",
        "mixpanel.properties.s": "\udfff" * 300, "mixpanel.people.set.p": "\ud800",
    })
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert_nothing_refused(mixpanel)
    bodies: List[Sequence[Any]] = []
    for request in mixpanel.requests:
        raw = gzip.decompress(request.body) if request.path.startswith("/import") else request.body
        bodies.append(json.loads(raw.decode("utf-8")))
    assert [len(b) for b in bodies] == [1, 1]
