"""The five Mixpanel faults of docs/reliability.md, short: what the sending
queue guarantees with its settings at their defaults but for shorter backoffs,
windows and budgets (benchmarks/reliability.py runs them at full length).

Each event carries a ``$add`` of a property of its own, so a profile shows
exactly how often each update was applied.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.trace import TracerProvider

from otel_mixpanel import MixpanelPipeline, RetryPolicy, configure
from otel_mixpanel.testing import LocalMixpanel
from tests.helpers import log

POLICY = RetryPolicy(initial=0.05, maximum=0.2, jitter=(0.0, 0.0))
TIMEOUT = 0.5  # one request; the held requests below outlast it
FAULTS: Dict[str, Dict[str, Any]] = {
    "503": {"status": 503},
    "TCP resets": {"reset_connection": True},
    "429 + Retry-After": {"status": 429, "headers": {"Retry-After": "0.3"}},
    "429, no Retry-After": {"status": 429},
    "held, then stored": {"status": None, "delay": 1.0},
}


@dataclass
class Tally:
    offered: int
    delivered: int
    applied_once: int
    applied_twice: int


class App:
    """A configure()d application emitting tagged spans on its own thread."""

    def __init__(self, server: LocalMixpanel, spool_dir: Optional[str] = None,
                 shutdown_timeout: float = 5.0) -> None:
        self.server = server
        self.tracer_provider = TracerProvider()
        self.pipeline: MixpanelPipeline = configure(
            tracer_provider=self.tracer_provider, logger_provider=LoggerProvider(),
            token=server.token, api_host=server.url, retry_policy=POLICY, timeout=TIMEOUT,
            shutdown_timeout=shutdown_timeout, spool_dir=spool_dir, schedule_delay_millis=50,
        )
        self.offered = 0

    def emit(self, seconds: float, per_tick: int = 5, tick: float = 0.02) -> None:
        tracer = self.tracer_provider.get_tracer("reliability")
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(per_tick):
                name = f"E{self.offered}"
                with tracer.start_as_current_span("step") as span:
                    span.set_attribute("mixpanel.event", name)
                    span.set_attribute("mixpanel.distinct_id", f"u{self.offered % 7}")
                    span.set_attribute(f"mixpanel.people.add.{name}", 1)
                self.offered += 1
            time.sleep(tick)


def tally(server: LocalMixpanel, offered: int) -> Tally:
    names = {event["event"] for event in server.unique_events()}
    counts = [v for profile in server.profiles.values() for k, v in profile.items()
              if k.startswith("E")]
    return Tally(offered, len(names), counts.count(1), sum(1 for c in counts if c > 1))


@pytest.fixture
def server() -> Iterator[LocalMixpanel]:
    with LocalMixpanel() as local:
        yield local


@pytest.mark.parametrize("fault", list(FAULTS))
def test_app_that_keeps_running_loses_nothing(server: LocalMixpanel, fault: str) -> None:
    """A 1 s fault in the middle of the traffic: every event arrives while the
    app still runs, and no $add is applied twice."""
    app = App(server)
    try:
        app.emit(0.2)
        server.fail_for(1.0, **FAULTS[fault])
        app.emit(1.2)
        assert server.wait_for(
            lambda s: len({e["event"] for e in s.unique_events()}) == app.offered, timeout=15
        ), tally(server, app.offered)
    finally:
        assert app.pipeline.shutdown() is True
    result = tally(server, app.offered)
    assert result.delivered == result.offered
    assert result.applied_twice == 0
    stats = app.pipeline.stats()
    # The only updates not applied are the ones a lost answer made unsafe to resend.
    unknown = stats["dropped"].get("outcome_unknown", 0)
    if fault not in ("TCP resets", "held, then stored"):
        assert stats["dropped"] == {}
    assert result.applied_once >= result.offered - unknown
    assert stats["waiting"] == {"records": 0, "bytes": 0}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_shutdown_during_the_fault_rides_it_out(server: LocalMixpanel, fault: str) -> None:
    """Shutdown comes while the fault has about 1 s to go: it keeps delivering
    within its budget and returns True with nothing lost."""
    app = App(server, shutdown_timeout=6.0)
    server.fail_for(1.5, **FAULTS[fault])
    app.emit(0.4)
    started = time.monotonic()
    assert app.pipeline.shutdown() is True
    assert time.monotonic() - started < 6.0 + 2.5  # its budget and the accounting margin
    result = tally(server, app.offered)
    assert result.delivered == result.offered
    assert result.applied_twice == 0


def test_shutdown_past_the_budget_counts_and_logs_the_loss(
    server: LocalMixpanel, caplog: pytest.LogCaptureFixture
) -> None:
    """With the memory queue, what the budget cannot deliver is counted, and one
    line with the totals is written before shutdown() returns."""
    app = App(server, shutdown_timeout=0.5)
    server.fail_for(30, status=503)
    app.emit(0.2)
    with caplog.at_level(logging.INFO, logger="otel_mixpanel"):
        assert app.pipeline.shutdown() is False
        lines = [r.getMessage() for r in caplog.records if "shut down" in r.getMessage()]
    lost = app.pipeline.stats()["dropped"]["undelivered_at_shutdown"]
    assert lost == 2 * app.offered  # each span: one event and one profile update
    assert len(lines) == 1 and f"undelivered_at_shutdown {lost}" in lines[0]
    server.clear_faults()


@pytest.mark.parametrize("fault", ["503", "TCP resets", "held, then stored"])
def test_spool_delivers_every_record_once_after_a_restart(
    server: LocalMixpanel, fault: str, tmp_path: Path
) -> None:
    """Shut down in a fault longer than the budget: the spool keeps the records,
    and the next start delivers each once."""
    spool = str(tmp_path / "spool")
    app = App(server, spool_dir=spool, shutdown_timeout=0.3)
    server.fail_for(2.5, **FAULTS[fault])
    app.emit(0.3)
    app.pipeline.shutdown()
    assert app.pipeline.stats()["dropped"].get("undelivered_at_shutdown", 0) == 0
    time.sleep(max(0.0, 2.6 - 0.3))  # the fault is over
    restarted = App(server, spool_dir=spool)
    try:
        assert server.wait_for(
            lambda s: len({e["event"] for e in s.unique_events()}) == app.offered, timeout=15
        )
    finally:
        restarted.pipeline.shutdown()
    result = tally(server, app.offered)
    assert result.delivered == app.offered and result.applied_twice == 0
    assert list(Path(spool).glob("*.seg")) == []


def test_probes_while_failing_and_resumes_within_one_backoff_step(server: LocalMixpanel) -> None:
    """While Mixpanel fails each attempt carries one record, not the queue;
    the first answer after recovery brings full batches back."""
    app = App(server)
    try:
        server.fail_for(0.6, status=503)
        app.emit(0.3)
        assert server.wait_for(
            lambda s: len({e["event"] for e in s.unique_events()}) == app.offered, timeout=10
        )
    finally:
        app.pipeline.shutdown()
    failed = [r for r in server.requests if r.status == 503]
    assert len(failed) >= 3
    assert all(len(r.json()) == 1 for r in failed[1:])  # the first carried what was there
    recovered = [r for r in server.requests if r.status == 200 and r.path == "/import"]
    assert max(len(r.json()) for r in recovered) > 1


def test_span_and_log_updates_keep_the_applications_order(server: LocalMixpanel) -> None:
    """A span's $set and a later log record's $set for the same user land in
    that order, whichever batch processor timer fires first."""
    tracer_provider, logger_provider = TracerProvider(), LoggerProvider()
    pipeline = configure(
        tracer_provider=tracer_provider, logger_provider=logger_provider,
        token=server.token, api_host=server.url, retry_policy=POLICY,
        schedule_delay_millis=30,
    )
    tracer, logger = tracer_provider.get_tracer("app"), logger_provider.get_logger("app")
    try:
        for round_ in range(3):
            for user in range(20):
                with tracer.start_as_current_span("save") as span:
                    span.set_attribute("mixpanel.distinct_id", f"u{user}")
                    span.set_attribute("mixpanel.people.set.plan", f"span-{round_}")
                log(logger, attributes={
                    "mixpanel.distinct_id": f"u{user}", "mixpanel.people.set.plan": f"log-{round_}",
                })
                time.sleep(0.003)
    finally:
        assert pipeline.shutdown() is True
    assert {server.profiles[f"u{user}"]["plan"] for user in range(20)} == {"log-2"}


def test_export_returns_at_once_while_mixpanel_fails(server: LocalMixpanel) -> None:
    """The batch processor's thread is never held by an outage."""
    app = App(server)
    try:
        server.fail_for(5, status=503)
        app.emit(0.1)
        assert server.wait_for(lambda s: len(s.requests) >= 2, timeout=5)
        started = time.monotonic()
        app.emit(0.05)
        flushed = threading.Event()

        def flush() -> None:
            app.pipeline.span_exporter.export([])
            flushed.set()

        threading.Thread(target=flush).start()
        assert flushed.wait(1.0)
        assert app.pipeline.force_flush(200) is False  # not answered yet, and says so
        assert time.monotonic() - started < 2.0
        assert app.pipeline.stats()["waiting"]["records"] > 0
        server.clear_faults()
        assert app.pipeline.force_flush(10_000) is True
    finally:
        app.pipeline.shutdown()
    assert tally(server, app.offered).delivered == app.offered
