"""MixpanelLogExporter: OTel log records and stdlib logging, through the SDK's
BatchLogRecordProcessor, to the local Mixpanel over real HTTP."""

from __future__ import annotations

import logging
import warnings
from typing import Iterator, Tuple

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs import LoggingHandler as SdkLoggingHandler
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.trace import TracerProvider

from otel_mixpanel import MixpanelLogExporter
from otel_mixpanel.testing import LocalMixpanel
from tests.helpers import log, memory_log_exporter

Pipeline = Tuple[LoggerProvider, MixpanelLogExporter]


@pytest.fixture
def stdlib_logger() -> Iterator[logging.Logger]:
    """An application logger with no handlers left behind."""
    logger = logging.getLogger("app.test")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)


@pytest.mark.needs_sdk("1.33", "mapping-valued log attributes; before, the SDK drops them")
def test_emitted_record_arrives(mixpanel: LocalMixpanel, log_pipeline: Pipeline) -> None:
    """A record emitted with tagged attributes becomes an event and updates; a
    mapping works like the keyed form."""
    provider, _ = log_pipeline
    log(provider.get_logger("app"), timestamp=1_732_280_000_123_000_000,
        body="signed up",
        attributes={
            "mixpanel.event": "Signed Up", "mixpanel.user_id": "u1",
            "mixpanel.properties": {"plan": "pro", "seats": 3},
            "mixpanel.properties.source": "ad",
            "mixpanel.people.set": {"plan": "pro"},
        },
    )
    provider.force_flush()  # its batch processor answers None in SDK 1.33.x
    (event,) = mixpanel.events_named("Signed Up")
    props = event["properties"]
    assert (props["plan"], props["seats"], props["source"]) == ("pro", 3, "ad")
    assert props["time"] == 1_732_280_000_123
    assert props["service.name"] == "shop"
    assert mixpanel.profiles["u1"] == {"plan": "pro"}


def test_observed_timestamp_when_no_timestamp(
    mixpanel: LocalMixpanel, log_pipeline: Pipeline
) -> None:
    """Without a timestamp the record's observed time is the event time."""
    provider, _ = log_pipeline
    log(provider.get_logger("app"), observed_timestamp=1_732_280_000_999_000_000,
        attributes={"mixpanel.event": "E"})
    provider.force_flush()
    assert mixpanel.events[0]["properties"]["time"] == 1_732_280_000_999


def test_trace_ids_from_the_record(mixpanel: LocalMixpanel, log_pipeline: Pipeline) -> None:
    """A record emitted inside a span carries that span's ids onto the event."""
    provider, _ = log_pipeline
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("request") as span:
        log(provider.get_logger("app"), attributes={"mixpanel.event": "E"})
    provider.force_flush()
    props = mixpanel.events[0]["properties"]
    assert props["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert props["span_id"] == format(span.get_span_context().span_id, "016x")


def test_insert_id_stable_for_the_same_record(mixpanel: LocalMixpanel) -> None:
    """The same record exported twice dedupes; two identical-looking records do not."""
    memory = memory_log_exporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    for _ in range(2):
        log(provider.get_logger("app"), body="paid", attributes={"mixpanel.event": "Paid"})
    records = memory.get_finished_logs()
    exporter = MixpanelLogExporter(token=mixpanel.token, api_host=mixpanel.url)
    exporter.export(records)
    exporter.export(records)
    assert len(mixpanel.events) == 4
    assert len(mixpanel.unique_events()) == 2


def test_untagged_records_send_nothing(mixpanel: LocalMixpanel, log_pipeline: Pipeline) -> None:
    """Ordinary log records never leave the process."""
    provider, _ = log_pipeline
    log(provider.get_logger("app"), body="hello", attributes={"user.id": "u1", "x": 1})
    provider.force_flush()
    assert mixpanel.requests == []


@pytest.mark.needs_sdk("1.33", "mapping-valued log attributes; before, the SDK drops them")
def test_underscore_spelling_on_records(mixpanel: LocalMixpanel, log_pipeline: Pipeline) -> None:
    """Records carrying structlog's spelling (as instrumentation-structlog emits) work too."""
    provider, _ = log_pipeline
    log(provider.get_logger("app"), attributes={
        "mixpanel_event": "Paid", "mixpanel_distinct_id": "u2",
        "mixpanel_people_add": {"orders": 1},
        "mixpanel_group": {"key": "company", "id": "acme", "set": {"tier": "gold"}},
    })
    provider.force_flush()
    assert mixpanel.events_named("Paid")[0]["properties"]["distinct_id"] == "u2"
    assert mixpanel.profiles["u2"] == {"orders": 1}
    assert mixpanel.groups[("company", "acme")] == {"tier": "gold"}


def test_shutdown_through_the_provider(mixpanel: LocalMixpanel, mixpanel_env: None) -> None:
    """provider.shutdown() flushes the queue and closes the exporter."""
    provider = LoggerProvider()
    exporter = MixpanelLogExporter()
    processor = BatchLogRecordProcessor(exporter, schedule_delay_millis=60_000)
    provider.add_log_record_processor(processor)
    log(provider.get_logger("app"), attributes={"mixpanel.event": "Queued"})
    provider.shutdown()
    assert len(mixpanel.events_named("Queued")) == 1
    assert exporter.export([]).name == "FAILURE"  # closed


@pytest.mark.needs_sdk("1.40", "the handler of opentelemetry-instrumentation-logging 0.61b0+")
def test_stdlib_logging_with_instrumentation_handler(
    mixpanel: LocalMixpanel, log_pipeline: Pipeline, stdlib_logger: logging.Logger
) -> None:
    """logger.info(..., extra={"mixpanel.event": ...}) through
    opentelemetry-instrumentation-logging's handler."""
    from opentelemetry.instrumentation.logging.handler import LoggingHandler  # noqa: PLC0415

    provider, _ = log_pipeline
    stdlib_logger.addHandler(LoggingHandler(logger_provider=provider))
    stdlib_logger.info("signed up", extra={
        "mixpanel.event": "Signed Up", "mixpanel.user_id": "u3",
        "mixpanel.properties.plan": "pro",
    })
    provider.force_flush()
    (event,) = mixpanel.events_named("Signed Up")
    assert event["properties"]["distinct_id"] == "u3"
    assert event["properties"]["plan"] == "pro"


def test_stdlib_logging_with_sdk_handler(
    mixpanel: LocalMixpanel, log_pipeline: Pipeline, stdlib_logger: logging.Logger
) -> None:
    """The SDK's own (deprecated since 1.40) LoggingHandler works the same."""
    provider, _ = log_pipeline
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        stdlib_logger.addHandler(SdkLoggingHandler(logger_provider=provider))
    stdlib_logger.info("paid", extra={"mixpanel.event": "Paid", "mixpanel.user_id": "u4"})
    provider.force_flush()
    assert mixpanel.events_named("Paid")[0]["properties"]["distinct_id"] == "u4"
