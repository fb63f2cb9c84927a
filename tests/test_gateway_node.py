"""Node's stock OTLP exporters (npm, the 0.223 line that runs on Debian's Node 20)
send tagged spans and log records through the gateway: JSON and protobuf, plain
and gzip, with the chunked bodies Node sends."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from otel_mixpanel.gateway import Gateway, GatewaySettings
from otel_mixpanel.testing import LocalMixpanel

NODE_PROJECT = Path(__file__).parent / "node"


@pytest.fixture
def gateway_url(mixpanel: LocalMixpanel) -> Iterator[str]:
    served = Gateway(GatewaySettings(port=0), token=mixpanel.token, api_host=mixpanel.url)
    try:
        yield served.start()
    finally:
        served.stop()


@pytest.mark.parametrize(("encoding", "compression"), [
    ("json", "none"), ("json", "gzip"), ("proto", "none"), ("proto", "gzip")])
def test_node_exporters_reach_mixpanel(
    node: str, gateway_url: str, mixpanel: LocalMixpanel, encoding: str, compression: str,
) -> None:
    user = f"node-{encoding}-{compression}"
    result = subprocess.run([node, str(NODE_PROJECT / "send.mjs"), gateway_url, encoding,
                             compression, user], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert mixpanel.wait_for(lambda m: len(m.events) == 2)
    events = {e["event"]: e["properties"] for e in mixpanel.events}
    assert set(events) == {"Node Checkout", "Node Paid"}
    checkout = events["Node Checkout"]
    assert (checkout["distinct_id"], checkout["items"], checkout["tags"]) == (user, 3, ["a", "b"])
    assert checkout["service.name"] == "node-shop"
    assert events["Node Paid"]["distinct_id"] == user
    assert mixpanel.wait_for(lambda m: m.profiles.get(user) == {"plan": "pro"})
