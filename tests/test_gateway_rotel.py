"""rotel (the lightweight Collector, from PyPI) as a real hop in front of the
gateway: OTLP in, OTLP/HTTP protobuf + gzip out."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from otel_mixpanel.gateway import Gateway, GatewaySettings
from otel_mixpanel.testing import LocalMixpanel
from tests.helpers import until

# rotel 0.0.1a15 ships a wheel for CPython 3.11 only (the matrix's other Pythons skip).
rotel = pytest.importorskip("rotel", reason="rotel's wheel is for CPython 3.11 only")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_span_through_rotel_reaches_mixpanel(mixpanel: LocalMixpanel, tmp_path: Path) -> None:
    agent = Path(rotel.__file__).parent / "rotel-agent"
    gateway = Gateway(GatewaySettings(port=0), token=mixpanel.token, api_host=mixpanel.url)
    url = gateway.start()
    http_port, grpc_port = free_port(), free_port()
    # The agent links the running Python's libpython (pyenv's, or Debian's libpython3.11).
    environ = {**os.environ, "LD_LIBRARY_PATH": str(sysconfig.get_config_var("LIBDIR"))}
    process = subprocess.Popen(
        [str(agent), "start", "--otlp-http-endpoint", f"127.0.0.1:{http_port}",
         "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}", "--exporter", "otlp",
         "--otlp-exporter-endpoint", url, "--otlp-exporter-protocol", "http",
         "--pid-file", str(tmp_path / "rotel.pid"), "--log-file", str(tmp_path / "rotel.log")],
        env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def listening() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", http_port)) == 0

        assert until(listening, timeout=20), f"rotel did not start ({sys.version})"
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(
            OTLPSpanExporter(endpoint=f"http://127.0.0.1:{http_port}/v1/traces")))
        with provider.get_tracer("svc").start_as_current_span("op", attributes={
                "mixpanel.event": "Via Rotel", "mixpanel.user_id": "r1"}):
            pass
        provider.shutdown()
        assert mixpanel.wait_for(lambda m: len(m.events) == 1, timeout=20)
    finally:
        process.terminate()
        process.communicate(timeout=20)
        gateway.stop()
    assert [(e["event"], e["properties"]["distinct_id"]) for e in mixpanel.events] == [
        ("Via Rotel", "r1")]
