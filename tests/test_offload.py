"""The helper process that translates big batches off the application's
interpreter lock: the same bytes and counts as translating here, never a loss
when it fails, never started under light load or when switched off."""

from __future__ import annotations

import contextlib
import enum
import io
import logging
import math
import os
import signal
import time
import uuid
import warnings
from typing import Any, Iterator, List, Mapping

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

import otel_mixpanel
from otel_mixpanel import ConfigurationError, MixpanelSpanExporter
from otel_mixpanel._convention._translate import translate_all
from otel_mixpanel._inputs import _intake
from otel_mixpanel._offload import MIN_RECORDS, MIN_RUNNING, Offload, _wire
from otel_mixpanel._queue._client import prepare
from otel_mixpanel._queue._limits import Limits
from otel_mixpanel._stats import Tally
from otel_mixpanel.testing import LocalMixpanel
from otel_mixpanel.trace import read_span
from tests.helpers import finished_spans


class Plan(enum.Enum):
    PRO = "pro"


def wait_until(predicate: Any, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


@pytest.fixture
def exporter(mixpanel: LocalMixpanel) -> Iterator[MixpanelSpanExporter]:
    exporter = MixpanelSpanExporter(token=mixpanel.token, api_host=mixpanel.url,
                                    property_denylist=["secret"])
    yield exporter
    exporter.shutdown()


@pytest.fixture
def helper(exporter: MixpanelSpanExporter) -> Iterator[Offload]:
    offload = Offload(exporter._settings)
    rows = rows_of(exporter, [{"mixpanel.event": "Warm", "mixpanel.distinct_id": "u"}])
    assert offload.run(rows * MIN_RECORDS) is None  # the first big batch starts it
    assert wait_until(lambda: offload.state == "running"), offload.state
    yield offload
    offload.close()


def rows_of(exporter: MixpanelSpanExporter, sets: List[Mapping[str, Any]]) -> List[_wire.Row]:
    return [(record, True) for record in exporter._records(finished_spans(*sets))]


VARIED: List[Mapping[str, Any]] = [
    {"mixpanel.event": "Paid", "mixpanel.user_id": "u1", "mixpanel.properties.plan": "pro",
     "mixpanel.properties.price": 29.99, "mixpanel.properties.tags": ("a", "b"),
     "mixpanel.properties.tiny": 1e-7, "mixpanel.properties.huge": 1e300,
     "mixpanel.properties.big": 2**60, "mixpanel.properties.secret": "x"},
    {"mixpanel.distinct_id": "u2", "mixpanel.people.set.plan": "pro",
     "mixpanel.people.add.visits": 1, "mixpanel.people.union.tags": ("a",),
     "mixpanel.group.set.company.acme.size": 10},
    {"mixpanel.event": "Signed Up", "mixpanel.device_id": "d1",
     "mixpanel.identify.anon_id": "anon", "mixpanel.properties.time": 5,
     "mixpanel.properties.long": "x" * 400, "mixpanel.not_a_key": 1},
    {"mixpanel.event": "", "mixpanel.distinct_id": "u3"},  # counted: invalid_event_name
    {"mixpanel.event": "é" * 80, "mixpanel.distinct_id": "undefined",
     "mixpanel.insert_id": "not valid!", "mixpanel.time": "2026-01-01T00:00:00Z"},
]


def test_the_helper_sends_the_same_bytes_and_counts_as_the_application(
    exporter: MixpanelSpanExporter, helper: Offload,
) -> None:
    rows = rows_of(exporter, VARIED * 60)
    offloaded = helper.run(rows)
    assert offloaded is not None and helper.batches == 1
    here = Tally()
    limits = Limits(here, allowlist=None, denylist=frozenset({"secret"}))
    expected = prepare(translate_all([r for r, _ in rows], here), limits,
                       exporter._settings, here)
    batches, calls = offloaded
    assert batches == expected
    assert sorted(calls) == sorted(here.calls) and calls  # the same reasons, counts, details


@pytest.mark.parametrize("trace_ids", [True, False])
def test_spans_as_read_make_the_same_bytes_in_the_helper(
    mixpanel: LocalMixpanel, trace_ids: bool,
) -> None:
    """Plain tagged spans cross the pipe as read_span kept them and the helper
    makes their records: the same bytes and counts as records made here."""
    exporter = MixpanelSpanExporter(token=mixpanel.token, api_host=mixpanel.url,
                                    property_denylist=["secret"], trace_ids=trace_ids)
    helper = Offload(exporter._settings)
    try:
        spans = finished_spans(*(VARIED * 60))
        ended = [read_span(span) for span in spans]
        assert helper.run_spans(ended, exporter._properties_of_resource, trace_ids) is None
        assert wait_until(lambda: helper.state == "running"), helper.state
        offloaded = helper.run_spans(ended, exporter._properties_of_resource, trace_ids)
        assert offloaded is not None and helper.batches == 1
        here = Tally()
        limits = Limits(here, allowlist=None, denylist=frozenset({"secret"}))
        records = list(exporter._records(spans))
        expected = prepare(translate_all(records, here, trace_ids=trace_ids), limits,
                           exporter._settings, here)
        batches, calls = offloaded
        assert batches == expected
        assert sorted(calls) == sorted(here.calls) and calls
        # A span with tagged events is not plain: the records of all are made here.
        first = ended[0]
        assert first is not None
        with_events = [(*first[:3], ((1, object()),), *first[4:]), *ended[1:]]
        assert helper.run_spans(with_events, exporter._properties_of_resource, trace_ids) is None
        assert helper.state == "running" and helper.batches == 1
    finally:
        helper.close()
        exporter.shutdown()


def test_a_value_that_would_not_cross_unchanged_is_translated_here(
    exporter: MixpanelSpanExporter, helper: Offload,
) -> None:
    plain = rows_of(exporter, [{"mixpanel.event": "E", "mixpanel.distinct_id": "u"}])[0][0]
    for odd in (math.nan, math.inf, b"bytes", 2**70, {1: "non-str key"}, "\ud800",
                uuid.UUID(int=1), Plan.PRO, [uuid.UUID(int=2)], {"x": Plan.PRO}, None):
        record = plain._replace(attributes={**plain.attributes, "mixpanel.properties.x": odd})
        assert helper.run([(record, True)] * MIN_RECORDS) is None, odd
    huge_time = plain._replace(time_ms=10**30)  # a span ended in the year 10**19
    assert helper.run([(huge_time, True)] * MIN_RECORDS) is None
    assert helper.state == "running"  # declining a batch is no failure


def test_a_helper_of_another_release_is_refused() -> None:
    data = _wire.dump_settings(MixpanelSpanExporter(token="t", api_host="http://127.0.0.1:9",
                                                    offload="off")._settings)
    assert _wire.load_settings(data).token == "t"
    with pytest.raises(ValueError, match=r"the application runs 0\.0\.1"):
        _wire.load_settings(data.replace(_wire.VERSION.encode(), b"0.0.1/orjson 1"))


def test_light_load_never_starts_it(exporter: MixpanelSpanExporter) -> None:
    offload = Offload(exporter._settings)
    rows = rows_of(exporter, [{"mixpanel.event": "E", "mixpanel.distinct_id": "u"}])
    assert offload.run(rows * (MIN_RECORDS - 1)) is None
    assert offload.state == "idle"


def test_once_running_it_takes_smaller_batches(
    exporter: MixpanelSpanExporter, helper: Offload,
) -> None:
    """A busy application's smaller batches go to the helper too (they would
    hold the interpreter lock here); the smallest stay, not worth the trip."""
    rows = rows_of(exporter, [{"mixpanel.event": "E", "mixpanel.distinct_id": "u"}])
    answered = helper.batches
    assert helper.run(rows * (MIN_RUNNING - 1)) is None
    answer = helper.run(rows * MIN_RUNNING)
    assert answer is not None and helper.batches == answered + 1
    batches, _ = answer
    assert sum(len(records) for _, records in batches) == MIN_RUNNING


def test_switched_off_by_argument_or_environment(
    mixpanel: LocalMixpanel, monkeypatch: pytest.MonkeyPatch,
) -> None:
    off = MixpanelSpanExporter(token=mixpanel.token, api_host=mixpanel.url, offload="off")
    assert Offload(off._settings).state == "off"
    off.shutdown()
    monkeypatch.setenv("OTEL_EXPORTER_MIXPANEL_OFFLOAD", "OFF")
    assert MixpanelSpanExporter(token="t", api_host=mixpanel.url)._settings.offload is False
    monkeypatch.setenv("OTEL_EXPORTER_MIXPANEL_OFFLOAD", "sometimes")
    with pytest.raises(ConfigurationError,
                       match=r"OTEL_EXPORTER_MIXPANEL_OFFLOAD.*'auto' or 'off'"):
        MixpanelSpanExporter(token="t", api_host=mixpanel.url)


def burst(tracer_provider: TracerProvider, prefix: str, count: int) -> None:
    tracer = tracer_provider.get_tracer("t")
    for i in range(count):
        with tracer.start_as_current_span("s") as span:
            span.set_attribute("mixpanel.event", f"{prefix}{i}")
            span.set_attribute("mixpanel.distinct_id", f"u{i % 7}")
            span.set_attribute("mixpanel.properties.n", i)


def configured(mixpanel: LocalMixpanel, **options: Any) -> Any:
    """(tracer provider, configure()'s pipeline, its intake) sending to *mixpanel*."""
    tracer_provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    pipeline = otel_mixpanel.configure(
        tracer_provider=tracer_provider, logger_provider=LoggerProvider(),
        token=mixpanel.token, api_host=mixpanel.url, **options,
    )
    intake = next(i for i in list(_intake._ALL) if i.queue is pipeline.span_exporter._queue)
    return tracer_provider, pipeline, intake


def test_configure_under_load_delivers_everything_through_the_helper(
    mixpanel: LocalMixpanel,
) -> None:
    tracer_provider, pipeline, intake = configured(mixpanel, max_export_batch_size=500)
    try:
        burst(tracer_provider, "Warm", 600)
        pipeline.force_flush(30_000)
        assert wait_until(lambda: intake.offload.state == "running"), intake.offload.state
        burst(tracer_provider, "Busy", 3000)
        pipeline.force_flush(30_000)
        assert intake.offload.batches >= 1
        stats = pipeline.stats()
    finally:
        pipeline.shutdown(30_000)
    assert intake.offload.state == "idle"  # stopped with the pipeline
    assert len(mixpanel.unique_events()) == 3600 == len(mixpanel.events)
    assert stats["sent"] == {"events": 3600} and stats["dropped"] == {}
    busy = {e["event"]: e["properties"] for e in mixpanel.events}["Busy42"]
    assert (busy["n"], busy["distinct_id"], busy["service.name"]) == (42, "u0", "shop")


def test_a_flush_shares_its_batch_between_the_helper_and_this_thread(
    mixpanel: LocalMixpanel, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """force_flush() (the application waiting): the helper translates the first
    half of a batch while the flushing thread translates the second; Mixpanel
    receives both, in order (the helper and this thread translate alike: see
    the equivalence tests above)."""
    tracer_provider, pipeline, intake = configured(mixpanel, schedule_delay_millis=60_000)
    handed: List[int] = []
    run = intake.offload.run

    def counting_run(rows: Any, timeout: Any = None, meanwhile: Any = None) -> Any:
        answer = run(rows, timeout, meanwhile)
        if answer is not None:
            handed.append(len(rows))
        return answer

    try:
        burst(tracer_provider, "Warm", MIN_RECORDS)
        pipeline.force_flush(30_000)
        assert wait_until(lambda: intake.offload.state == "running"), intake.offload.state
        monkeypatch.setattr(intake.offload, "run", counting_run)
        mixpanel.clear()
        burst(tracer_provider, "Flushed", 200)  # held: the worker waits for 256
        assert pipeline.force_flush(30_000)
        stats = pipeline.stats()
    finally:
        pipeline.shutdown(30_000)
    assert handed == [100]  # the first half; the second was translated here meanwhile
    assert [e["event"] for e in mixpanel.events] == [f"Flushed{i}" for i in range(200)]
    assert stats["dropped"] == {}
    assert [e["properties"]["n"] for e in mixpanel.events] == list(range(200))
    assert len({e["properties"]["$insert_id"] for e in mixpanel.events}) == 200


def test_a_helper_that_dies_costs_nothing_and_says_so_once(
    mixpanel: LocalMixpanel, caplog: pytest.LogCaptureFixture,
) -> None:
    tracer_provider, pipeline, intake = configured(mixpanel, max_export_batch_size=300)
    try:
        burst(tracer_provider, "Warm", 300)
        pipeline.force_flush(30_000)
        assert wait_until(lambda: intake.offload.state == "running")
        process = intake.offload._process
        assert process is not None
        process.kill()
        process.wait(10)
        with caplog.at_level(logging.WARNING, logger="otel_mixpanel"):
            burst(tracer_provider, "After", 1500)
            pipeline.force_flush(30_000)
    finally:
        pipeline.shutdown(30_000)
    assert intake.offload.state.startswith("failed: ")
    lines = [r.getMessage() for r in caplog.records if "helper process" in r.getMessage()]
    assert len(lines) == 1 and "translating in the application from now on" in lines[0]
    assert len(mixpanel.unique_events()) == 1800 == len(mixpanel.events)


def test_it_stops_when_idle_and_starts_again(
    exporter: MixpanelSpanExporter, helper: Offload, monkeypatch: pytest.MonkeyPatch,
) -> None:
    process = helper._process
    assert process is not None
    helper.idle()
    assert helper.state == "running"  # just used
    monkeypatch.setattr("otel_mixpanel._offload.IDLE_SECONDS", 0.0)
    helper.idle()
    assert helper.state == "idle" and process.poll() is not None  # it saw its input end
    rows = rows_of(exporter, [{"mixpanel.event": "E", "mixpanel.distinct_id": "u"}])
    helper.run(rows * MIN_RECORDS)
    assert wait_until(lambda: helper.state == "running")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork")
def test_a_forked_child_never_uses_its_parent_s_helper(
    exporter: MixpanelSpanExporter, helper: Offload,
) -> None:
    rows = rows_of(exporter, [{"mixpanel.event": "E", "mixpanel.distinct_id": "u"}] * MIN_RECORDS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            helper.after_fork()
            code = 0 if helper.state == "idle" and helper.run(rows) is None else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert helper.run(rows) is not None  # the parent's helper still answers the parent


def test_frames_survive_partial_reads_and_writes() -> None:
    class Trickle(io.RawIOBase):
        def __init__(self, data: bytes = b"") -> None:
            self.data, self.out = bytearray(data), bytearray()

        def readable(self) -> bool:
            return True

        def writable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            count = min(3, len(self.data), len(buffer))
            buffer[:count] = self.data[:count]
            del self.data[:count]
            return count

        def write(self, data: Any) -> int:
            self.out += bytes(data)[:5]
            return min(5, len(data))

    writer = Trickle()
    _wire.write_frame(writer, b"hello ", b"world")  # type: ignore[arg-type]
    reader = Trickle(bytes(writer.out))
    assert _wire.read_frame(reader) == b"hello world"  # type: ignore[arg-type]
    assert _wire.read_frame(reader) is None  # type: ignore[arg-type]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX signals and select on pipes")
def test_a_helper_that_hangs_is_given_up_and_the_batch_translated_here(
    exporter: MixpanelSpanExporter, helper: Offload, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("otel_mixpanel._offload.ANSWER_SECONDS", 0.3)
    process = helper._process
    assert process is not None
    os.kill(process.pid, signal.SIGSTOP)
    try:
        # Bigger than any pipe: the write itself must give up, not only the read.
        rows = rows_of(exporter, [{"mixpanel.event": "E", "mixpanel.distinct_id": "u",
                                   "mixpanel.properties.text": "x" * 4000}])
        assert helper.run(rows * 600) is None
    finally:
        with contextlib.suppress(ProcessLookupError):  # already stopped and reaped
            os.kill(process.pid, signal.SIGCONT)
    assert helper.state.startswith("failed: TimeoutError")
    assert process.wait(10) is not None  # stopped, not left behind


def test_an_answer_ready_after_the_flushing_thread_s_half_is_taken(
    exporter: MixpanelSpanExporter, helper: Offload,
) -> None:
    """The flush's budget spent while this thread translated its half: the
    helper's answer, already there, is still taken, and the helper kept."""
    rows = rows_of(exporter, [{"mixpanel.event": "E", "mixpanel.distinct_id": "u"}])
    answer = helper.run(rows * MIN_RUNNING, 0.05, lambda: time.sleep(0.5))
    assert answer is not None
    assert helper.state == "running"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX signals and select on pipes")
def test_a_short_flush_budget_stops_the_helper_without_giving_it_up(
    exporter: MixpanelSpanExporter, helper: Offload,
) -> None:
    """force_flush() with little time left and no answer yet: the batch is
    translated here and that helper stopped (its late answer must not pass for
    the next batch's), but the next big batch starts another."""
    process = helper._process
    assert process is not None
    os.kill(process.pid, signal.SIGSTOP)
    rows = rows_of(exporter, [{"mixpanel.event": "E", "mixpanel.distinct_id": "u"}])
    try:
        assert helper.run(rows * MIN_RUNNING, 0.2) is None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)
    assert helper.state == "idle"  # not "failed: ..."
    assert helper.run(rows * MIN_RECORDS) is None  # starts another
    assert wait_until(lambda: helper.state == "running"), helper.state


def test_shutting_down_never_starts_a_helper(mixpanel: LocalMixpanel) -> None:
    tracer_provider, pipeline, intake = configured(mixpanel, schedule_delay_millis=60_000)
    burst(tracer_provider, "Late", MIN_RECORDS + 10)  # held: the batch size is not reached
    pipeline.shutdown(30_000)
    assert intake.offload.state == "idle" and intake.offload.batches == 0
    assert len(mixpanel.unique_events()) == MIN_RECORDS + 10


def test_an_interrupted_exchange_never_lets_a_stale_answer_through(
    exporter: MixpanelSpanExporter, helper: Offload, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C while waiting for the helper's answer: that answer must never be
    taken for the next batch's; the helper is stopped and another starts."""
    first = rows_of(exporter, [{"mixpanel.event": "First", "mixpanel.distinct_id": "u"}])
    second = rows_of(exporter, [{"mixpanel.event": "Second", "mixpanel.distinct_id": "u"}])

    def interrupted(self: Any, deadline: float) -> Any:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(_wire.Pipe, "_answer", interrupted)
        with pytest.raises(KeyboardInterrupt):
            helper.run(first * MIN_RECORDS)
    assert helper.state == "idle"  # stopped, not failed: it may start again
    assert helper.run(second * MIN_RECORDS) is None  # starts a new one
    assert wait_until(lambda: helper.state == "running")
    answer = helper.run(second * MIN_RECORDS)
    assert answer is not None
    assert all(b'"Second"' in record for _, records in answer[0] for record in records)


def test_a_batch_interrupted_before_it_reaches_the_queue_is_counted(
    mixpanel: LocalMixpanel, monkeypatch: pytest.MonkeyPatch,
) -> None:
    tracer_provider, pipeline, intake = configured(mixpanel, schedule_delay_millis=60_000)
    burst(tracer_provider, "Held", 40)

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    try:
        with monkeypatch.context() as patch:
            patch.setattr(intake, "_offloaded", interrupted)
            with pytest.raises(KeyboardInterrupt):
                intake.force_flush(5_000)
        assert pipeline.stats()["dropped"] == {"export_interrupted": 40}
    finally:
        pipeline.shutdown(10_000)
