"""The sending queue (otel_mixpanel/_queue): sharing, bounds, backoff limits at
shutdown, and logs whose numbers match stats()."""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import List

import pytest

from otel_mixpanel import MixpanelLogExporter, MixpanelSpanExporter, RetryPolicy
from otel_mixpanel._model import Endpoint
from otel_mixpanel._queue._backend import MemoryBackend
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
