"""No feedback loops: the library's own log records and HTTP calls never
become Mixpanel events or spans, even with auto-instrumentation on."""

from __future__ import annotations

import logging
from typing import Any, Iterator, List, Tuple

import pytest
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_mixpanel import MixpanelLogExporter, MixpanelSpanExporter, _compat
from otel_mixpanel.logs import logging_handler
from otel_mixpanel.testing import LocalMixpanel

Pipeline = Tuple[LoggerProvider, MixpanelLogExporter]


@pytest.fixture
def root_handler(log_pipeline: Pipeline) -> Iterator[logging.Handler]:
    """Every stdlib record, ours included, flows into the OTel logs pipeline."""
    handler = logging_handler(log_pipeline[0])
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)


def test_own_log_records_never_become_events(
    mixpanel: LocalMixpanel, log_pipeline: Pipeline, root_handler: logging.Handler
) -> None:
    """A record from an otel_mixpanel logger is skipped even when tagged."""
    provider, exporter = log_pipeline
    logging.getLogger("otel_mixpanel._delivery").warning(
        "looks tagged", extra={"mixpanel.event": "Loop"}
    )
    logging.getLogger("app").warning("paid", extra={"mixpanel.event": "Paid"})
    # Only the library's own loggers: a name that merely starts alike is the app's.
    logging.getLogger("otel_mixpanel_demo").warning("paid", extra={"mixpanel.event": "Demo"})
    provider.force_flush()
    assert [e["event"] for e in mixpanel.events] == ["Paid", "Demo"]
    assert exporter.stats()["dropped"] == {"own_log_record": 1}


def test_failing_export_does_not_feed_itself(
    mixpanel: LocalMixpanel, log_pipeline: Pipeline, root_handler: logging.Handler
) -> None:
    """With Mixpanel failing, the exporter's warnings enter the logs pipeline
    but cause no further requests."""
    provider, _ = log_pipeline
    mixpanel.fail_next(3, status=400, body={"error": "nope"})
    logging.getLogger("app").warning("paid", extra={"mixpanel.event": "Paid"})
    for _ in range(3):
        provider.force_flush()
    assert len(mixpanel.requests) == 1


def test_own_http_calls_create_no_spans(mixpanel: LocalMixpanel) -> None:
    """With requests instrumented, exporting creates no client spans."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(BatchSpanProcessor(
        MixpanelSpanExporter(token=mixpanel.token, api_host=mixpanel.url)
    ))
    instrumentor = RequestsInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        with provider.get_tracer("app").start_as_current_span("signup") as span:
            span.set_attribute("mixpanel.event", "Signed Up")
        provider.force_flush()
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
    assert len(mixpanel.events) == 1
    assert [s.name for s in memory.get_finished_spans()] == ["signup"]


def test_a_line_logged_while_handling_a_record_does_not_come_back() -> None:
    """A processor that logs while a record is handled (older SDKs do, after
    shutdown) would feed the handler forever: the line is not handed back."""
    seen: List[Any] = []

    class Chatty(_compat.LogRecordProcessor):
        def on_emit(self, log_data: Any) -> None:
            seen.append(log_data)
            logging.getLogger("chatty").warning("handling a record")

    provider = LoggerProvider()
    provider.add_log_record_processor(Chatty())
    handler = logging_handler(provider)
    logging.getLogger().addHandler(handler)
    try:
        logging.getLogger("app").warning("paid")
    finally:
        logging.getLogger().removeHandler(handler)
        provider.shutdown()
    assert len(seen) == 1
