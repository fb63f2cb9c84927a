"""The OTLP gateway over real HTTP, fed by the stock Python OTLP exporter: the
local Mixpanel shows what the in-process exporter would send for the same tags."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any, Dict, Iterator, Tuple

import pytest
import requests
from google.protobuf import json_format
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from otel_mixpanel import ConfigurationError, MixpanelSpanExporter
from otel_mixpanel.gateway import Gateway, GatewaySettings
from otel_mixpanel.testing import LocalMixpanel
from tests.helpers import FAST, finished_spans, log

TAGS = {"mixpanel.event": "Signed Up", "mixpanel.user_id": "u1",
        "mixpanel.properties.plan": "pro", "mixpanel.people.set.plan": "pro"}


@pytest.fixture
def gateway(mixpanel: LocalMixpanel) -> Iterator[Tuple[Gateway, str]]:
    served = Gateway(GatewaySettings(port=0), token=mixpanel.token, api_host=mixpanel.url,
                     retry_policy=FAST)
    url = served.start()
    try:
        yield served, url
    finally:
        served.stop()


def sdk_spans_through(exporter: Any, *tag_sets: Dict[str, Any]) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "checkout"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("svc")
    for tags in tag_sets:
        with tracer.start_as_current_span("op", attributes=tags):
            pass
    provider.shutdown()


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_the_stock_otlp_http_exporter_reaches_mixpanel(
    mixpanel: LocalMixpanel, gateway: Tuple[Gateway, str], compression: Compression
) -> None:
    _, url = gateway
    sdk_spans_through(OTLPSpanExporter(endpoint=f"{url}/v1/traces", compression=compression),
                      TAGS, {"http.route": "/untagged"})
    assert mixpanel.wait_for(lambda m: len(m.events) == 1)
    (event,) = mixpanel.events
    assert (event["event"], event["properties"]["distinct_id"]) == ("Signed Up", "u1")
    assert event["properties"]["service.name"] == "checkout"
    assert mixpanel.wait_for(lambda m: m.profiles.get("u1") == {"plan": "pro"})


def test_log_records_reach_mixpanel(mixpanel: LocalMixpanel, gateway: Tuple[Gateway, str]) -> None:
    _, url = gateway
    provider = LoggerProvider(resource=Resource.create({"service.name": "checkout"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(
        OTLPLogExporter(endpoint=f"{url}/v1/logs")))
    log(provider.get_logger("app"), body="paid", severity_number=SeverityNumber.INFO,
        attributes={"mixpanel.event": "Paid", "mixpanel.user_id": "u2"})
    log(provider.get_logger("otel_mixpanel.x"), body="ours", severity_number=SeverityNumber.INFO,
        attributes={"mixpanel.event": "Loop"})
    provider.shutdown()
    assert mixpanel.wait_for(lambda m: len(m.events) == 1)
    assert [e["event"] for e in mixpanel.events] == ["Paid"]


def test_the_same_span_gives_the_same_payload_as_the_in_process_exporter(
    mixpanel: LocalMixpanel, gateway: Tuple[Gateway, str],
) -> None:
    """Protobuf and OTLP/JSON (hex ids) over HTTP: the payload the in-process
    exporter sends for the same span, $insert_id included."""
    _, url = gateway
    spans = finished_spans(TAGS)
    with LocalMixpanel(token=mixpanel.token) as direct:
        exporter = MixpanelSpanExporter(token=mixpanel.token, api_host=direct.url)
        exporter.export(spans)
        exporter.shutdown()
        (expected,) = direct.events
    request = encode_spans(spans)
    as_json = otlp_json(request)
    for body, kind in ((request.SerializeToString(), "application/x-protobuf"),
                       (json.dumps(as_json).encode(), "application/json")):
        answer = requests.post(f"{url}/v1/traces", data=body, timeout=10,
                               headers={"Content-Type": kind})
        assert answer.status_code == 200, answer.text
    assert mixpanel.wait_for(lambda m: len(m.events) == 2)
    assert mixpanel.events == [expected, expected]


def otlp_json(request: Any) -> Dict[str, Any]:
    """*request* as OTLP/JSON senders write it: protobuf's JSON, ids in hex."""
    as_json: Dict[str, Any] = json_format.MessageToDict(request)
    for resource_spans in as_json["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            for span in scope_spans["spans"]:
                for key in ("traceId", "spanId"):
                    span[key] = base64.b64decode(span[key]).hex()
    return as_json


def post(url: str, body: bytes, **headers: str) -> requests.Response:
    return requests.post(f"{url}/v1/traces", data=body, timeout=10,
                         headers={"Content-Type": "application/x-protobuf", **headers})


def test_bodies_that_can_never_be_accepted_get_4xx(
    mixpanel: LocalMixpanel, gateway: Tuple[Gateway, str],
) -> None:
    served, url = gateway
    assert post(url, b"\xff\xfe not protobuf").status_code == 400
    assert post(url, b"not gzip", **{"Content-Encoding": "gzip"}).status_code == 400
    bomb = gzip.compress(b"\0" * (served.settings.max_request_bytes + 1))
    assert len(bomb) < 100_000
    assert post(url, bomb, **{"Content-Encoding": "gzip"}).status_code == 413
    assert post(url, b"{}", **{"Content-Type": "text/plain"}).status_code == 415
    assert requests.get(f"{url}/v1/traces", timeout=10).status_code == 405
    assert served.stats.snapshot()["dropped"] == {"gateway_bad_request": 1}


def test_an_ingest_token_is_required_when_set(mixpanel: LocalMixpanel) -> None:
    served = Gateway(GatewaySettings(port=0, ingest_token="s3cret"), token=mixpanel.token,
                     api_host=mixpanel.url)
    url = served.start()
    try:
        body = encode_spans(finished_spans(TAGS)).SerializeToString()
        assert post(url, body).status_code == 401
        assert post(url, body, Authorization="Bearer wrong").status_code == 401
        assert post(url, body, Authorization="Bearer s3cret").status_code == 200
    finally:
        served.stop()
    assert [e["event"] for e in mixpanel.events] == ["Signed Up"]


def test_listening_beyond_loopback_needs_a_token() -> None:
    with pytest.raises(ConfigurationError, match="ingest token"):
        GatewaySettings(host="0.0.0.0")
    GatewaySettings(host="0.0.0.0", ingest_token="t")
    GatewaySettings(host="0.0.0.0", allow_unauthenticated=True)


def test_a_full_queue_answers_503_and_the_sender_keeps_its_data(mixpanel: LocalMixpanel) -> None:
    """Mixpanel down, the queue's room gone: the gateway answers 503 with
    Retry-After instead of dropping; the stock exporter retries, and once
    Mixpanel is back everything arrives."""
    mixpanel.fail_next(10_000, status=503)
    served = Gateway(GatewaySettings(port=0, retry_after=1), token=mixpanel.token,
                     api_host=mixpanel.url, queue_max_bytes=1, retry_policy=FAST)
    url = served.start()
    try:
        body = encode_spans(finished_spans(TAGS)).SerializeToString()
        busy = post(url, body)
        assert (busy.status_code, busy.headers["Retry-After"]) == (503, "1")
        assert requests.get(f"{url}/ready", timeout=10).status_code == 503
        assert served.stats.snapshot()["dropped"] == {"gateway_refused_busy": 1}
    finally:
        served.stop(timeout_millis=0)


def test_operator_endpoints(gateway: Tuple[Gateway, str]) -> None:
    _, url = gateway
    assert requests.get(f"{url}/health", timeout=10).text == "ok"
    assert requests.get(f"{url}/ready", timeout=10).status_code == 200
    status = requests.get(f"{url}/status", timeout=10).json()
    assert status["room_bytes"] > 0 and "sent" in status


def test_the_command_serves_until_sigterm_then_delivers(
    mixpanel: LocalMixpanel, tmp_path: Any
) -> None:
    """``otel-mixpanel gateway`` as an operator runs it: environment credentials,
    a port, SIGTERM; and a refusal to listen on every address without a token."""
    import os  # noqa: PLC0415
    import signal  # noqa: PLC0415
    import socket  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from tests.helpers import until  # noqa: PLC0415

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    environ.update(mixpanel.env())
    command = [sys.executable, "-m", "otel_mixpanel.cli", "gateway"]
    refused = subprocess.run([*command, "--host", "0.0.0.0"], env=environ, capture_output=True,
                             text=True, timeout=30, check=False)
    assert refused.returncode != 0 and "ingest token" in refused.stderr
    process = subprocess.Popen([*command, "--port", str(port)], env=environ, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        assert until(lambda: _answers(url), timeout=20), process.stderr
        sdk_spans_through(OTLPSpanExporter(endpoint=f"{url}/v1/traces"), TAGS)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait(timeout=10)
    assert process.returncode == 0, stderr
    assert [e["event"] for e in mixpanel.events] == ["Signed Up"]


def _answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


def test_the_stock_otlp_grpc_exporter_reaches_mixpanel(mixpanel: LocalMixpanel) -> None:
    """OTLP/gRPC (the Collector's load-balancing exporter speaks only gRPC), with
    the ingest token as metadata; a full queue answers UNAVAILABLE with RetryInfo."""
    import grpc  # noqa: PLC0415
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter as GrpcSpanExporter,
    )
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc  # noqa: PLC0415

    served = Gateway(GatewaySettings(port=0, grpc_port=0, ingest_token="s3cret"),
                     token=mixpanel.token, api_host=mixpanel.url)
    served.start()
    try:
        target = f"127.0.0.1:{served.grpc_port}"
        sdk_spans_through(GrpcSpanExporter(endpoint=target, insecure=True,
                                           headers={"authorization": "Bearer s3cret"}), TAGS)
        assert mixpanel.wait_for(lambda m: len(m.events) == 1)
        assert mixpanel.events[0]["properties"]["distinct_id"] == "u1"
        with grpc.insecure_channel(target) as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.RpcError) as refused:
                stub.Export(encode_spans(finished_spans(TAGS)), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        served.stop()


def test_a_full_queue_answers_unavailable_with_retry_info_over_grpc(
    mixpanel: LocalMixpanel,
) -> None:
    import grpc  # noqa: PLC0415
    from google.rpc.error_details_pb2 import RetryInfo  # noqa: PLC0415
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc  # noqa: PLC0415

    served = Gateway(GatewaySettings(port=0, grpc_port=0, retry_after=2),
                     token=mixpanel.token, api_host=mixpanel.url, queue_max_bytes=1)
    served.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.RpcError) as busy:
                stub.Export(encode_spans(finished_spans(TAGS)), timeout=10)
        assert busy.value.code() == grpc.StatusCode.UNAVAILABLE
        trailers = dict(busy.value.trailing_metadata())
        assert RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"]).retry_delay.seconds == 2
    finally:
        served.stop(timeout_millis=0)


def test_a_chunked_body_is_read_whole(
    mixpanel: LocalMixpanel, gateway: Tuple[Gateway, str]
) -> None:
    """Node's exporters send chunked bodies, without Content-Length."""
    import http.client  # noqa: PLC0415

    _, url = gateway
    body = encode_spans(finished_spans(TAGS)).SerializeToString()
    connection = http.client.HTTPConnection(url.split("//")[1], timeout=10)
    pieces = [body[i:i + 7] for i in range(0, len(body), 7)]
    connection.request("POST", "/v1/traces", body=iter(pieces), encode_chunked=True,
                       headers={"Content-Type": "application/x-protobuf"})
    assert connection.getresponse().status == 200
    connection.close()
    assert mixpanel.wait_for(lambda m: len(m.events) == 1)


@pytest.fixture
def certificate(tmp_path: Any) -> Tuple[str, str]:
    """A self-signed certificate for 127.0.0.1, made with openssl."""
    import subprocess  # noqa: PLC0415

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


def test_tls_for_http_and_grpc(
    mixpanel: LocalMixpanel, certificate: Tuple[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    import grpc  # noqa: PLC0415
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter as GrpcSpanExporter,
    )

    cert, key = certificate
    # requests prefers these to a session's own CA file (the OTLP exporter's).
    for variable in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ConfigurationError, match="both"):
        GatewaySettings(tls_certfile=cert)
    served = Gateway(GatewaySettings(port=0, grpc_port=0, tls_certfile=cert, tls_keyfile=key),
                     token=mixpanel.token, api_host=mixpanel.url)
    url = served.start()
    try:
        assert url.startswith("https://")
        sdk_spans_through(OTLPSpanExporter(endpoint=f"{url}/v1/traces", certificate_file=cert),
                          {**TAGS, "mixpanel.user_id": "over-https"})
        with open(cert, "rb") as pem:
            credentials = grpc.ssl_channel_credentials(root_certificates=pem.read())
        sdk_spans_through(GrpcSpanExporter(endpoint=f"127.0.0.1:{served.grpc_port}",
                                           credentials=credentials),
                          {**TAGS, "mixpanel.user_id": "over-grpc-tls"})
        assert mixpanel.wait_for(lambda m: len(m.events) == 2)
        with pytest.raises(requests.ConnectionError):
            requests.get(url.replace("https", "http") + "/health", timeout=5)
    finally:
        served.stop()
    assert sorted(e["properties"]["distinct_id"] for e in mixpanel.events) == [
        "over-grpc-tls", "over-https"]


def test_the_counters_are_opentelemetry_metrics(mixpanel: LocalMixpanel) -> None:
    """The gateway's counters (refusals included) as the exporters' metrics."""
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: PLC0415

    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    served = Gateway(GatewaySettings(port=0), token=mixpanel.token, api_host=mixpanel.url,
                     meter_provider=meters)
    url = served.start()
    try:
        sdk_spans_through(OTLPSpanExporter(endpoint=f"{url}/v1/traces"), TAGS)
        assert mixpanel.wait_for(lambda m: len(m.events) == 1)
        assert post(url, b"\xff not protobuf").status_code == 400
    finally:
        served.stop()
    data: Any = reader.get_metrics_data()
    points = {
        (metric.name, tuple(sorted(point.attributes.items()))): point.value
        for resource_metrics in data.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
        for point in metric.data.data_points
    }
    assert points[("otel_mixpanel.records.sent", (("kind", "events"),))] == 1
    assert points[("otel_mixpanel.records.dropped", (("reason", "gateway_bad_request"),))] == 1
    meters.shutdown()


def test_tagged_telemetry_that_makes_nothing_is_a_partial_success(
    mixpanel: LocalMixpanel, gateway: Tuple[Gateway, str],
) -> None:
    """A tagged span whose tags can make no message (an event with no name and
    no identity) is reported rejected, so the sender knows and does not retry;
    identity-only and untagged spans are not."""
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2  # noqa: PLC0415

    _, url = gateway
    spans = finished_spans(TAGS, {"mixpanel.people.set.plan": "x"}, {"mixpanel.user_id": "u"},
                           {"http.route": "/"})
    request = encode_spans(spans)
    answer = post(url, request.SerializeToString())
    assert answer.status_code == 200
    response = trace_service_pb2.ExportTraceServiceResponse.FromString(answer.content)
    assert response.partial_success.rejected_spans == 1
    as_json = otlp_json(request)
    answer = requests.post(f"{url}/v1/traces", data=json.dumps(as_json), timeout=10,
                           headers={"Content-Type": "application/json"})
    assert answer.json()["partialSuccess"]["rejectedSpans"] == "1"


def test_without_its_extra_the_gateway_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys  # noqa: PLC0415

    monkeypatch.setitem(sys.modules, "opentelemetry.proto.collector.logs.v1", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'otel-mixpanel\[gateway\]'"):
        Gateway(GatewaySettings(port=0), token="t")
