"""Shutdown and flush stay bounded with Mixpanel dead or hanging, and keep
delivering within their budget; the spool carries records across restarts; the
last exporter of a destination closes its queue; a forked child sends its own
records only."""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from pathlib import Path
from typing import AbstractSet, Callable, List

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult

from otel_mixpanel import MixpanelLogExporter, MixpanelSpanExporter, RetryPolicy
from otel_mixpanel._queue._spool import Spool
from otel_mixpanel.testing import LocalMixpanel
from tests.collector import free_port
from tests.conftest import SENDER
from tests.helpers import emit, finished_spans, refusing_port

FAST = RetryPolicy(initial=0.05, maximum=0.1, jitter=(0, 0))




def senders_since(before: AbstractSet[threading.Thread]) -> List[threading.Thread]:
    """Sender threads running now that were not in *before*."""
    return [t for t in threading.enumerate() if t.name == SENDER and t not in before]


def events(*names: str) -> List[ReadableSpan]:
    """Real ReadableSpans, each tagged as the event *name*."""
    return finished_spans(*({"mixpanel.event": name} for name in names))


def totals_lines(caplog: pytest.LogCaptureFixture) -> List[str]:
    """The lines the queues wrote when they closed."""
    return [r.getMessage() for r in caplog.records
            if r.getMessage().startswith("Mixpanel exporter shut down")]




def pipeline(exporter: MixpanelSpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60_000))
    return provider


def finishes(action: Callable[[], object], limit: float = 30.0) -> bool:
    """Run *action* on a thread; True if it returned within *limit* seconds
    (a liveness bound far above the expected time, not a speed test)."""
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    thread.join(timeout=limit)
    return not thread.is_alive()


def test_shutdown_with_mixpanel_dead_keeps_everything_in_the_spool(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Connection refused: shutdown returns once its budget is spent, every
    record waits in the spool for the next start (none counted lost), and the
    totals line says so."""
    exporter = MixpanelSpanExporter(
        token="t", api_host=f"http://127.0.0.1:{refusing_port()}", timeout=0.5,
        retry_policy=FAST, spool_dir=str(tmp_path), shutdown_timeout=0.5,
    )
    provider = pipeline(exporter)
    emit(provider, 1200)  # three export batches of 512 at shutdown
    with caplog.at_level(logging.INFO, logger="otel_mixpanel"):
        assert finishes(provider.shutdown)
    status = Spool(tmp_path).status()
    assert status.by_endpoint == {"/import": 1200, "/engage": 1200}
    stats = exporter.stats()
    assert stats["dropped"] == {} and stats["sent"] == {}
    assert stats["retried"]["events"] >= 1
    assert stats["waiting"]["records"] == 2400
    assert totals_lines(caplog) == [
        f"Mixpanel exporter shut down: 0 records sent; 2400 records wait in {tmp_path} "
        "for the next start"
    ]


def test_shutdown_with_mixpanel_hanging(tmp_path: Path, mixpanel: LocalMixpanel) -> None:
    """A server that never answers in time: flush and shutdown still return, and
    the exporter's force_flush says it could not finish."""
    mixpanel.fail_next(100, status=None, delay=20)
    exporter = MixpanelSpanExporter(
        token=mixpanel.token, api_host=mixpanel.url, timeout=0.5, retry_policy=FAST,
        spool_dir=str(tmp_path), shutdown_timeout=1.0,
    )
    provider = pipeline(exporter)
    try:
        emit(provider, 10)
        assert finishes(provider.force_flush)
        flushed: List[bool] = []
        assert finishes(lambda: flushed.append(exporter.force_flush(300)))
        assert flushed == [False]
        emit(provider, 10, prefix="F")
    finally:
        assert finishes(provider.shutdown)
    stats = exporter.stats()
    # The timed-out /import requests stay in the spool (Mixpanel dedupes their
    # events by $insert_id if it applied one late); the profile updates queued
    # behind them were never sent, so none has an unknown outcome.
    assert Spool(tmp_path).status().by_endpoint == {"/import": 20, "/engage": 20}
    assert stats["dropped"] == {} and stats["sent"] == {}


def test_restart_replays_the_spool(tmp_path: Path, mixpanel: LocalMixpanel) -> None:
    """Queued while Mixpanel is down, shut down, restarted with Mixpanel up:
    every event arrives once and every update is applied once."""
    down = MixpanelSpanExporter(
        token=mixpanel.token, api_host=f"http://127.0.0.1:{refusing_port()}", timeout=0.5,
        retry_policy=FAST, spool_dir=str(tmp_path), shutdown_timeout=0.3,
    )
    provider = pipeline(down)
    emit(provider, 50)
    provider.shutdown()
    assert Spool(tmp_path).status().records == 100
    assert down.stats()["dropped"] == {}
    restarted = MixpanelSpanExporter(
        token=mixpanel.token, api_host=mixpanel.url, spool_dir=str(tmp_path),
    )
    try:
        assert mixpanel.wait_for(lambda m: len(m.profile_updates) == 50, timeout=20)
    finally:
        restarted.shutdown()
    assert restarted.stats()["sent"] == {"events": 50, "profile_updates": 50}
    assert len(mixpanel.unique_events()) == 50
    assert mixpanel.profiles["u"] == {f"E{i}": 1 for i in range(50)}
    assert Spool(tmp_path).status().records == 0


def test_forked_child_sends_only_its_own(mixpanel: LocalMixpanel) -> None:
    """After fork, the child uses its own connection and never sends what the
    parent had queued; the parent still delivers its own records once."""
    exporter = MixpanelSpanExporter(token=mixpanel.token, api_host=mixpanel.url)
    provider = pipeline(exporter)
    try:
        emit(provider, 1, prefix="Warmup")
        provider.force_flush()  # the parent's HTTP session now holds a connection
        emit(provider, 3, prefix="Parent")  # queued, not yet exported
        sent_before = exporter.stats()["sent"]["events"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
            pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                emit(provider, 2, prefix="Child")
                provider.shutdown()
                code = 0 if exporter.stats()["sent"]["events"] - sent_before == 2 else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
    finally:
        provider.shutdown()
    names = sorted(e["event"] for e in mixpanel.events)
    assert names == ["Child0", "Child1", "Parent0", "Parent1", "Parent2", "Warmup0"]


def test_live_updates_never_overtake_the_spool(tmp_path: Path) -> None:
    """Updates spooled during an outage ("$set plan=free", a hundred times) and a
    newer "$set plan=pro" sent while the spool is still draining reach Mixpanel in
    that order, so the profile ends on pro."""
    server = LocalMixpanel(port=free_port())  # started later
    down = MixpanelSpanExporter(
        token=server.token, api_host=f"http://127.0.0.1:{server.port}", timeout=0.3,
        retry_policy=FAST, spool_dir=str(tmp_path), shutdown_timeout=0.3,
    )
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(down, max_export_batch_size=1))

    def set_plan(tracer_provider: TracerProvider, plan: str) -> None:
        with tracer_provider.get_tracer("t").start_as_current_span("s") as span:
            span.set_attribute("mixpanel.distinct_id", "u")
            span.set_attribute("mixpanel.people.set.plan", plan)

    for _ in range(100):
        set_plan(provider, "free")
    provider.shutdown()  # Mixpanel is down: a hundred segments wait in the spool
    server.start()
    try:
        restarted = pipeline(MixpanelSpanExporter(
            token=server.token, api_host=server.url, spool_dir=str(tmp_path),
        ))  # starts draining the spool in the background
        try:
            set_plan(restarted, "pro")
            restarted.force_flush()
            assert server.wait_for(lambda m: len(m.profile_updates) == 101, timeout=30)
        finally:
            restarted.shutdown()
        plans = [u["$set"]["plan"] for u in server.profile_updates]
        assert plans == ["free"] * 100 + ["pro"]
        assert server.profiles["u"]["plan"] == "pro"
    finally:
        server.stop()


def test_shutdown_delivers_what_waits_once_mixpanel_answers(mixpanel: LocalMixpanel) -> None:
    """Shutdown during a short outage keeps delivering: it returns as soon as
    every record is answered, long before its budget, with nothing lost."""
    exporter = MixpanelSpanExporter(
        token=mixpanel.token, api_host=mixpanel.url, retry_policy=FAST, shutdown_timeout=15,
    )
    try:
        mixpanel.fail_for(0.5, status=503)
        assert exporter.export(events("A", "B")) is SpanExportResult.SUCCESS
        assert exporter.stats()["waiting"]["records"] == 2
    finally:
        started = time.monotonic()
        exporter.shutdown()
        elapsed = time.monotonic() - started
    assert elapsed < 5
    assert sorted(e["event"] for e in mixpanel.events) == ["A", "B"]
    stats = exporter.stats()
    assert stats["dropped"] == {} and stats["sent"] == {"events": 2}
    assert stats["waiting"] == {"records": 0, "bytes": 0}


def test_shutdown_timeout_millis_caps_the_budget(
    mixpanel: LocalMixpanel, caplog: pytest.LogCaptureFixture
) -> None:
    """``shutdown(timeout_millis)`` shorter than ``shutdown_timeout`` (20 s by
    default) bounds the drain; what is left is counted before it returns."""
    exporter = MixpanelSpanExporter(token=mixpanel.token, api_host=mixpanel.url, retry_policy=FAST)
    try:
        mixpanel.fail_next(100_000, status=503)
        assert exporter.export(events("E")) is SpanExportResult.SUCCESS
    finally:
        started = time.monotonic()
        exporter.shutdown(timeout_millis=300)
        elapsed = time.monotonic() - started
    assert elapsed < 3
    assert exporter.stats()["dropped"] == {"undelivered_at_shutdown": 1}
    assert totals_lines(caplog) == [
        "Mixpanel exporter shut down: 0 records sent; dropped since start: "
        "undelivered_at_shutdown 1"
    ]


def test_the_last_exporter_of_a_destination_closes_its_queue(mixpanel: LocalMixpanel) -> None:
    """A span and a log exporter of one destination share one queue: shutting
    the first down neither drops nor stops what waits; the last one drains it."""
    spans = MixpanelSpanExporter(
        token=mixpanel.token, api_host=mixpanel.url, retry_policy=FAST, shutdown_timeout=5,
    )
    logs = MixpanelLogExporter(
        token=mixpanel.token, api_host=mixpanel.url, retry_policy=FAST, shutdown_timeout=5,
    )
    try:
        mixpanel.fail_next(100_000, status=503)
        assert spans.export(events("E")) is SpanExportResult.SUCCESS
        started = time.monotonic()
        spans.shutdown()
        assert time.monotonic() - started < 1  # not the last: nothing to drain
        assert logs.stats()["waiting"]["records"] == 1
        assert logs.stats()["dropped"] == {}
        requests = len(mixpanel.requests)
        assert mixpanel.wait_for(lambda m: len(m.requests) > requests)  # still retrying
        mixpanel.clear_faults()
        assert logs.force_flush(10_000) is True
        assert [e["event"] for e in mixpanel.events] == ["E"]
    finally:
        if not spans._is_shut_down:
            spans.shutdown()
        logs.shutdown()
    assert logs.stats()["dropped"] == {} and logs.stats()["sent"] == {"events": 1}



def shut_down_while_a_request_is_held(
    mixpanel: LocalMixpanel, exporter: MixpanelSpanExporter, spans: List[ReadableSpan]
) -> None:
    """Export *spans* into a request Mixpanel holds for 1 s and then stores;
    shut down 0.2 s into it (budget 0.3 s, request timeout 5 s); return once
    the request has been answered and the sender has ended."""
    before = set(threading.enumerate())
    exporting = threading.Thread(target=exporter.export, args=(spans,))
    exporting.start()
    time.sleep(0.2)  # the request is on the wire
    exporter.shutdown()
    exporting.join(timeout=10)
    for thread in senders_since(before):
        thread.join(timeout=10)


def test_a_request_answered_after_the_shutdown_budget_is_counted_once(
    mixpanel: LocalMixpanel,
) -> None:
    """A record whose request Mixpanel stores after the shutdown budget is
    counted once: as sent, or as lost, never as both."""
    mixpanel.fail_next(1, status=None, delay=1.0)  # held, then stored
    exporter = MixpanelSpanExporter(
        token=mixpanel.token, api_host=mixpanel.url, timeout=5, retry_policy=FAST,
        shutdown_timeout=0.3,
    )
    shut_down_while_a_request_is_held(mixpanel, exporter, events("A"))
    assert [e["event"] for e in mixpanel.events] == ["A"]
    stats = exporter.stats()
    assert stats["sent"].get("events", 0) + sum(stats["dropped"].values()) == 1, stats


def test_an_add_answered_after_the_shutdown_budget_is_not_resent(
    tmp_path: Path, mixpanel: LocalMixpanel
) -> None:
    """With a spool, a $add whose request Mixpanel applies after the shutdown
    budget must not stay in the spool to be applied again at the next start."""
    mixpanel.fail_next(1, status=None, delay=1.0, endpoint="/engage")
    exporter = MixpanelSpanExporter(
        token=mixpanel.token, api_host=mixpanel.url, timeout=5, retry_policy=FAST,
        shutdown_timeout=0.3, spool_dir=str(tmp_path),
    )
    update = finished_spans({"mixpanel.distinct_id": "u", "mixpanel.people.add.n": 1})
    shut_down_while_a_request_is_held(mixpanel, exporter, update)
    assert exporter.stats()["dropped"] == {"outcome_unknown": 1}  # kept out of the spool
    assert mixpanel.profiles == {"u": {"n": 1}}
    restarted = MixpanelSpanExporter(
        token=mixpanel.token, api_host=mixpanel.url, spool_dir=str(tmp_path),
    )
    try:
        assert restarted.force_flush(10_000)
    finally:
        restarted.shutdown()
    assert mixpanel.profiles == {"u": {"n": 1}}  # applied once
