"""MixpanelSpanExporter end to end: real spans, the SDK's BatchSpanProcessor,
real HTTP to the local Mixpanel."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterator, List

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_mixpanel import ConfigurationError, MixpanelSpanExporter
from otel_mixpanel.testing import LocalMixpanel
from tests.conftest import ShutDown
from tests.helpers import FAST, until


@pytest.fixture
def provider(mixpanel: LocalMixpanel) -> Iterator[TracerProvider]:
    """A tracer provider exporting to the local Mixpanel through the batch processor."""
    tracer_provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    exporter = MixpanelSpanExporter(token=mixpanel.token, api_host=mixpanel.url)
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    yield tracer_provider
    tracer_provider.shutdown()


def finished_spans(*attribute_sets: dict[str, Any], events: Any = ()) -> List[ReadableSpan]:
    """Real ReadableSpans, recorded in memory."""
    memory = InMemorySpanExporter()
    # The SDK keeps 128 attributes by default, evicting the oldest; hostile tests need more.
    tracer_provider = TracerProvider(
        resource=Resource.create({"service.name": "shop"}),
        span_limits=SpanLimits(max_span_attributes=20_000),
    )
    tracer_provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = tracer_provider.get_tracer("test")
    for attributes in attribute_sets:
        with tracer.start_as_current_span("op", attributes=attributes) as span:
            for name, event_attributes in events:
                span.add_event(name, event_attributes)
    tracer_provider.shutdown()
    return list(memory.get_finished_spans())


def test_tagged_span_arrives_from_the_worker_thread(
    mixpanel: LocalMixpanel, provider: TracerProvider
) -> None:
    """A tagged span becomes an event, profile and group updates; the request
    thread never sends."""
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("signup") as span:
        span.set_attribute("mixpanel.event", "Signed Up")
        span.set_attribute("mixpanel.user_id", "u1")
        span.set_attribute("mixpanel.properties.plan", "pro")
        span.set_attribute("mixpanel.people.set.plan", "pro")
        span.set_attribute("mixpanel.people.add.logins", 2)
        span.set_attribute("mixpanel.group.key", "company")
        span.set_attribute("mixpanel.group.id", "acme")
        span.set_attribute("mixpanel.group.set.tier", "gold")
    assert mixpanel.requests == []  # nothing sent on this thread
    assert provider.force_flush()
    (event,) = mixpanel.events_named("Signed Up")
    props = event["properties"]
    assert props["distinct_id"] == "u1" and props["$user_id"] == "u1"
    assert props["plan"] == "pro"
    assert props["service.name"] == "shop"
    assert props["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert props["span_id"] == format(span.get_span_context().span_id, "016x")
    assert props["$duration"] >= 0
    assert mixpanel.profiles["u1"] == {"plan": "pro", "logins": 2}
    assert mixpanel.groups[("company", "acme")] == {"tier": "gold"}
    assert mixpanel.rejected == []


def test_sent_on_the_batch_worker_thread(mixpanel: LocalMixpanel) -> None:
    """Export runs on the BatchSpanProcessor's worker, not the caller."""
    seen: List[str] = []

    class Recording(MixpanelSpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            seen.append(threading.current_thread().name)
            return super().export(spans)

    tracer_provider = TracerProvider()
    exporter = Recording(token=mixpanel.token, api_host=mixpanel.url)
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=10))
    try:
        with tracer_provider.get_tracer("t").start_as_current_span("s") as span:
            span.set_attribute("mixpanel.event", "E")
        assert mixpanel.wait_for(lambda m: len(m.events) == 1)
    finally:
        tracer_provider.shutdown()
    assert seen and threading.current_thread().name not in seen


def test_untagged_spans_send_nothing(mixpanel: LocalMixpanel, shut_down: ShutDown) -> None:
    """Spans without mixpanel.* attributes (even with user.id) never leave the process."""
    exporter = shut_down(MixpanelSpanExporter(token=mixpanel.token, api_host=mixpanel.url))
    spans = finished_spans({"user.id": "u1", "http.route": "/"}, {})
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert mixpanel.requests == []


def test_each_span_carries_its_own_resource(mixpanel: LocalMixpanel, shut_down: ShutDown) -> None:
    """Spans of 100 short-lived resources, one after another: each event names its
    own service (resources come and go, so their memory, and ids, are reused)."""
    exporter = shut_down(MixpanelSpanExporter(token=mixpanel.token, api_host=mixpanel.url))
    for i in range(100):
        memory = InMemorySpanExporter()
        tracer_provider = TracerProvider(resource=Resource.create({"service.name": f"svc-{i}"}))
        tracer_provider.add_span_processor(SimpleSpanProcessor(memory))
        with tracer_provider.get_tracer("test").start_as_current_span("op") as span:
            span.set_attribute("mixpanel.event", "E")
        tracer_provider.shutdown()
        assert exporter.export(memory.get_finished_spans()) is SpanExportResult.SUCCESS
        del memory, tracer_provider, span
    services = [event["properties"]["service.name"] for event in mixpanel.events]
    assert services == [f"svc-{i}" for i in range(100)]
    assert len(exporter._resource_properties) <= 64


def test_only_mixpanel_attributes_leave_the_process(
    mixpanel: LocalMixpanel, shut_down: ShutDown
) -> None:
    """Other attributes of a tagged span are not sent."""
    exporter = shut_down(MixpanelSpanExporter(token=mixpanel.token, api_host=mixpanel.url))
    spans = finished_spans({"mixpanel.event": "E", "http.secret_header": "hunter2"})
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert b"hunter2" not in b"".join(r.body for r in mixpanel.requests)
    assert "hunter2" not in str(mixpanel.events)


def test_insert_id_is_deterministic_across_exports(
    mixpanel: LocalMixpanel, shut_down: ShutDown
) -> None:
    """The same span exported twice gives the same $insert_id, so Mixpanel keeps one."""
    exporter = shut_down(MixpanelSpanExporter(token=mixpanel.token, api_host=mixpanel.url))
    spans = finished_spans({"mixpanel.event": "Paid", "mixpanel.distinct_id": "u"})
    exporter.export(spans)
    exporter.export(spans)
    assert len(mixpanel.events) == 2
    first, second = mixpanel.events
    assert first == second
    assert len(mixpanel.unique_events()) == 1


def test_span_events_are_their_own_events(mixpanel: LocalMixpanel, shut_down: ShutDown) -> None:
    """A span event with mixpanel.event is an event with the span's identity and ids."""
    exporter = shut_down(MixpanelSpanExporter(token=mixpanel.token, api_host=mixpanel.url))
    spans = finished_spans(
        {"mixpanel.user_id": "u7", "mixpanel.properties.plan": "pro"},
        events=[("click", {"mixpanel.event": "Clicked Buy", "mixpanel.properties.button": "b"}),
                ("log", {"note": "untagged"})],
    )
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    (event,) = mixpanel.events
    assert event["event"] == "Clicked Buy"
    props = event["properties"]
    assert props["distinct_id"] == "u7" and props["button"] == "b"
    assert "plan" not in props and "$duration" not in props
    assert props["trace_id"] == format(spans[0].context.trace_id, "032x")
    assert props["time"] == spans[0].events[0].timestamp // 1_000_000


def test_a_span_of_another_making_gives_the_same_events(
    mixpanel: LocalMixpanel, shut_down: ShutDown
) -> None:
    """The SDK's own spans are read through their fields; any other ReadableSpan
    (a wrapper, a vendor's subclass) through its public properties, with the
    same result."""

    class Wrapped(ReadableSpan):  # only the public interface: its fields are hidden
        def __init__(self, inner: ReadableSpan) -> None:
            self.inner = inner

        def __getattribute__(self, name: str) -> Any:
            if name.startswith("_") and not name.startswith("__"):
                raise AttributeError(name)
            if name == "inner":
                return object.__getattribute__(self, name)
            return getattr(object.__getattribute__(self, "inner"), name)

    exporter = shut_down(MixpanelSpanExporter(token=mixpanel.token, api_host=mixpanel.url))
    spans = finished_spans(
        {"mixpanel.event": "Paid", "mixpanel.distinct_id": "u", "mixpanel.properties.n": 3},
        {"note": "untagged"},
        {"mixpanel.user_id": "u7"},
        events=[("click", {"mixpanel.event": "Clicked"}), ("log", {"note": "untagged"})],
    )
    exporter.export(spans)
    own = mixpanel.events
    mixpanel.clear()
    exporter.export([Wrapped(span) for span in spans])
    assert [e["event"] for e in own] == ["Paid", "Clicked", "Clicked", "Clicked"]
    assert mixpanel.events == own


def test_time_is_span_end_in_ms(mixpanel: LocalMixpanel, shut_down: ShutDown) -> None:
    """The event time is the span's end time, in integer milliseconds."""
    exporter = shut_down(MixpanelSpanExporter(token=mixpanel.token, api_host=mixpanel.url))
    spans = finished_spans({"mixpanel.event": "E"})
    exporter.export(spans)
    (event,) = mixpanel.events
    assert spans[0].end_time is not None
    assert event["properties"]["time"] == spans[0].end_time // 1_000_000


def test_identity_events_before_events(mixpanel: LocalMixpanel, shut_down: ShutDown) -> None:
    """In one batch, identity events are sent before the events that need them."""
    exporter = shut_down(MixpanelSpanExporter(token=mixpanel.token, api_host=mixpanel.url))
    spans = finished_spans(
        {"mixpanel.event": "Browsed", "mixpanel.distinct_id": "anon-1"},
        {"mixpanel.event": "Logged In", "mixpanel.distinct_id": "u1",
         "mixpanel.identify.anon_id": "anon-1", "mixpanel.alias": "u1-alias"},
    )
    exporter.export(spans)
    assert [e["event"] for e in mixpanel.events] == [
        "$create_alias", "$identify", "Browsed", "Logged In",
    ]


def test_merge_with_service_account(mixpanel: LocalMixpanel, shut_down: ShutDown) -> None:
    """$merge needs a service account; with one it is accepted."""
    user, secret = mixpanel.service_account
    exporter = shut_down(MixpanelSpanExporter(
        token=mixpanel.token, api_host=mixpanel.url, project_id=mixpanel.project_id,
        service_account_username=user, service_account_secret=secret,
    ))
    spans = finished_spans({"mixpanel.distinct_id": "a", "mixpanel.merge": "b"})
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    (merge,) = mixpanel.events
    assert merge["event"] == "$merge"
    assert merge["properties"]["$distinct_ids"] == ["a", "b"]


def test_hostile_values_never_raise(mixpanel: LocalMixpanel, shut_down: ShutDown) -> None:
    """100 kB strings, NaN and 400 properties: the event still arrives."""
    exporter = shut_down(MixpanelSpanExporter(token=mixpanel.token, api_host=mixpanel.url))
    attributes: dict[str, Any] = {"mixpanel.event": "Hostile", "mixpanel.distinct_id": "u"}
    attributes["mixpanel.properties.big"] = "x" * 100_000
    attributes["mixpanel.properties.nan"] = float("nan")
    attributes["mixpanel.properties.inf"] = float("inf")
    attributes.update({f"mixpanel.properties.p{i}": i for i in range(400)})
    assert exporter.export(finished_spans(attributes)) is SpanExportResult.SUCCESS
    (event,) = mixpanel.events
    assert len(event["properties"]) == 254
    assert mixpanel.rejected == []
    dropped = exporter.stats()["dropped"]
    assert dropped["non_finite_number"] == 2
    assert dropped["too_many_properties"] > 0


def test_export_after_shutdown_fails(mixpanel: LocalMixpanel, shut_down: ShutDown) -> None:
    """After shutdown, export returns FAILURE and sends nothing; shutdown is idempotent."""
    exporter = shut_down(MixpanelSpanExporter(token=mixpanel.token, api_host=mixpanel.url))
    exporter.shutdown()
    exporter.shutdown()
    assert exporter.export(finished_spans({"mixpanel.event": "E"})) is SpanExportResult.FAILURE
    assert mixpanel.requests == []
    assert exporter.stats()["dropped"] == {"exporter_shut_down": 1}  # counted, not silent


def test_outage_keeps_records_waiting_until_mixpanel_answers(
    mixpanel: LocalMixpanel, shut_down: ShutDown
) -> None:
    """While Mixpanel keeps failing, export returns at once (not after its 5 s
    timeout) and the records wait in the queue, retried, counted in
    ``stats()["waiting"]``, not dropped; once Mixpanel answers again they are
    delivered, once."""
    exporter = shut_down(MixpanelSpanExporter(
        token=mixpanel.token, api_host=mixpanel.url, timeout=5, retry_policy=FAST,
    ))
    mixpanel.fail_next(100_000, status=503)
    spans = finished_spans({"mixpanel.event": "E"}, {"mixpanel.event": "F"})
    started = time.monotonic()
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert time.monotonic() - started < 2.5
    assert until(lambda: exporter.stats()["retried"].get("events", 0) >= 3)
    stats = exporter.stats()
    assert stats["waiting"]["records"] == 2 and stats["waiting"]["bytes"] > 0
    assert stats["dropped"] == {} and stats["sent"] == {}
    assert mixpanel.events == []
    assert {r.status for r in mixpanel.requests} == {503}

    mixpanel.clear_faults()
    assert exporter.force_flush(10_000) is True
    assert sorted(e["event"] for e in mixpanel.events) == ["E", "F"]
    stats = exporter.stats()
    assert stats["sent"] == {"events": 2} and stats["dropped"] == {}
    assert stats["waiting"] == {"records": 0, "bytes": 0}


def test_shutdown_during_an_outage_counts_what_waits(
    mixpanel: LocalMixpanel, caplog: pytest.LogCaptureFixture
) -> None:
    """Shut down while Mixpanel still fails: shutdown keeps trying for its budget
    (``shutdown_timeout``), then counts what waits as ``undelivered_at_shutdown``
    in one totals line written before it returns, and sends nothing after."""
    exporter = MixpanelSpanExporter(
        token=mixpanel.token, api_host=mixpanel.url, timeout=5, retry_policy=FAST,
        shutdown_timeout=0.3,
    )
    try:
        mixpanel.fail_next(100_000, status=503)
        spans = finished_spans({"mixpanel.event": "E"}, {"mixpanel.event": "F"})
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert exporter.stats()["waiting"]["records"] == 2
    finally:
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="otel_mixpanel"):
            exporter.shutdown()
        elapsed = time.monotonic() - started
    assert 0.2 < elapsed < 3.0  # it tried for its budget, and no longer
    stats = exporter.stats()
    assert stats["dropped"] == {"undelivered_at_shutdown": 2}
    assert stats["waiting"] == {"records": 0, "bytes": 0}
    lines = [r.getMessage() for r in caplog.records if "shut down" in r.getMessage()]
    assert lines == [
        "Mixpanel exporter shut down: 0 records sent; "
        "dropped since start: undelivered_at_shutdown 2"
    ]
    requests = len(mixpanel.requests)
    time.sleep(0.1)
    assert len(mixpanel.requests) == requests  # the sender stopped
    assert mixpanel.events == []


def test_no_arguments_reads_environment(
    mixpanel: LocalMixpanel, monkeypatch: pytest.MonkeyPatch, shut_down: ShutDown
) -> None:
    """The no-argument exporter (as opentelemetry-instrument builds it) uses the variables."""
    for name, value in mixpanel.env().items():
        monkeypatch.setenv(name, value)
    exporter = shut_down(MixpanelSpanExporter())
    assert exporter.export(finished_spans({"mixpanel.event": "E"})) is SpanExportResult.SUCCESS
    assert len(mixpanel.events) == 1


def test_no_credentials_is_a_clear_error() -> None:
    """Without any credentials construction fails, naming the variables."""
    with pytest.raises(ConfigurationError, match="OTEL_EXPORTER_MIXPANEL_TOKEN"):
        MixpanelSpanExporter()


def test_tags_evicted_by_the_span_attribute_limit_are_counted(
    mixpanel: LocalMixpanel, shut_down: ShutDown, caplog: pytest.LogCaptureFixture
) -> None:
    """500 tags under the SDK's default limit of 128: the oldest, mixpanel.event
    among them, are evicted before we see the span. The event is lost, but
    never silently: counted, and the line names the fix."""
    exporter = shut_down(MixpanelSpanExporter(token=mixpanel.token, api_host=mixpanel.url))
    memory = InMemorySpanExporter()
    provider = TracerProvider()  # default SpanLimits
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("app").start_as_current_span("wide") as span:
        span.set_attribute("mixpanel.event", "Wide")
        for i in range(499):
            span.set_attribute(f"mixpanel.people.set.p{i}", i)
    with caplog.at_level(logging.WARNING):
        exporter.export(memory.get_finished_spans())
        assert exporter.force_flush(5_000)
    assert mixpanel.events_named("Wide") == []
    dropped = exporter.stats()["dropped"]
    assert dropped["span_attribute_limit"] == 500 - 128
    # What was left is a profile update without a distinct id: counted as well.
    assert dropped == {"span_attribute_limit": 372, "profile_without_distinct_id": 1}
    assert any("max_span_attributes" in r.getMessage() for r in caplog.records)


def test_the_sdks_unknown_service_name_is_not_sent(
    mixpanel: LocalMixpanel, shut_down: ShutDown
) -> None:
    exporter = shut_down(MixpanelSpanExporter(token=mixpanel.token, api_host=mixpanel.url))
    memory = InMemorySpanExporter()
    provider = TracerProvider()  # no service.name set: the SDK says unknown_service
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("app").start_as_current_span("s") as span:
        span.set_attribute("mixpanel.event", "Named")
    exporter.export(memory.get_finished_spans())
    assert exporter.force_flush(5_000)
    (event,) = mixpanel.events_named("Named")
    assert "service.name" not in event["properties"]
