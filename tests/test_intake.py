"""configure()'s ordered buffer: what waits in it for the worker, and what does not."""

from __future__ import annotations

import gc
import weakref
from typing import Any, List

from opentelemetry import trace
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

from otel_mixpanel import configure
from otel_mixpanel._compat import LogRecordProcessor
from otel_mixpanel.testing import LocalMixpanel
from tests.helpers import log, until


def test_a_tagged_span_is_read_as_it_ends_and_let_go(mixpanel: LocalMixpanel) -> None:
    """Only what Mixpanel needs of a span waits for the worker: the span object
    itself can be collected at once (a buffer of whole spans is what the garbage
    collector walks on the application's threads), and the event still carries
    everything the span said."""
    ended: List[Any] = []

    class Watch(SpanProcessor):
        def on_end(self, span: Any) -> None:  # the very object our processor is given
            ended.append(weakref.ref(span))

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(Watch())
    pipeline = configure(tracer_provider=tracer_provider, logger_provider=LoggerProvider(),
                         token=mixpanel.token, api_host=mixpanel.url,
                         schedule_delay_millis=60_000)  # the worker leaves it waiting
    try:
        with tracer_provider.get_tracer("t").start_as_current_span("checkout") as span:
            span.set_attribute("mixpanel.event", "Purchased")
            span.set_attribute("mixpanel.distinct_id", "user-1")
            span.set_attribute("mixpanel.properties.amount", 12.5)
            span.add_event("coupon", {"mixpanel.event": "Coupon Used"})
            trace_id = f"{span.get_span_context().trace_id:032x}"
        del span
        gc.collect()
        assert len(ended) == 1
        assert ended[0]() is None, "the buffer kept the whole span"

        assert pipeline.force_flush()
        events = {e["event"]: e["properties"] for e in mixpanel.events}
        assert set(events) == {"Purchased", "Coupon Used"}
        assert events["Purchased"]["amount"] == 12.5
        assert events["Purchased"]["distinct_id"] == "user-1"
        assert events["Coupon Used"]["distinct_id"] == "user-1"  # the span's identity
        assert events["Purchased"]["trace_id"] == events["Coupon Used"]["trace_id"] == trace_id
    finally:
        pipeline.shutdown()


def test_untagged_spans_take_no_place_in_the_buffer(mixpanel: LocalMixpanel) -> None:
    """A traced application ends many spans that are not for Mixpanel: none of
    them waits in the buffer, so none can push a tagged one out of it."""
    tracer_provider = TracerProvider()
    pipeline = configure(tracer_provider=tracer_provider, logger_provider=LoggerProvider(),
                         token=mixpanel.token, api_host=mixpanel.url,
                         max_queue_size=2, schedule_delay_millis=60_000)
    try:
        tracer = tracer_provider.get_tracer("t")
        for index in range(50):
            with tracer.start_as_current_span("db.query") as span:
                span.set_attribute("db.statement", f"SELECT {index}")
        with tracer.start_as_current_span("checkout") as span:
            span.set_attribute("mixpanel.event", "Purchased")
        assert pipeline.force_flush()
        assert [e["event"] for e in mixpanel.events] == ["Purchased"]
        assert pipeline.stats()["dropped"] == {}
    finally:
        pipeline.shutdown()


def test_log_records_are_read_as_they_are_emitted(mixpanel: LocalMixpanel) -> None:
    """Log records (track(), structlog, stdlib logging) wait as what Mixpanel
    needs of them, like spans: the SDK's record is let go at once, and an
    untagged one takes no place in the buffer."""
    emitted: List[Any] = []

    class Watch(LogRecordProcessor):
        def on_emit(self, log_data: Any) -> None:  # the very object our processor is given
            emitted.append(weakref.ref(log_data))

    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(Watch())
    pipeline = configure(tracer_provider=TracerProvider(), logger_provider=logger_provider,
                         token=mixpanel.token, api_host=mixpanel.url,
                         max_queue_size=2, schedule_delay_millis=60_000)
    try:
        logger = logger_provider.get_logger("app")
        for index in range(50):
            log(logger, body=f"untagged {index}", attributes={"http.route": "/"})
        log(logger, body="paid", attributes={"mixpanel.event": "Purchased",
                                             "mixpanel.distinct_id": "user-1"})
        gc.collect()
        assert len(emitted) == 51
        assert all(ref() is None for ref in emitted), "the buffer kept a whole log record"
        assert pipeline.force_flush()
        (event,) = mixpanel.events
        assert event["event"] == "Purchased"
        assert event["properties"]["distinct_id"] == "user-1"
        assert pipeline.stats()["dropped"] == {}
    finally:
        pipeline.shutdown()


def test_a_small_buffer_wakes_the_worker_before_it_fills(mixpanel: LocalMixpanel) -> None:
    """A buffer smaller than the batch size: the worker starts when it is half
    full, not at the next timer (an hour away here), so a burst is not dropped."""
    tracer_provider = TracerProvider()
    pipeline = configure(tracer_provider=tracer_provider, logger_provider=LoggerProvider(),
                         token=mixpanel.token, api_host=mixpanel.url,
                         max_queue_size=10, schedule_delay_millis=3_600_000)
    try:
        tracer = tracer_provider.get_tracer("t")
        for index in range(5):
            with tracer.start_as_current_span("checkout") as span:
                span.set_attribute("mixpanel.event", f"E{index}")
        assert until(lambda: len(mixpanel.events) == 5, timeout=20), len(mixpanel.events)
    finally:
        pipeline.shutdown()


def test_a_span_or_record_that_cannot_be_read_is_counted_never_raised(
    mixpanel: LocalMixpanel,
) -> None:
    """Reading happens on the application's thread now: whatever a span or log
    record of another making does, the application's call returns, and the
    loss is counted."""

    class Broken:
        context = trace.SpanContext(1, 2, False, trace.TraceFlags(trace.TraceFlags.SAMPLED))

        @property
        def attributes(self) -> Any:
            raise RuntimeError("no attributes")

        @property
        def log_record(self) -> Any:
            raise RuntimeError("no record")

    logger_provider = LoggerProvider()
    pipeline = configure(tracer_provider=TracerProvider(), logger_provider=logger_provider,
                         token=mixpanel.token, api_host=mixpanel.url)
    try:
        span_processor, log_processor = pipeline._processors
        span_processor.on_end(Broken())
        log_processor.on_emit(Broken())
        # A logger without a name (the SDK allows it) is read like any other.
        log(logger_provider.get_logger(None), body="x",  # type: ignore[arg-type]
            attributes={"mixpanel.event": "Nameless", "mixpanel.distinct_id": "u"})
        assert pipeline.force_flush()
        assert [e["event"] for e in mixpanel.events] == ["Nameless"]
        assert pipeline.stats()["dropped"] == {"translation_error": 2}
    finally:
        pipeline.shutdown()


def test_two_pipelines_to_one_destination_deliver_everything_at_shutdown(
    mixpanel: LocalMixpanel,
) -> None:
    """Two configure() calls with their own providers and the same destination
    share one buffer and sending queue: the last shutdown delivers what either
    sent (or counts it), and a provider already shut down counts what it still
    ends instead of sending it."""
    mixpanel.latency = 0.05
    first = configure(token=mixpanel.token, api_host=mixpanel.url,
                      tracer_provider=TracerProvider(), logger_provider=LoggerProvider())
    second = configure(token=mixpanel.token, api_host=mixpanel.url,
                       tracer_provider=TracerProvider(), logger_provider=LoggerProvider())
    try:
        for index in range(300):
            with first.tracer_provider.get_tracer("t").start_as_current_span("s") as span:
                span.set_attribute("mixpanel.event", f"First{index}")
        first.shutdown()
        with first.tracer_provider.get_tracer("t").start_as_current_span("s") as span:
            span.set_attribute("mixpanel.event", "Late")
        with second.tracer_provider.get_tracer("t").start_as_current_span("s") as span:
            span.set_attribute("mixpanel.event", "Second")
    finally:
        assert second.shutdown()
    events = [e["event"] for e in mixpanel.events]
    assert sorted(events) == sorted([f"First{i}" for i in range(300)] + ["Second"])
    assert second.stats()["dropped"] == {"exporter_shut_down": 1}
