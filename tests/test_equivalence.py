"""One convention, four inputs: a span, an OTel log record, a stdlib record
with extra=, and a structlog event give identical Mixpanel payloads (apart from
time, ids and span-only properties)."""

from __future__ import annotations

import logging
from typing import Any, Dict, Iterator, List

import pytest
import structlog
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from otel_mixpanel import MixpanelLogExporter, MixpanelSpanExporter
from otel_mixpanel.logs import logging_handler
from otel_mixpanel.structlog import MixpanelProcessor
from otel_mixpanel.testing import LocalMixpanel
from tests.helpers import log

DOTTED: Dict[str, Any] = {
    "mixpanel.event": "Purchased",
    "mixpanel.user_id": "u1",
    "mixpanel.properties.sku": "A1",
    "mixpanel.properties.amount": 9.5,
    "mixpanel.groups.company": "acme",
    "mixpanel.people.set.plan": "pro",
    "mixpanel.people.add.orders": 1,
    "mixpanel.people.track_charge": 9.5,
    "mixpanel.group.key": "company",
    "mixpanel.group.id": "acme",
    "mixpanel.group.set.tier": "gold",
    "mixpanel.alias": "u1-alias",
}
STRUCTLOG: Dict[str, Any] = {
    "mixpanel_event": "Purchased",
    "mixpanel_user_id": "u1",
    "mixpanel_properties": {"sku": "A1", "amount": 9.5},
    "mixpanel_groups": {"company": "acme"},
    "mixpanel_people_set": {"plan": "pro"},
    "mixpanel_people_add": {"orders": 1},
    "mixpanel_people_track_charge": 9.5,
    "mixpanel_group": {"key": "company", "id": "acme", "set": {"tier": "gold"}},
    "mixpanel_alias": "u1-alias",
}
VARYING = {"time", "$insert_id", "trace_id", "span_id", "$duration"}


@pytest.fixture(autouse=True)
def reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def comparable(mixpanel: LocalMixpanel) -> List[Any]:
    """Everything received, with per-record time and ids removed."""
    events = [
        {"event": e["event"], "properties": {
            k: v for k, v in e["properties"].items() if k not in VARYING
        }}
        for e in mixpanel.events
    ]
    updates = []
    for update in mixpanel.profile_updates:
        if "$append" in update:
            charge = update["$append"]["$transactions"]
            charge = {k: v for k, v in charge.items() if k != "$time"}
            updates.append({**update, "$append": {"$transactions": charge}})
        else:
            updates.append(update)
    return [events, updates, mixpanel.group_updates]


def via_span(mixpanel: LocalMixpanel) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_span_processor(BatchSpanProcessor(
        MixpanelSpanExporter(token=mixpanel.token, api_host=mixpanel.url)
    ))
    with provider.get_tracer("t").start_as_current_span("checkout", attributes=DOTTED):
        pass
    provider.shutdown()


def log_provider(mixpanel: LocalMixpanel) -> LoggerProvider:
    provider = LoggerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_log_record_processor(BatchLogRecordProcessor(
        MixpanelLogExporter(token=mixpanel.token, api_host=mixpanel.url)
    ))
    return provider


def via_log_record(mixpanel: LocalMixpanel) -> None:
    provider = log_provider(mixpanel)
    log(provider.get_logger("app"), body="purchased", attributes=DOTTED)
    provider.shutdown()


def via_stdlib(mixpanel: LocalMixpanel) -> None:
    provider = log_provider(mixpanel)
    logger = logging.getLogger("app.equivalence")
    logger.propagate = False
    handler = logging_handler(provider)
    logger.addHandler(handler)
    try:
        logger.warning("purchased", extra=DOTTED)
    finally:
        logger.removeHandler(handler)
    provider.shutdown()


def via_structlog(mixpanel: LocalMixpanel) -> None:
    provider = log_provider(mixpanel)
    structlog.configure(
        processors=[MixpanelProcessor(provider), structlog.processors.JSONRenderer()],
        logger_factory=structlog.ReturnLoggerFactory(),
    )
    structlog.get_logger().info("purchased", **STRUCTLOG)
    provider.shutdown()


def test_four_inputs_one_payload() -> None:
    """Each input, against its own local Mixpanel, yields the same content."""
    received = []
    for send in (via_span, via_log_record, via_stdlib, via_structlog):
        with LocalMixpanel() as mixpanel:
            send(mixpanel)
            assert mixpanel.rejected == []
            received.append(comparable(mixpanel))
    span, log_record, stdlib, structlog_event = received
    assert [e["event"] for e in span[0]] == ["$create_alias", "Purchased"]
    assert span[0][1]["properties"]["sku"] == "A1"
    assert log_record == span
    assert stdlib == span
    assert structlog_event == span
