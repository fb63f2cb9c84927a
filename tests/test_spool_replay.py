"""The spool directory as the sending queue, against the local Mixpanel: the
public spool functions (one replay pass) and the exporter that keeps its queue
there (every record on disk first, sent first at the next start)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_mixpanel import MixpanelSpanExporter
from otel_mixpanel._model import ProfileUpdate
from otel_mixpanel._queue._spool import Spool
from otel_mixpanel.spool import replay_spool, spool_status
from otel_mixpanel.testing import LocalMixpanel
from tests.conftest import SENDER
from tests.helpers import FAST, emit, fill_spool


def spans(count: int, prefix: str = "E") -> Sequence[ReadableSpan]:
    """*count* finished spans as ``emit`` makes them (an event and an $add each)."""
    captured = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(captured))
    emit(provider, count, prefix)
    provider.shutdown()
    return captured.get_finished_spans()


def spool_exporter(directory: Path, mixpanel: LocalMixpanel,
                   shutdown_timeout: Optional[float] = None) -> MixpanelSpanExporter:
    return MixpanelSpanExporter(token=mixpanel.token, api_host=mixpanel.url,
                                spool_dir=str(directory), retry_policy=FAST,
                                shutdown_timeout=shutdown_timeout)


class TestReplaySpool:
    def test_status_then_replay_delivers_once(self, tmp_path: Path, mixpanel: LocalMixpanel
                                              ) -> None:
        """spool_status tells what waits; replay_spool sends it once, with progress."""
        fill_spool(tmp_path, mixpanel, 30)
        status = spool_status(tmp_path)
        assert status.records == 60 and status.by_endpoint == {"/import": 30, "/engage": 30}
        assert status.oldest is not None
        with LocalMixpanel(token=mixpanel.token) as healthy:
            seen: List[Tuple[int, int]] = []
            result = replay_spool(tmp_path, token=healthy.token, api_host=healthy.url,
                                  progress=lambda done, total: seen.append((done, total)))
            assert result.kept_records == 0 and result.error is None
            assert len(healthy.unique_events()) == 30
            assert healthy.profiles["u"] == {f"n{i}": 1 for i in range(30)}
            assert seen[-1] == (60, 60)
            # Running it again sends nothing more.
            again = replay_spool(tmp_path, token=healthy.token, api_host=healthy.url)
            assert again.done_records == 0 and len(healthy.profile_updates) == 30
        assert spool_status(tmp_path).records == 0

    def test_replay_stops_while_mixpanel_is_down(self, tmp_path: Path, mixpanel: LocalMixpanel
                                                 ) -> None:
        """With Mixpanel still failing, one pass makes one request and keeps
        everything for later (it does not retry: the next run will)."""
        fill_spool(tmp_path, mixpanel, 5)
        before = len(mixpanel.requests)
        result = replay_spool(tmp_path, token=mixpanel.token, api_host=mixpanel.url, timeout=0.2)
        assert result.kept_records == 10 and result.done_records == 0
        assert len(mixpanel.requests) == before + 1
        assert spool_status(tmp_path).records == 10

    def test_unknown_endpoint_in_the_spool_is_counted_not_blocking(
        self, tmp_path: Path, mixpanel: LocalMixpanel
    ) -> None:
        """A segment naming an endpoint we do not send to is dropped (counted) and
        the segments after it still replay."""
        spool = Spool(tmp_path)
        spool.write("/nowhere", [b'{"x":1}'])
        fill_spool(tmp_path, mixpanel, 3)
        with LocalMixpanel(token=mixpanel.token) as healthy:
            result = replay_spool(tmp_path, token=healthy.token, api_host=healthy.url)
            assert result.kept_records == 0
            assert len(healthy.unique_events()) == 3


class TestSpoolAsQueue:
    def test_every_record_is_on_disk_before_it_is_sent(
        self, tmp_path: Path, mixpanel: LocalMixpanel
    ) -> None:
        """With spool_dir the records are in a segment while their request is on
        the wire, and leave it once Mixpanel answered."""
        finished = spans(5)
        mixpanel.fail_next(1, status=None, delay=0.5)  # hold the first request
        exporter = spool_exporter(tmp_path, mixpanel)
        results: List[SpanExportResult] = []
        worker = threading.Thread(target=lambda: results.append(exporter.export(finished)))
        try:
            worker.start()
            assert mixpanel.wait_for(lambda m: m.pending_faults == 0)
            assert spool_status(tmp_path).by_endpoint == {"/import": 5, "/engage": 5}
            worker.join(10)
            assert results == [SpanExportResult.SUCCESS]
            assert exporter.force_flush(5_000)
            assert spool_status(tmp_path).records == 0
        finally:
            worker.join(10)
            exporter.shutdown()
        assert len(mixpanel.unique_events()) == 5
        assert mixpanel.profiles["u"] == {f"E{i}": 1 for i in range(5)}

    def test_shutdown_keeps_what_waits_for_the_next_start(
        self, tmp_path: Path, mixpanel: LocalMixpanel, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Mixpanel down at shutdown: nothing is counted lost, the spool keeps
        every record, and the totals line says where they wait."""
        caplog.set_level(logging.INFO, logger="otel_mixpanel")
        mixpanel.fail_next(10_000, status=503)
        exporter = spool_exporter(tmp_path, mixpanel, shutdown_timeout=5)
        try:
            assert exporter.export(spans(4)) is SpanExportResult.SUCCESS
            assert exporter.stats()["waiting"]["records"] == 8
        finally:
            exporter.shutdown(timeout_millis=200)  # the shorter budget wins
        assert exporter.stats()["dropped"] == {}
        assert spool_status(tmp_path).records == 8
        assert f"8 records wait in {tmp_path} for the next start" in caplog.text

    def test_a_new_exporter_sends_the_spool_first(
        self, tmp_path: Path, mixpanel: LocalMixpanel
    ) -> None:
        """A new exporter on a directory holding segments sends them at start, on
        its one sender thread, before what it is given; each record once."""
        fill_spool(tmp_path, mixpanel, 5)
        with LocalMixpanel(token=mixpanel.token) as healthy:
            before = set(threading.enumerate())
            exporter = spool_exporter(tmp_path, healthy)
            try:
                started = {t.name for t in set(threading.enumerate()) - before}
                assert started <= {SENDER}
                assert exporter.export(spans(2, prefix="N")) is SpanExportResult.SUCCESS
                names = [e["event"] for e in healthy.events]
                assert names == [f"E{i}" for i in range(5)] + ["N0", "N1"]
                assert exporter.force_flush(5_000)
            finally:
                exporter.shutdown()
            assert spool_status(tmp_path).records == 0
            assert healthy.profiles["u"] == {
                **{f"n{i}": 1 for i in range(5)}, "N0": 1, "N1": 1,
            }
            assert len(healthy.profile_updates) == 7
            assert exporter.stats()["dropped"] == {}

    def test_an_update_answered_after_shutdown_is_not_sent_again(
        self, tmp_path: Path, mixpanel: LocalMixpanel
    ) -> None:
        """A request still on the wire when the shutdown budget ends, then accepted:
        its $add must not be applied again by the next start."""
        mixpanel.fail_next(1, status=None, delay=1.0)  # applied, answered after the budget
        exporter = spool_exporter(tmp_path, mixpanel, shutdown_timeout=0.1)
        try:
            exporter._queue.submit([ProfileUpdate("u", "$add", {"n": 1})])
            assert mixpanel.wait_for(lambda m: m.pending_faults == 0)
        finally:
            exporter.shutdown()
        assert mixpanel.wait_for(lambda m: len(m.profile_updates) == 1)
        restarted = spool_exporter(tmp_path, mixpanel)
        try:
            assert restarted.force_flush(5_000)
        finally:
            restarted.shutdown()
        assert mixpanel.profiles["u"] == {"n": 1}
