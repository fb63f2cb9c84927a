"""Request-scoped identity: bound once, inherited by spans and log records,
kept apart between concurrent requests, carried across services by baggage."""

from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, Tuple

import pytest
import requests
from opentelemetry import propagate
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from otel_mixpanel import (
    MixpanelIdentityLogProcessor,
    MixpanelIdentitySpanProcessor,
    MixpanelLogExporter,
    MixpanelSpanExporter,
    bind_identity,
)
from otel_mixpanel.identity import current_identity
from otel_mixpanel.testing import LocalMixpanel
from tests.helpers import log, memory_log_exporter

Pipeline = Tuple[LoggerProvider, MixpanelLogExporter]


@pytest.fixture
def tracer_provider(mixpanel: LocalMixpanel) -> Iterator[TracerProvider]:
    """Spans get identity at start, and are exported to the local Mixpanel."""
    provider = TracerProvider()
    provider.add_span_processor(MixpanelIdentitySpanProcessor())
    provider.add_span_processor(BatchSpanProcessor(
        MixpanelSpanExporter(token=mixpanel.token, api_host=mixpanel.url)
    ))
    yield provider
    provider.shutdown()


def distinct_ids_by_event(mixpanel: LocalMixpanel) -> dict[str, str]:
    return {e["event"]: e["properties"]["distinct_id"] for e in mixpanel.events}


def test_spans_and_records_inherit_bound_identity(
    mixpanel: LocalMixpanel, tracer_provider: TracerProvider, log_pipeline: Pipeline
) -> None:
    """Inside bind_identity, tagged spans and log records carry the user; outside, not."""
    logger_provider, _ = log_pipeline
    tracer = tracer_provider.get_tracer("t")
    with bind_identity(user_id="u1", device_id="d1"):
        with tracer.start_as_current_span("checkout") as span:
            span.set_attribute("mixpanel.event", "Span Event")
        log(logger_provider.get_logger("app"), attributes={"mixpanel.event": "Log Event"})
        with tracer.start_as_current_span("own") as span:
            span.set_attribute("mixpanel.event", "Own Identity")
            span.set_attribute("mixpanel.distinct_id", "someone-else")
    with tracer.start_as_current_span("later") as span:
        span.set_attribute("mixpanel.event", "Outside")
    tracer_provider.force_flush()
    logger_provider.force_flush()
    ids = distinct_ids_by_event(mixpanel)
    assert ids == {"Span Event": "u1", "Log Event": "u1", "Own Identity": "someone-else",
                   "Outside": ""}
    (span_event,) = mixpanel.events_named("Span Event")
    assert span_event["properties"]["$device_id"] == "d1"


def test_untagged_records_are_not_touched(log_pipeline: Pipeline) -> None:
    """The log processor adds identity only to tagged records."""
    memory = memory_log_exporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(MixpanelIdentityLogProcessor())
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    with bind_identity("u1"):
        log(provider.get_logger("app"), body="plain", attributes={"x": 1})
    (record,) = memory.get_finished_logs()
    assert dict(record.log_record.attributes or {}) == {"x": 1}


def test_concurrent_threads_keep_identities_apart(
    mixpanel: LocalMixpanel, tracer_provider: TracerProvider
) -> None:
    """Two requests on two threads, interleaved, never see each other's user."""
    tracer = tracer_provider.get_tracer("t")
    both_bound = threading.Barrier(2, timeout=5)

    def request(user: str) -> None:
        with bind_identity(user_id=user):
            both_bound.wait()
            for step in range(3):
                with tracer.start_as_current_span("step") as span:
                    span.set_attribute("mixpanel.event", f"{user} step {step}")
                both_bound.wait()

    threads = [threading.Thread(target=request, args=(u,)) for u in ("alice", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    tracer_provider.force_flush()
    ids = distinct_ids_by_event(mixpanel)
    assert len(ids) == 6
    assert all(name.startswith(user) for name, user in ids.items())


def test_concurrent_asyncio_tasks_keep_identities_apart(
    mixpanel: LocalMixpanel, log_pipeline: Pipeline
) -> None:
    """Interleaved asyncio tasks of two requests keep their own identity."""
    logger_provider, _ = log_pipeline
    logger = logger_provider.get_logger("app")

    async def request(user: str) -> None:
        with bind_identity(distinct_id=user):
            for step in range(3):
                await asyncio.sleep(0)
                log(logger, attributes={"mixpanel.event": f"{user} step {step}"})

    async def main() -> None:
        await asyncio.gather(request("alice"), request("bob"))

    asyncio.run(main())
    logger_provider.force_flush()
    ids = distinct_ids_by_event(mixpanel)
    assert len(ids) == 6
    assert all(name.startswith(user) for name, user in ids.items())


def test_baggage_carries_identity_across_a_real_http_hop(
    mixpanel: LocalMixpanel, tracer_provider: TracerProvider
) -> None:
    """The edge binds with propagate=True; a downstream service (another HTTP
    server here) extracts the headers and its tagged span gets the same user."""
    tracer = tracer_provider.get_tracer("downstream")

    class Downstream(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parent = propagate.extract(dict(self.headers))
            with tracer.start_as_current_span("charge", context=parent) as span:
                span.set_attribute("mixpanel.event", "Charged")
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Downstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with bind_identity(user_id="edge-user", propagate=True):
            headers: dict[str, str] = {}
            propagate.inject(headers)
            assert "edge-user" in headers.get("baggage", "")
            response = requests.get(
                f"http://127.0.0.1:{server.server_port}/", headers=headers, timeout=5
            )
            assert response.status_code == 204
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    tracer_provider.force_flush()
    (charged,) = mixpanel.events_named("Charged")
    assert charged["properties"]["distinct_id"] == "edge-user"
    assert charged["properties"]["$user_id"] == "edge-user"


def test_bound_identity_wins_over_baggage_and_nests() -> None:
    """In-process binding overrides baggage; an inner binding adds to the outer."""
    with bind_identity("outer", propagate=True), bind_identity(user_id="inner"):
        assert current_identity() == {
            "mixpanel.distinct_id": "outer", "mixpanel.user_id": "inner",
        }
    assert current_identity() == {}


def test_identity_survives_a_context_an_instrumentation_replaces(
    mixpanel: LocalMixpanel, tracer_provider: TracerProvider, log_pipeline: Pipeline
) -> None:
    """Instrumentations attach a context extracted from the request headers
    alone (Flask's before_request, FastAPI's own tracing): a binding made
    before them, outside, still tags the request's spans and records."""
    from opentelemetry import context  # noqa: PLC0415

    logger_provider, _ = log_pipeline
    with bind_identity(user_id="u-outer"):
        token = context.attach(propagate.extract({}))  # a fresh context, as they do
        try:
            assert current_identity(context.get_current())["mixpanel.user_id"] == "u-outer"
            with tracer_provider.get_tracer("t").start_as_current_span("s") as span:
                span.set_attribute("mixpanel.event", "Inner Span")
            log(logger_provider.get_logger("app"), attributes={"mixpanel.event": "Inner Log"})
        finally:
            context.detach(token)
    assert current_identity() == {}
    tracer_provider.force_flush()
    logger_provider.force_flush()
    assert distinct_ids_by_event(mixpanel) == {"Inner Span": "u-outer", "Inner Log": "u-outer"}
