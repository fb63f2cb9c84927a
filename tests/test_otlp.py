"""The OTLP input: a tagged span or log record received over OTLP gives the very
Mixpanel payload the in-process exporter gives for it (one convention, one
translator), ``$insert_id`` included."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_mixpanel import MixpanelLogExporter, MixpanelSpanExporter
from otel_mixpanel._inputs._exporter import MixpanelExporterBase
from otel_mixpanel._inputs._otlp import OTLPInput, log_records, span_records
from otel_mixpanel.testing import LocalMixpanel
from tests.helpers import log, logger_provider, memory_log_exporter

SPAN_TAGS: List[Dict[str, Any]] = [
    {"mixpanel.event": "Signed Up", "mixpanel.user_id": "u1", "mixpanel.properties.plan": "pro",
     "mixpanel.properties.tags": ["a", "b"], "mixpanel.properties.seats": 3,
     "mixpanel.properties.ratio": 0.5, "mixpanel.properties.trial": True,
     "mixpanel.people.set.plan": "pro", "mixpanel.people.add.logins": 1},
    {"mixpanel.distinct_id": "u2", "mixpanel.group.key": "company", "mixpanel.group.id": "acme",
     "mixpanel.group.set.tier": "gold"},
    {"http.route": "/untagged"},
]
LOG_TAGS: List[Dict[str, Any]] = [
    {"mixpanel.event": "Paid", "mixpanel.user_id": "u3",
     "mixpanel.properties": {"amount": 9.5, "currency": "EUR"}, "mixpanel.people.set.tier": "x"},
    {"mixpanel_event": "Structlog Spelling", "mixpanel_user_id": "u4", "items": ["p", "q"]},
    {"level": "untagged"},
]
Payloads = Tuple[List[Dict[str, Any]], Dict[str, Any], Dict[Any, Any]]


def received(server: LocalMixpanel) -> Payloads:
    return list(server.events), dict(server.profiles), dict(server.groups)


@pytest.fixture
def two_servers() -> Iterator[Tuple[LocalMixpanel, LocalMixpanel]]:
    with LocalMixpanel(token="t") as in_process, LocalMixpanel(token="t") as over_otlp:
        yield in_process, over_otlp


def spans_with_events() -> List[Any]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests")
    for tags in SPAN_TAGS:
        with tracer.start_as_current_span("op", attributes=tags) as span:
            span.add_event("step", {"mixpanel.event": "Step Done", "mixpanel.properties.n": 2})
            span.add_event("untagged step", {"n": 1})
    provider.shutdown()
    return list(memory.get_finished_spans())


def emitted_log_records() -> List[Any]:
    memory = memory_log_exporter()
    provider = logger_provider(Resource.create({"service.name": "shop"}), 128)
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    for number, tags in enumerate(LOG_TAGS):
        log(provider.get_logger("app"), body=f"line {number}", attributes=tags,
            timestamp=1_732_280_000_000_000_000 + number, severity_number=SeverityNumber.INFO)
    provider.shutdown()
    return list(memory.get_finished_logs())


def over_otlp(
    server: LocalMixpanel, exporter_class: type, body: bytes,
    read: Callable[[Any, Any], Any], parse: Callable[[bytes], Tuple[Any, int]],
) -> None:
    """What the gateway does with a request body: parse, translate, deliver."""
    exporter: MixpanelExporterBase = exporter_class(token="t", api_host=server.url)
    try:
        request, _ = parse(body)
        assert exporter._deliver(read(request, exporter._properties_of_resource))
    finally:
        exporter.shutdown()


def test_a_span_over_otlp_gives_the_in_process_payload(
    two_servers: Tuple[LocalMixpanel, LocalMixpanel],
) -> None:
    in_process, otlp = two_servers
    spans = spans_with_events()
    exporter = MixpanelSpanExporter(token="t", api_host=in_process.url)
    try:
        exporter.export(spans)
    finally:
        exporter.shutdown()
    body = encode_spans(spans).SerializeToString()
    over_otlp(otlp, MixpanelSpanExporter, body, span_records, OTLPInput().parse_traces)
    expected = received(in_process)
    assert len(expected[0]) == 4  # "Signed Up" and the three tagged "Step Done" events
    assert received(otlp) == expected


def test_a_log_record_over_otlp_gives_the_in_process_payload(
    two_servers: Tuple[LocalMixpanel, LocalMixpanel],
) -> None:
    in_process, otlp = two_servers
    records = emitted_log_records()
    exporter = MixpanelLogExporter(token="t", api_host=in_process.url)
    try:
        exporter.export(records)
    finally:
        exporter.shutdown()
    body = encode_logs(records).SerializeToString()
    over_otlp(otlp, MixpanelLogExporter, body, log_records, OTLPInput().parse_logs)
    expected = received(in_process)
    assert {e["event"] for e in expected[0]} == {"Paid", "Structlog Spelling"}
    assert received(otlp) == expected


def test_counts_and_untagged_telemetry() -> None:
    """The parse reports how many spans/records a request held (for partial
    success answers); untagged ones make no record at all."""
    spans = spans_with_events()
    request, count = OTLPInput().parse_traces(encode_spans(spans).SerializeToString())
    assert count == 3
    records = list(span_records(request, lambda attributes: {}))
    assert [r.attributes.get("mixpanel.event") for r in records] == [
        "Signed Up", "Step Done", None, "Step Done", "Step Done"]
    logs, log_count = OTLPInput().parse_logs(encode_logs(emitted_log_records()).SerializeToString())
    assert log_count == 3
    assert len(list(log_records(logs, lambda attributes: {}))) == 2
