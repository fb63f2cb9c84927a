"""The sending queue (otel_mixpanel/_queue): sharing, bounds, backoff limits at
shutdown, and logs whose numbers match stats()."""

from __future__ import annotations

import errno
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.trace import TracerProvider

from otel_mixpanel import MixpanelLogExporter, MixpanelSpanExporter, RetryPolicy, configure
from otel_mixpanel._model import Endpoint
from otel_mixpanel._queue._backend import MemoryBackend, Take
from otel_mixpanel._queue._batch import Batch
from otel_mixpanel._stats import Stats
from otel_mixpanel.logs import logging_handler
from otel_mixpanel.testing import LocalMixpanel
from tests.helpers import FAST, finished_spans


def test_exporters_with_the_same_settings_share_one_queue(mixpanel: LocalMixpanel) -> None:
    """Built by hand, a span and a log exporter to one project share the queue,
    its sender and its counters; another project gets its own."""
    spans = MixpanelSpanExporter(token=mixpanel.token, api_host=mixpanel.url, retry_policy=FAST)
    logs = MixpanelLogExporter(token=mixpanel.token, api_host=mixpanel.url, retry_policy=FAST,
                               trace_ids=False)  # shapes records only: same destination
    other = MixpanelSpanExporter(token="other", api_host=mixpanel.url, retry_policy=FAST)
    try:
        assert spans._queue is logs._queue
        assert other._queue is not spans._queue
        spans.export(finished_spans({"mixpanel.event": "A"}))
        assert logs.stats()["sent"] == {"events": 1}
        assert other.stats()["sent"] == {}
    finally:
        spans.shutdown()
        assert not logs._queue._closed  # the last user closes it
        logs.shutdown()
        other.shutdown()
    assert logs._queue._closed


def test_memory_bound_evicts_the_oldest_and_counts_them() -> None:
    evicted: List[int] = []
    backend = MemoryBackend(max_bytes=3_000, on_evict=evicted.append)
    record = b'{"event":"E","properties":{"n":"%s"}}'
    for batch in range(40):
        backend.append(Endpoint.IMPORT, [record % str(batch * 10 + i).encode() for i in range(10)])
    records, held = backend.count()
    assert held <= 3_000
    assert sum(evicted) + records == 400
    take = backend.take(1000, 10**6)
    assert take is not None
    assert take.records[0] == record % str(400 - records).encode()  # the oldest left


def test_waiting_records_are_held_compressed() -> None:
    backend = MemoryBackend(max_bytes=10**9, on_evict=lambda n: None)
    event = b'{"event":"Purchased","properties":{"plan":"pro","seats":12,"currency":"EUR"}}'
    for _ in range(100):
        backend.append(Endpoint.IMPORT, [event] * 100)
    records, held = backend.count()
    assert records == 10_000
    assert held < len(event) * records / 5
    take = backend.take(2000, 10**7)
    assert take is not None and take.records == [event] * 2000  # merged, unpacked, in order
    backend.settle(take, [])
    assert backend.count()[0] == 8_000


def test_a_retry_after_beyond_the_budget_ends_the_shutdown_at_once(
    mixpanel: LocalMixpanel,
) -> None:
    exporter = MixpanelSpanExporter(
        token=mixpanel.token, api_host=mixpanel.url, retry_policy=FAST, shutdown_timeout=5,
    )
    mixpanel.fail_for(60, status=429, headers={"Retry-After": "30"})
    exporter.export(finished_spans({"mixpanel.event": "A"}))
    started = time.monotonic()
    exporter.shutdown()
    assert time.monotonic() - started < 2.0
    assert exporter.stats()["dropped"] == {"undelivered_at_shutdown": 1}
    assert len(mixpanel.requests) == 1  # Mixpanel asked for 30 s: no attempt before
    mixpanel.clear_faults()


def test_rate_limited_lines_add_up_to_stats(
    mixpanel: LocalMixpanel, caplog: pytest.LogCaptureFixture
) -> None:
    """Each line says how many since the last such line and the running total;
    what came after the last one is in the shutdown line, which matches stats()."""
    exporter = MixpanelSpanExporter(
        token=mixpanel.token, api_host=mixpanel.url, retry_policy=FAST,
        property_allowlist=["plan"],
    )
    clock = [0.0]
    exporter._stats._clock = lambda: clock[0]
    try:
        with caplog.at_level(logging.WARNING):
            for minute in range(3):
                clock[0] = minute * 61.0
                for _ in range(minute + 2):
                    exporter.export(finished_spans({"mixpanel.event": "E", "secret": 1}))
    finally:
        exporter.shutdown()
    messages = [r.getMessage() for r in caplog.records]
    lines = [m for m in messages if m.startswith("Mixpanel: dropped")]
    assert len(lines) == 3  # one a minute
    numbers = [tuple(map(int, re.findall(r"dropped (\d+) .* (\d+) in all", line)[0]))
               for line in lines]
    assert sum(since for since, _ in numbers) == numbers[-1][1]
    total = exporter.stats()["dropped"]["property_not_allowed"]
    assert numbers[-1][1] < total  # the drops of the last minute: not logged yet...
    assert f"property_not_allowed {total}" in messages[-1]  # ...but in the shutdown line


def test_no_sender_thread_outlives_its_queue(mixpanel: LocalMixpanel) -> None:
    before = set(threading.enumerate())
    exporter = MixpanelSpanExporter(token=mixpanel.token, api_host=mixpanel.url)
    exporter.export(finished_spans({"mixpanel.event": "A"}))
    started = [t for t in threading.enumerate() if t not in before]
    started = [t for t in started if t.name == "otel-mixpanel-sender"]
    assert len(started) == 1
    exporter.shutdown()
    assert not any(t.is_alive() for t in started)


def test_an_abandoned_exporter_lets_its_queue_go(mixpanel: LocalMixpanel) -> None:
    """Dropped without shutdown() while Mixpanel fails: its sender stops rather
    than retrying forever."""
    exporter = MixpanelSpanExporter(
        token=mixpanel.token, api_host=mixpanel.url,
        retry_policy=RetryPolicy(initial=0.01, maximum=0.01, jitter=(0, 0)),
    )
    queue = exporter._queue
    mixpanel.fail_for(30, status=503)
    exporter.export(finished_spans({"mixpanel.event": "A"}))
    del exporter
    deadline = time.monotonic() + 5
    while not queue._closed and time.monotonic() < deadline:
        import gc  # noqa: PLC0415

        gc.collect()
        time.sleep(0.05)
    assert queue._closed
    assert queue.stats.snapshot()["dropped"] == {"undelivered_at_shutdown": 1}
    mixpanel.clear_faults()


def test_a_hanging_request_cannot_stretch_shutdown_or_hide_the_loss(
    mixpanel: LocalMixpanel, caplog: pytest.LogCaptureFixture
) -> None:
    """Mixpanel accepts the connection and never answers: shutdown ends within
    its budget, and the loss is counted and logged before it returns."""
    mixpanel.fail_for(30, status=None, delay=30)
    pipeline = configure(
        tracer_provider=TracerProvider(), logger_provider=LoggerProvider(),
        token=mixpanel.token, api_host=mixpanel.url, timeout=5, shutdown_timeout=1.0,
        schedule_delay_millis=20,
    )
    tracer = pipeline.tracer_provider.get_tracer("app")
    for i in range(5):
        with tracer.start_as_current_span("s") as span:
            span.set_attribute("mixpanel.event", f"E{i}")
    time.sleep(0.3)  # the request is on the wire
    with caplog.at_level(logging.INFO, logger="otel_mixpanel"):
        started = time.monotonic()
        assert pipeline.shutdown() is False
        took = time.monotonic() - started
    assert took < 1.0 + 1.0
    assert pipeline.stats()["dropped"] == {"undelivered_at_shutdown": 5}
    assert "undelivered_at_shutdown 5" in caplog.records[-1].getMessage()
    mixpanel.clear_faults()


def test_a_bound_smaller_than_one_batch_still_delivers(mixpanel: LocalMixpanel) -> None:
    exporter = MixpanelSpanExporter(
        token=mixpanel.token, api_host=mixpanel.url, queue_max_bytes=1_000,
    )
    try:
        exporter.export(finished_spans(*({"mixpanel.event": f"E{i}"} for i in range(50))))
        assert exporter.force_flush(5_000)
    finally:
        exporter.shutdown()
    assert len(mixpanel.unique_events()) == 50
    assert exporter.stats()["dropped"] == {}


def test_shutdown_after_a_long_outage_tries_at_once(mixpanel: LocalMixpanel) -> None:
    """The backoff has grown past the budget, but Mixpanel is back: shutdown
    tries once at once instead of giving up."""
    exporter = MixpanelSpanExporter(
        token=mixpanel.token, api_host=mixpanel.url, shutdown_timeout=5,
        retry_policy=RetryPolicy(initial=60, maximum=60, jitter=(0, 0)),
    )
    mixpanel.fail_next(1, status=503)
    exporter.export(finished_spans({"mixpanel.event": "A"}))
    assert mixpanel.wait_for(lambda s: len(s.requests) == 1)
    started = time.monotonic()
    exporter.shutdown()
    assert time.monotonic() - started < 2.0
    assert [e["event"] for e in mixpanel.unique_events()] == ["A"]
    assert exporter.stats()["dropped"] == {}


def test_a_hanging_mixpanel_never_fills_configures_buffer(mixpanel: LocalMixpanel) -> None:
    """configure()'s buffer is drained whatever Mixpanel does: a request that
    hangs holds no thread that the buffer needs."""
    mixpanel.fail_for(1.0, status=None, delay=1.0)
    pipeline = configure(
        tracer_provider=TracerProvider(), logger_provider=LoggerProvider(),
        token=mixpanel.token, api_host=mixpanel.url, timeout=5,
        max_queue_size=50, max_export_batch_size=10, schedule_delay_millis=10,
    )
    tracer = pipeline.tracer_provider.get_tracer("app")
    try:
        for i in range(300):
            with tracer.start_as_current_span("s") as span:
                span.set_attribute("mixpanel.event", f"E{i}")
            time.sleep(0.002)
        assert pipeline.force_flush(10_000)
    finally:
        pipeline.shutdown()
    assert "queue_full" not in pipeline.stats()["dropped"]
    assert len(mixpanel.unique_events()) == 300


def test_held_back_counts_reach_the_log_after_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    clock = [0.0]
    stats = Stats(logging.getLogger("otel_mixpanel.test"), clock=lambda: clock[0])
    with caplog.at_level(logging.WARNING, logger="otel_mixpanel.test"):
        for _ in range(5):
            stats.dropped("queue_full", detail="full")
        stats.log_due()
        clock[0] = 61.0
        stats.log_due()
    assert [r.getMessage() for r in caplog.records] == [
        "Mixpanel: dropped 1 for reason queue_full since the last such line, 1 in all (full)",
        "Mixpanel: dropped 4 for reason queue_full since the last such line, 5 in all",
    ]


def test_a_second_queue_for_the_same_project_is_named(
    mixpanel: LocalMixpanel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="otel_mixpanel"):
        spans = MixpanelSpanExporter(token=mixpanel.token, api_host=mixpanel.url, timeout=10)
        logs = MixpanelLogExporter(token=mixpanel.token, api_host=mixpanel.url, timeout=5)
    try:
        assert spans._queue is not logs._queue
        assert any("second sending queue" in r.getMessage() and "timeout" in r.getMessage()
                   for r in caplog.records)
    finally:
        spans.shutdown()
        logs.shutdown()


def test_a_refusal_logged_through_an_otel_handler_does_not_deadlock(
    mixpanel: LocalMixpanel,
) -> None:
    """The sender counts a refusal while holding the queue's lock; its log line
    reaches a handler whose exporter waits on that lock. Lines are held until
    the lock is released."""
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor  # noqa: PLC0415

    mixpanel.refuse_records(lambda record: "refused for the test")
    provider = LoggerProvider()
    exporter = MixpanelLogExporter(token=mixpanel.token, api_host=mixpanel.url)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    # The library's own lines (logger "otel_mixpanel") reach the same handler, as
    # they would through the root logger; kept off the root for this test alone.
    ours, app_logger = logging.getLogger("otel_mixpanel"), logging.getLogger("app.deadlock")
    handler = logging_handler(provider)
    for logger in (ours, app_logger):
        logger.addHandler(handler)
        logger.propagate = False
    app_logger.setLevel(logging.INFO)
    try:
        app = threading.Thread(target=lambda: app_logger.info(
            "signup", extra={"mixpanel.event": "Signed Up", "mixpanel.distinct_id": "u"}),
            daemon=True)
        app.start()
        app.join(10)
        assert not app.is_alive()
    finally:
        for logger in (ours, app_logger):
            logger.removeHandler(handler)
            logger.propagate = True
        app_logger.setLevel(logging.NOTSET)
        exporter.shutdown()
    assert exporter.stats()["dropped"].get("rejected_by_mixpanel") == 1


def test_a_failed_segment_rewrite_never_resends_what_mixpanel_applied(
    mixpanel: LocalMixpanel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk is full when the spool should drop the $add Mixpanel just
    applied: the sender lives on, and the update is not sent again."""
    from otel_mixpanel._queue._spool import Spool  # noqa: PLC0415

    rewrite, calls = Spool.rewrite, []

    def full_disk_once(self: Spool, segment: Any, records: Any) -> None:
        calls.append(len(records))
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        rewrite(self, segment, records)

    monkeypatch.setattr(Spool, "rewrite", full_disk_once)
    mixpanel.fail_next(1, status=503, endpoint="/engage")  # then a one-record probe, a rewrite
    exporter = MixpanelSpanExporter(
        token=mixpanel.token, api_host=mixpanel.url, retry_policy=FAST, spool_dir=str(tmp_path),
    )
    updates = [{"mixpanel.distinct_id": "u", f"mixpanel.people.add.n{i}": 1} for i in range(3)]
    try:
        exporter.export(finished_spans(*updates))
        assert exporter.force_flush(5_000)
        exporter.export(finished_spans({"mixpanel.distinct_id": "u", "mixpanel.people.add.x": 1}))
        assert exporter.force_flush(5_000)
    finally:
        exporter.shutdown()
    assert calls and mixpanel.profiles["u"] == {"n0": 1, "n1": 1, "n2": 1, "x": 1}


def test_after_shutdown_only_tagged_telemetry_counts_as_lost(mixpanel: LocalMixpanel) -> None:
    """The SDK cannot remove our processors: after pipeline.shutdown() every span
    still reaches them. The application's untagged spans are no loss."""
    pipeline = configure(tracer_provider=TracerProvider(), logger_provider=LoggerProvider(),
                         token=mixpanel.token, api_host=mixpanel.url)
    pipeline.shutdown()
    tracer = pipeline.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("untagged"):
        pass
    with tracer.start_as_current_span("tagged") as span:
        span.set_attribute("mixpanel.event", "Late")
    assert pipeline.stats()["dropped"] == {"exporter_shut_down": 1}


def test_records_handed_over_at_interpreter_exit_are_still_sent(
    mixpanel: LocalMixpanel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From Python 3.12 no thread starts while the interpreter exits, when an
    atexit flush hands over the first records: shutdown sends them itself."""
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        if thread.name == "otel-mixpanel-sender":
            raise RuntimeError("can't create new thread at interpreter shutdown")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    exporter = MixpanelSpanExporter(token=mixpanel.token, api_host=mixpanel.url)
    exporter.export(finished_spans(*({"mixpanel.event": f"E{i}"} for i in range(3))))
    assert mixpanel.events == []  # no sender could start
    exporter.shutdown()
    assert sorted(e["event"] for e in mixpanel.events) == ["E0", "E1", "E2"]
    assert exporter.stats()["dropped"] == {}


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.lists(st.binary(min_size=1, max_size=40), max_size=6), max_size=6),
    st.integers(min_value=1, max_value=12), st.integers(min_value=2, max_value=200),
)
def test_a_take_fills_as_one_record_at_a_time_would(
    entries: List[List[bytes]], max_records: int, max_bytes: int,
) -> None:
    """Whole entries are taken in one step when they fit: the same records, sizes
    and parts as taking them one by one."""
    take = Take(Endpoint.IMPORT, [])
    expected_records: List[bytes] = []
    expected_size, expected_parts = 2, []
    for number, records in enumerate(entries):
        used = 0
        for record in records:  # the rule, record by record
            if expected_records and (len(expected_records) >= max_records
                                     or expected_size + len(record) + 1 > max_bytes):
                break
            expected_records.append(record)
            expected_size += len(record) + 1
            used += 1
        if used:
            expected_parts.append((number, used))
        assert take.fill(number, records, max_records, max_bytes) == used
        if used < len(records):
            break
    assert (take.records, take.size, take.parts) == (
        expected_records, expected_size, expected_parts)
    batch = Batch.of_records(Endpoint.IMPORT, take.records)
    one_by_one = Batch(Endpoint.IMPORT)
    for record in take.records:
        one_by_one.add(None, record)
    assert (batch.records, batch.size, batch.body()) == (
        one_by_one.records, one_by_one.size, one_by_one.body())
