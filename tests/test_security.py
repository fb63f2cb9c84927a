"""Credentials never leak (logs, exception messages, repr), plain http only to
loopback, untagged attributes never leave the process, and the opt-in
allow/deny lists keep denied property names on this side."""

from __future__ import annotations

import base64
import gzip
import logging
from typing import Any, Dict, Iterator, List

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_mixpanel import ConfigurationError, MixpanelLogExporter, MixpanelSpanExporter
from otel_mixpanel._compat import LogRecordExportResult
from otel_mixpanel._config import resolve_settings
from otel_mixpanel.testing import LocalMixpanel
from tests.conftest import ShutDown
from tests.helpers import FAST, finished_spans, log, memory_log_exporter, refusing_port, until

TOKEN = "tok-S3CRET-9f2c7e1a"
SA_USER = "sa-user-K1w9"
SA_SECRET = "sa-S3CRET-Zq81x0"
PROJECT = "424242"
TOKEN_BASIC = base64.b64encode(f"{TOKEN}:".encode()).decode()
SA_BASIC = base64.b64encode(f"{SA_USER}:{SA_SECRET}".encode()).decode()
SECRETS = (TOKEN, SA_SECRET, TOKEN_BASIC, SA_BASIC, TOKEN_BASIC.rstrip("="),
           SA_BASIC.rstrip("="))


def assert_no_secret(text: str) -> None:
    """None of the credentials, nor their Basic-auth forms, is in *text*."""
    for secret in SECRETS:
        assert secret not in text


def raw_bodies(server: LocalMixpanel) -> bytes:
    """Every request body as sent, /import bodies gunzipped."""
    parts = []
    for request in server.requests:
        body = request.body
        if request.headers.get("Content-Encoding") == "gzip" or body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        parts.append(body)
    return b"\n".join(parts)




@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture every logger at DEBUG (urllib3's request lines included)."""
    caplog.set_level(logging.DEBUG)
    yield caplog


# Credentials


def refusals(caplog: pytest.LogCaptureFixture) -> List[str]:
    """The WARNING lines saying Mixpanel refused the credentials."""
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "refused the credentials" in r.getMessage()]


def test_refused_token_never_logged(all_logs: pytest.LogCaptureFixture) -> None:
    """A 401 (the server has another token): the records wait (a token can be
    fixed; nothing is dropped), a WARNING says Mixpanel refused the credentials,
    and neither the token nor its Basic form appears in logs or repr. Once
    Mixpanel accepts the token, the waiting record is delivered."""
    with LocalMixpanel(token="another-token") as server:
        exporter = MixpanelSpanExporter(
            token=TOKEN, api_host=server.url, timeout=2, retry_policy=FAST
        )
        try:
            result = exporter.export(finished_spans({"mixpanel.event": "E"}))
            assert result is SpanExportResult.SUCCESS  # queued, not lost
            assert until(lambda: len(server.requests) >= 3)  # retried, not given up
            assert {r.status for r in server.requests} == {401}
            assert server.requests[0].headers["Authorization"] == f"Basic {TOKEN_BASIC}"
            stats = exporter.stats()
            assert stats["waiting"]["records"] == 1
            assert stats["dropped"] == {} and stats["sent"] == {}
            assert refusals(all_logs)
            server.token = TOKEN  # the project's token is the exporter's again
            assert exporter.force_flush(10_000) is True
            assert [e["event"] for e in server.events] == ["E"]
            assert exporter.stats()["dropped"] == {}
        finally:
            exporter.shutdown(timeout_millis=1_000)
    assert_no_secret(all_logs.text)
    assert_no_secret(repr(exporter))
    assert_no_secret(str(exporter))


def test_refused_service_account_never_logged(all_logs: pytest.LogCaptureFixture) -> None:
    """A 401 for the service account: the record waits, the WARNING says why,
    and the secret never appears in logs (the shutdown totals included) or repr."""
    with LocalMixpanel(service_account=("other", "other")) as server:
        exporter = MixpanelLogExporter(
            api_host=server.url, project_id=PROJECT, service_account_username=SA_USER,
            service_account_secret=SA_SECRET, timeout=2, retry_policy=FAST,
        )
        try:
            memory = memory_log_exporter()
            provider = LoggerProvider()
            provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
            log(provider.get_logger("app"), attributes={"mixpanel.event": "E"})
            provider.shutdown()
            result = exporter.export(memory.get_finished_logs())
            assert result is LogRecordExportResult.SUCCESS  # queued, not lost
            assert until(lambda: len(server.requests) >= 2)
            assert {r.status for r in server.requests} == {401}
            assert server.requests[0].headers["Authorization"] == f"Basic {SA_BASIC}"
            assert exporter.stats()["waiting"]["records"] == 1
            assert exporter.stats()["dropped"] == {}
            assert refusals(all_logs)
        finally:
            exporter.shutdown(timeout_millis=200)
    # What still waited at shutdown is counted, in a totals line without secrets.
    assert exporter.stats()["dropped"] == {"undelivered_at_shutdown": 1}
    assert "undelivered_at_shutdown 1" in all_logs.text
    assert_no_secret(all_logs.text)
    assert_no_secret(repr(exporter))


def test_connection_refused_never_logs_credentials(all_logs: pytest.LogCaptureFixture) -> None:
    """Nothing listening: export returns at once with the record waiting, the
    failed attempts are logged; shutdown counts the record undelivered; no
    credential appears in any of those lines."""
    exporter = MixpanelSpanExporter(
        token=TOKEN, api_host=f"http://127.0.0.1:{refusing_port()}", timeout=0.3,
        retry_policy=FAST,
    )
    try:
        result = exporter.export(finished_spans({"mixpanel.event": "E"}))
        assert result is SpanExportResult.SUCCESS
        assert until(lambda: exporter.stats()["retried"].get("events", 0) >= 2)
        assert exporter.stats()["waiting"]["records"] == 1
        assert exporter.stats()["dropped"] == {}
        assert "attempt 1 failed" in all_logs.text
    finally:
        exporter.shutdown(timeout_millis=200)
    assert exporter.stats()["dropped"] == {"undelivered_at_shutdown": 1}
    assert "undelivered_at_shutdown 1" in all_logs.text
    assert_no_secret(all_logs.text)
    assert_no_secret(repr(exporter))


def test_connection_refused_with_service_account(all_logs: pytest.LogCaptureFixture) -> None:
    """Same with a service account: the secret and its Basic form never appear."""
    exporter = MixpanelSpanExporter(
        token=TOKEN, project_id=PROJECT, service_account_username=SA_USER,
        service_account_secret=SA_SECRET, api_host=f"http://127.0.0.1:{refusing_port()}",
        timeout=0.3, retry_policy=FAST,
    )
    try:
        spans = finished_spans({"mixpanel.event": "E", "mixpanel.distinct_id": "u",
                                "mixpanel.people.set.plan": "pro"})
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert until(lambda: exporter.stats()["retried"].get("events", 0) >= 2)
        assert exporter.stats()["waiting"]["records"] == 2  # the event and the update
    finally:
        exporter.shutdown(timeout_millis=200)
    assert exporter.stats()["dropped"] == {"undelivered_at_shutdown": 2}
    assert "attempt 1 failed" in all_logs.text
    assert_no_secret(all_logs.text)


@pytest.mark.parametrize(
    "arguments",
    [
        {"token": TOKEN, "api_host": "http://example.com"},
        {"token": TOKEN, "region": "mars"},
        {"token": TOKEN, "timeout": -1.0},
        {"token": TOKEN, "compression": "br"},
        {"token": TOKEN, "spool_max_bytes": 0},
        {"token": TOKEN, "service_account_secret": SA_SECRET},
        {"service_account_username": SA_USER, "service_account_secret": SA_SECRET},
        {"service_account_username": SA_USER, "project_id": PROJECT},
        {"token": TOKEN, "api_host": "ftp://x"},
    ],
    ids=["http", "region", "timeout", "compression", "spool", "secret-only", "no-project",
         "no-secret", "scheme"],
)
def test_configuration_errors_never_show_credentials(
    arguments: Dict[str, Any], all_logs: pytest.LogCaptureFixture
) -> None:
    """Every configuration error names the setting, never a credential's value."""
    with pytest.raises(ConfigurationError) as raised:
        MixpanelSpanExporter(**arguments)
    assert "OTEL_EXPORTER_MIXPANEL_" in str(raised.value)
    assert_no_secret(str(raised.value))
    assert_no_secret(repr(raised.value))
    assert_no_secret(all_logs.text)


def test_configuration_errors_from_environment_never_show_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Credentials from the environment and a bad setting: the error hides them."""
    monkeypatch.setenv("OTEL_EXPORTER_MIXPANEL_TOKEN", TOKEN)
    monkeypatch.setenv("OTEL_EXPORTER_MIXPANEL_SERVICE_ACCOUNT_SECRET", SA_SECRET)
    with pytest.raises(ConfigurationError) as raised:
        MixpanelLogExporter()
    assert_no_secret(str(raised.value))
    monkeypatch.setenv("OTEL_EXPORTER_MIXPANEL_SERVICE_ACCOUNT_USERNAME", SA_USER)
    monkeypatch.setenv("OTEL_EXPORTER_MIXPANEL_PROJECT_ID", PROJECT)
    monkeypatch.setenv("OTEL_EXPORTER_MIXPANEL_API_HOST", "http://example.com")
    with pytest.raises(ConfigurationError) as raised:
        MixpanelLogExporter()
    assert_no_secret(str(raised.value))


def test_settings_repr_hides_credentials() -> None:
    """repr/str of the resolved settings show neither the token nor the secret."""
    settings = resolve_settings(
        token=TOKEN, project_id=PROJECT, service_account_username=SA_USER,
        service_account_secret=SA_SECRET, environ={},
    )
    assert settings.token == TOKEN
    assert_no_secret(repr(settings))
    assert_no_secret(str(settings))


def test_exporter_repr_hides_credentials(shut_down: ShutDown) -> None:
    """repr/str of both exporters (never exported) show no credential."""
    for kind in (MixpanelSpanExporter, MixpanelLogExporter):
        exporter = shut_down(kind(
            token=TOKEN, project_id=PROJECT, service_account_username=SA_USER,
            service_account_secret=SA_SECRET, api_host="http://127.0.0.1:1",
        ))
        assert_no_secret(repr(exporter))
        assert_no_secret(str(exporter))


# HTTPS except loopback


@pytest.mark.parametrize(
    "api_host",
    ["http://example.com", "http://example.com:80/", "http://10.0.0.1:8080",
     "http://127.0.0.1.example.com", "http://localhost.example.com", "http://[::2]:80"],
)
def test_plain_http_refused_for_other_hosts(api_host: str) -> None:
    """Plain http to anything but loopback is a ConfigurationError (argument and variable)."""
    with pytest.raises(ConfigurationError, match="http"):
        MixpanelSpanExporter(token=TOKEN, api_host=api_host)
    with pytest.raises(ConfigurationError, match="OTEL_EXPORTER_MIXPANEL_API_HOST"):
        resolve_settings(token=TOKEN, environ={"OTEL_EXPORTER_MIXPANEL_API_HOST": api_host})


@pytest.mark.parametrize(
    "api_host",
    ["http://127.0.0.1:{port}", "http://localhost:{port}", "http://[::1]:{port}",
     "http://127.0.0.2:{port}", "https://example.com", "example.com"],
)
def test_loopback_http_and_https_accepted(api_host: str, shut_down: ShutDown) -> None:
    """http to 127.0.0.0/8, localhost and [::1] is accepted; https anywhere; a bare
    host means https."""
    url = api_host.format(port=8080)
    settings = resolve_settings(token=TOKEN, api_host=url, environ={})
    assert settings.base_url.startswith(("http://", "https://"))
    if "://" not in url:
        assert settings.base_url == f"https://{url}"
    shut_down(MixpanelSpanExporter(token=TOKEN, api_host=url))


def test_localhost_delivers(mixpanel: LocalMixpanel, shut_down: ShutDown) -> None:
    """``http://localhost:port`` is a working loopback URL."""
    exporter = shut_down(MixpanelSpanExporter(
        token=mixpanel.token, api_host=mixpanel.url.replace("127.0.0.1", "localhost")
    ))
    assert exporter.export(finished_spans({"mixpanel.event": "Local"})) is (
        SpanExportResult.SUCCESS
    )
    assert len(mixpanel.events_named("Local")) == 1


# Only mixpanel.* leaves the process


def test_unprefixed_attributes_never_leave(mixpanel: LocalMixpanel, shut_down: ShutDown) -> None:
    """Span attributes without the prefix, span-event attributes, log bodies and
    resource attributes other than service.name are in no request body."""
    exporter = shut_down(MixpanelSpanExporter(token=mixpanel.token, api_host=mixpanel.url))
    resource = Resource.create({"service.name": "shop", "host.secret": "res-LEAK-1"})
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("t").start_as_current_span("op", attributes={
        "mixpanel.event": "E", "mixpanel.distinct_id": "u", "mixpanel.people.set.plan": "pro",
        "http.request.header.authorization": "attr-LEAK-2", "user.email": "attr-LEAK-3",
        "mixpanelx.event": "attr-LEAK-4", "Mixpanel.event": "attr-LEAK-5",
    }) as span:
        span.add_event("e", {"mixpanel.event": "Ev", "password": "event-LEAK-6"})
    provider.shutdown()
    assert exporter.export(memory.get_finished_spans()) is SpanExportResult.SUCCESS

    logs = shut_down(MixpanelLogExporter(token=mixpanel.token, api_host=mixpanel.url))
    log_memory = memory_log_exporter()
    log_provider = LoggerProvider(resource=resource)
    log_provider.add_log_record_processor(SimpleLogRecordProcessor(log_memory))
    log(log_provider.get_logger("app"), body="body-LEAK-7",
        attributes={"mixpanel.event": "L", "card": "log-LEAK-8"})
    log_provider.shutdown()
    assert logs.export(log_memory.get_finished_logs()) is LogRecordExportResult.SUCCESS

    assert {e["event"] for e in mixpanel.events} == {"E", "Ev", "L"}
    assert mixpanel.profiles == {"u": {"plan": "pro"}}
    sent = raw_bodies(mixpanel)
    assert b"shop" in sent  # bodies really were decoded
    assert b"LEAK" not in sent
    assert TOKEN.encode() not in sent


# Allow and deny lists


def test_denylist_never_sends_denied_names(mixpanel: LocalMixpanel, shut_down: ShutDown) -> None:
    """Denied names reach neither the event nor the profile's $set; each removal
    is counted as property_not_allowed."""
    exporter = shut_down(MixpanelSpanExporter(
        token=mixpanel.token, api_host=mixpanel.url, property_denylist=["email", "phone"]
    ))
    spans = finished_spans({
        "mixpanel.event": "E", "mixpanel.distinct_id": "u",
        "mixpanel.properties.email": "deny-LEAK-a@x", "mixpanel.properties.plan": "pro",
        "mixpanel.people.set.email": "deny-LEAK-b@x", "mixpanel.people.set.phone": "deny-LEAK-c",
        "mixpanel.people.set.plan": "pro",
    })
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    (event,) = mixpanel.events
    assert "email" not in event["properties"] and event["properties"]["plan"] == "pro"
    assert mixpanel.profiles == {"u": {"plan": "pro"}}
    assert b"LEAK" not in raw_bodies(mixpanel)
    assert exporter.stats()["dropped"] == {"property_not_allowed": 3}


def test_allowlist_keeps_only_listed_and_required(
    mixpanel: LocalMixpanel, shut_down: ShutDown
) -> None:
    """With an allowlist, events carry only listed names plus time, distinct_id and
    $insert_id; profiles only listed names; every other name counted."""
    exporter = shut_down(MixpanelSpanExporter(
        token=mixpanel.token, api_host=mixpanel.url, property_allowlist=["plan"]
    ))
    spans = finished_spans({
        "mixpanel.event": "E", "mixpanel.distinct_id": "u",
        "mixpanel.properties.plan": "pro", "mixpanel.properties.email": "allow-LEAK",
        "mixpanel.people.set.plan": "pro", "mixpanel.people.set.email": "allow-LEAK",
    })
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    (event,) = mixpanel.events
    props = event["properties"]
    assert set(props) == {"plan", "time", "distinct_id", "$insert_id"}
    assert mixpanel.profiles == {"u": {"plan": "pro"}}
    assert b"LEAK" not in raw_bodies(mixpanel)
    # email (event), email (profile), and the automatic service.name, trace_id,
    # span_id, $duration, mp_lib, $lib_version
    assert exporter.stats()["dropped"] == {"property_not_allowed": 8}


@pytest.mark.needs_sdk("1.33", "mapping-valued log attributes; before, the SDK drops them")
def test_lists_from_environment(
    mixpanel: LocalMixpanel, monkeypatch: pytest.MonkeyPatch, shut_down: ShutDown
) -> None:
    """OTEL_EXPORTER_MIXPANEL_PROPERTY_ALLOWLIST/_DENYLIST, comma-separated (spaces
    allowed): the denylist wins over the allowlist."""
    for name, value in mixpanel.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OTEL_EXPORTER_MIXPANEL_PROPERTY_ALLOWLIST", " plan , email,seats")
    monkeypatch.setenv("OTEL_EXPORTER_MIXPANEL_PROPERTY_DENYLIST", "email")
    exporter = shut_down(MixpanelLogExporter())
    memory = memory_log_exporter()
    provider = LoggerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    log(provider.get_logger("app"), attributes={
        "mixpanel.event": "E", "mixpanel.distinct_id": "u",
        "mixpanel.properties": {"plan": "pro", "seats": 3, "email": "env-LEAK", "other": 1},
        "mixpanel.people.set": {"email": "env-LEAK", "plan": "pro"},
    })
    provider.shutdown()
    assert exporter.export(memory.get_finished_logs()) is LogRecordExportResult.SUCCESS
    (event,) = mixpanel.events
    assert set(event["properties"]) == {"plan", "seats", "time", "distinct_id", "$insert_id"}
    assert mixpanel.profiles == {"u": {"plan": "pro"}}
    assert b"LEAK" not in raw_bodies(mixpanel)
    # email, other, service.name, mp_lib, $lib_version (event) + email (profile)
    assert exporter.stats()["dropped"] == {"property_not_allowed": 6}


def test_required_properties_cannot_be_denied(
    mixpanel: LocalMixpanel, shut_down: ShutDown
) -> None:
    """Denying time/distinct_id/$insert_id does not break the event."""
    exporter = shut_down(MixpanelSpanExporter(
        token=mixpanel.token, api_host=mixpanel.url,
        property_denylist=["time", "distinct_id", "$insert_id"],
    ))
    spans = finished_spans({"mixpanel.event": "E", "mixpanel.distinct_id": "u"})
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert mixpanel.rejected == []
    (event,) = mixpanel.events
    assert event["properties"]["distinct_id"] == "u"
