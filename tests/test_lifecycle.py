"""Shutdown and flush stay bounded with Mixpanel dead or hanging; the spool
carries records across restarts; a forked child sends its own records only."""

from __future__ import annotations

import os
import socket
import threading
import warnings
from pathlib import Path
from typing import Callable

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from otel_mixpanel import MixpanelSpanExporter, RetryPolicy
from otel_mixpanel._spool import Spool
from otel_mixpanel.testing import LocalMixpanel
from tests.helpers import emit

FAST = RetryPolicy(initial=0.05, maximum=0.1, jitter=(0, 0), outage_pause=60)


def closed_port() -> int:
    """A loopback port nothing listens on: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def test_shutdown_with_mixpanel_dead_spools_everything(tmp_path: Path) -> None:
    """Connection refused: shutdown returns and every record is in the spool."""
    exporter = MixpanelSpanExporter(
        token="t", api_host=f"http://127.0.0.1:{closed_port()}", timeout=0.5,
        retry_policy=FAST, spool_dir=str(tmp_path),
    )
    provider = pipeline(exporter)
    emit(provider, 1200)  # three export batches of 512 at shutdown
    assert finishes(provider.shutdown)
    status = Spool(tmp_path).status()
    assert status.by_endpoint == {"/import": 1200, "/engage": 1200}
    assert exporter.stats()["spooled"] == {"events": 1200, "profile_updates": 1200}
    assert exporter.stats()["dropped"] == {}


def test_shutdown_with_mixpanel_hanging(tmp_path: Path, mixpanel: LocalMixpanel) -> None:
    """A server that never answers in time: flush and shutdown still return."""
    mixpanel.fail_next(100, status=None, delay=20)
    exporter = MixpanelSpanExporter(
        token=mixpanel.token, api_host=mixpanel.url, timeout=0.5, retry_policy=FAST,
        spool_dir=str(tmp_path),
    )
    provider = pipeline(exporter)
    emit(provider, 10)
    assert finishes(provider.force_flush)
    emit(provider, 10, prefix="F")
    assert finishes(provider.shutdown)
    stats = exporter.stats()
    # The timed-out /import request is spooled (Mixpanel dedupes its events by
    # $insert_id if it applied it late); the outage pause then keeps the
    # profile updates from being sent at all, so they are spooled, not unknown.
    assert stats["spooled"] == {"events": 20, "profile_updates": 20}
    assert stats["dropped"] == {}


def test_restart_replays_the_spool(tmp_path: Path, mixpanel: LocalMixpanel) -> None:
    """Queued while Mixpanel is down, shut down, restarted with Mixpanel up:
    every event arrives once and every update is applied once."""
    down = MixpanelSpanExporter(
        token=mixpanel.token, api_host=f"http://127.0.0.1:{closed_port()}", timeout=0.5,
        retry_policy=FAST, spool_dir=str(tmp_path),
    )
    provider = pipeline(down)
    emit(provider, 50)
    provider.shutdown()
    assert Spool(tmp_path).status().records == 100
    restarted = MixpanelSpanExporter(
        token=mixpanel.token, api_host=mixpanel.url, spool_dir=str(tmp_path),
    )
    assert mixpanel.wait_for(lambda m: len(m.profile_updates) == 50, timeout=20)
    restarted.shutdown()
    assert len(mixpanel.unique_events()) == 50
    assert mixpanel.profiles["u"] == {f"E{i}": 1 for i in range(50)}
    assert Spool(tmp_path).status().records == 0


def test_forked_child_sends_only_its_own(mixpanel: LocalMixpanel) -> None:
    """After fork, the child uses its own connection and never sends what the
    parent had queued; the parent still delivers its own records once."""
    exporter = MixpanelSpanExporter(token=mixpanel.token, api_host=mixpanel.url)
    provider = pipeline(exporter)
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
    provider.shutdown()
    names = sorted(e["event"] for e in mixpanel.events)
    assert names == ["Child0", "Child1", "Parent0", "Parent1", "Parent2", "Warmup0"]


def test_live_updates_never_overtake_the_spool(tmp_path: Path) -> None:
    """Updates spooled during an outage ("$set plan=free", a hundred times) and a
    newer "$set plan=pro" sent while the spool is still draining reach Mixpanel in
    that order, so the profile ends on pro."""
    server = LocalMixpanel(port=closed_port())
    down = MixpanelSpanExporter(
        token=server.token, api_host=f"http://127.0.0.1:{server.port}", timeout=0.3,
        retry_policy=FAST, spool_dir=str(tmp_path),
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
        set_plan(restarted, "pro")
        restarted.force_flush()
        assert server.wait_for(lambda m: len(m.profile_updates) == 101, timeout=30)
        plans = [u["$set"]["plan"] for u in server.profile_updates]
        assert plans == ["free"] * 100 + ["pro"]
        assert server.profiles["u"]["plan"] == "pro"
        restarted.shutdown()
    finally:
        server.stop()
