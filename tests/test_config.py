"""Settings resolution: argument → environment → default, and clear errors."""

from __future__ import annotations

import re

import pytest

from otel_mixpanel import ConfigurationError
from otel_mixpanel._config import is_loopback, resolve_settings

TOKEN = {"OTEL_EXPORTER_MIXPANEL_TOKEN": "env-token"}


class TestPrecedence:
    @pytest.mark.parametrize(
        ("argument", "environ", "expected"),
        [
            (None, {}, "https://api.mixpanel.com"),
            (None, {"OTEL_EXPORTER_MIXPANEL_REGION": "eu"}, "https://api-eu.mixpanel.com"),
            (None, {"OTEL_EXPORTER_MIXPANEL_REGION": "IN"}, "https://api-in.mixpanel.com"),
            ("us", {"OTEL_EXPORTER_MIXPANEL_REGION": "eu"}, "https://api.mixpanel.com"),
        ],
    )
    def test_region(self, argument: str, environ: dict[str, str], expected: str) -> None:
        """The argument beats the variable, which beats the US default."""
        settings = resolve_settings(region=argument, environ={**TOKEN, **environ})
        assert settings.base_url == expected

    def test_api_host_overrides_region(self) -> None:
        """An explicit host wins over any region."""
        env = {**TOKEN, "OTEL_EXPORTER_MIXPANEL_API_HOST": "proxy.example.com/mp/"}
        settings = resolve_settings(region="eu", environ=env)
        assert settings.base_url == "https://proxy.example.com/mp"

    def test_token_argument_beats_environment(self) -> None:
        """Keyword arguments override the variables of the same name."""
        settings = resolve_settings(token="arg-token", environ=TOKEN)
        assert settings.token == "arg-token"

    def test_defaults(self) -> None:
        """Timeout 10 s, gzip, service.name, trace ids on."""
        settings = resolve_settings(environ=TOKEN)
        assert (settings.timeout, settings.compression) == (10.0, "gzip")
        assert settings.resource_attributes == ("service.name",)
        assert settings.trace_ids is True

    def test_environment_values(self) -> None:
        """Every variable is read."""
        env = {
            **TOKEN,
            "OTEL_EXPORTER_MIXPANEL_TIMEOUT": "2.5",
            "OTEL_EXPORTER_MIXPANEL_COMPRESSION": "none",
            "OTEL_EXPORTER_MIXPANEL_RESOURCE_ATTRIBUTES": "service.name, deployment.environment",
            "OTEL_EXPORTER_MIXPANEL_TRACE_IDS": "false",
            "OTEL_EXPORTER_MIXPANEL_PROJECT_ID": "7",
            "OTEL_EXPORTER_MIXPANEL_SERVICE_ACCOUNT_USERNAME": "sa",
            "OTEL_EXPORTER_MIXPANEL_SERVICE_ACCOUNT_SECRET": "secret",
        }
        settings = resolve_settings(environ=env)
        assert settings.timeout == 2.5
        assert settings.compression == "none"
        assert settings.resource_attributes == ("service.name", "deployment.environment")
        assert settings.trace_ids is False
        assert settings.uses_service_account
        assert settings.project_id == "7"


class TestErrors:
    def test_no_credentials_names_the_variables(self) -> None:
        """With nothing configured the error says what to set."""
        with pytest.raises(ConfigurationError) as caught:
            resolve_settings(environ={})
        message = str(caught.value)
        assert "OTEL_EXPORTER_MIXPANEL_TOKEN" in message
        assert "OTEL_EXPORTER_MIXPANEL_SERVICE_ACCOUNT_USERNAME" in message

    @pytest.mark.parametrize(
        ("kwargs", "fragment"),
        [
            ({"region": "mars"}, "OTEL_EXPORTER_MIXPANEL_REGION"),
            ({"timeout": 0}, "OTEL_EXPORTER_MIXPANEL_TIMEOUT"),
            ({"timeout": float("nan")}, "OTEL_EXPORTER_MIXPANEL_TIMEOUT"),
            ({"compression": "brotli"}, "OTEL_EXPORTER_MIXPANEL_COMPRESSION"),
            ({"api_host": "http://api.mixpanel.com"}, "plain http"),
            ({"api_host": "ftp://x"}, "OTEL_EXPORTER_MIXPANEL_API_HOST"),
            ({"service_account_username": "sa"}, "service_account_secret"),
            (
                {"service_account_username": "sa", "service_account_secret": "s"},
                "OTEL_EXPORTER_MIXPANEL_PROJECT_ID",
            ),
        ],
    )
    def test_bad_setting(self, kwargs: dict[str, object], fragment: str) -> None:
        """Each bad value is refused at construction with a message naming it."""
        with pytest.raises(ConfigurationError, match=fragment):
            resolve_settings(environ=TOKEN, **kwargs)  # type: ignore[arg-type]

    def test_bad_timeout_variable(self) -> None:
        """An unparsable variable is an error, not a silent default."""
        with pytest.raises(ConfigurationError, match="TIMEOUT"):
            resolve_settings(environ={**TOKEN, "OTEL_EXPORTER_MIXPANEL_TIMEOUT": "soon"})

    def test_bad_flag_variable(self) -> None:
        """Flags take true/false only."""
        with pytest.raises(ConfigurationError, match="TRACE_IDS"):
            resolve_settings(environ={**TOKEN, "OTEL_EXPORTER_MIXPANEL_TRACE_IDS": "maybe"})

    def test_secrets_stay_out_of_repr(self) -> None:
        """Neither the token nor the secret appears in the settings' repr."""
        settings = resolve_settings(
            token="tok-123", service_account_username="sa", service_account_secret="sec-456",
            project_id="1", environ={},
        )
        assert "tok-123" not in repr(settings)
        assert "sec-456" not in repr(settings)


@pytest.mark.parametrize(
    ("host", "expected"),
    [("localhost", True), ("127.0.0.1", True), ("127.8.0.1", True), ("::1", True),
     ("[::1]", True), ("10.0.0.1", False), ("example.com", False)],
)
def test_is_loopback(host: str, expected: bool) -> None:
    """Only this machine counts as loopback."""
    assert is_loopback(host) is expected


def test_plain_http_allowed_for_loopback() -> None:
    """The local Mixpanel needs plain http on 127.0.0.1."""
    settings = resolve_settings(api_host="http://127.0.0.1:9999", environ=TOKEN)
    assert settings.base_url == "http://127.0.0.1:9999"


class TestQueueSettings:
    def test_defaults(self) -> None:
        """A 64 MiB memory queue and a 20 s shutdown budget, without reading docs."""
        settings = resolve_settings(environ=TOKEN)
        assert settings.queue_max_bytes == 64 * 1024 * 1024
        assert settings.shutdown_timeout == 20.0

    @pytest.mark.parametrize(
        ("keywords", "named"),
        [
            ({"queue_max_bytes": "lots"}, "queue_max_bytes= (or OTEL_EXPORTER_MIXPANEL_QUEUE_MAX"),
            ({"queue_max_bytes": 1.5}, "queue_max_bytes="),
            ({"queue_max_bytes": True}, "queue_max_bytes="),
            ({"spool_max_bytes": "64MiB"}, "spool_max_bytes="),
            ({"shutdown_timeout": "x"}, "shutdown_timeout= (or OTEL_EXPORTER_MIXPANEL_SHUTDOWN"),
            ({"shutdown_timeout": 0}, "shutdown_timeout="),
            ({"timeout": "5"}, "timeout="),
            ({"token": ""}, "token= (or OTEL_EXPORTER_MIXPANEL_TOKEN) must be a non-empty"),
            ({"spool_dir": " "}, "spool_dir="),
        ],
    )
    def test_wrong_types_name_the_setting(self, keywords: dict[str, object], named: str) -> None:
        """A wrong type is a ConfigurationError naming the setting, never a bare TypeError."""
        with pytest.raises(ConfigurationError, match=re.escape(named)):
            resolve_settings(environ=TOKEN, **keywords)  # type: ignore[arg-type]

    def test_environment_value_is_quoted_as_given(self) -> None:
        environ = {**TOKEN, "OTEL_EXPORTER_MIXPANEL_SHUTDOWN_TIMEOUT": "abc"}
        with pytest.raises(ConfigurationError, match="not 'abc'"):
            resolve_settings(environ=environ)
