"""configure(): adds to existing providers, creates them only when missing,
never double-delivers, hooks logging and structlog, bounded flush/shutdown."""

from __future__ import annotations

import datetime
import logging
import os
import subprocess
import sys
import textwrap
from typing import Any, Dict, Iterator, List

import pytest
import structlog
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_mixpanel import ConfigurationError, _compat, configure
from otel_mixpanel._configure import _global_provider
from otel_mixpanel.structlog import MixpanelProcessor
from otel_mixpanel.testing import LocalMixpanel
from tests.helpers import log


@pytest.fixture(autouse=True)
def reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def test_adds_to_the_applications_providers(mixpanel: LocalMixpanel) -> None:
    """The user's own processors keep working; ours are added beside them."""
    memory = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(memory))
    logger_provider = LoggerProvider()
    pipeline = configure(tracer_provider=tracer_provider, logger_provider=logger_provider,
                         token=mixpanel.token, api_host=mixpanel.url)
    with tracer_provider.get_tracer("t").start_as_current_span("s") as span:
        span.set_attribute("mixpanel.event", "E")
    log(logger_provider.get_logger("app"), attributes={"mixpanel.event": "L"})
    assert pipeline.force_flush()
    assert sorted(e["event"] for e in mixpanel.events) == ["E", "L"]
    assert [s.name for s in memory.get_finished_spans()] == ["s"]
    assert pipeline.shutdown()


def test_calling_twice_does_not_double_deliver(mixpanel: LocalMixpanel) -> None:
    """A second configure() for the same providers returns the same pipeline."""
    tracer_provider, logger_provider = TracerProvider(), LoggerProvider()
    first = configure(tracer_provider=tracer_provider, logger_provider=logger_provider,
                      token=mixpanel.token, api_host=mixpanel.url)
    second = configure(tracer_provider=tracer_provider, logger_provider=logger_provider,
                       token=mixpanel.token, api_host=mixpanel.url)
    assert first is second
    with tracer_provider.get_tracer("t").start_as_current_span("s") as span:
        span.set_attribute("mixpanel.event", "Once")
    first.force_flush()
    assert len(mixpanel.events) == 1
    first.shutdown()


def test_hooks_logging_and_structlog_and_undoes_them(mixpanel: LocalMixpanel) -> None:
    """logging=True and structlog=True send both kinds of lines; shutdown removes
    the hooks."""
    structlog.configure(processors=[structlog.processors.JSONRenderer()],
                        logger_factory=structlog.ReturnLoggerFactory())
    handlers_before = list(logging.getLogger().handlers)
    pipeline = configure(tracer_provider=TracerProvider(), logger_provider=LoggerProvider(),
                         logging=True, structlog=True,
                         token=mixpanel.token, api_host=mixpanel.url)
    chain = structlog.get_config()["processors"]
    assert isinstance(chain[0], MixpanelProcessor) and len(chain) == 2
    logging.getLogger("app.configure").warning("x", extra={"mixpanel.event": "From Logging"})
    structlog.get_logger().info("y", mixpanel_event="From Structlog")
    pipeline.force_flush()
    assert sorted(e["event"] for e in mixpanel.events) == ["From Logging", "From Structlog"]
    pipeline.shutdown()
    assert logging.getLogger().handlers == handlers_before
    assert len(structlog.get_config()["processors"]) == 1


@pytest.mark.parametrize(("level", "warned"), [(logging.WARNING, True), (logging.INFO, False)])
def test_logging_says_at_once_when_the_root_level_hides_info(
    mixpanel: LocalMixpanel, caplog: pytest.LogCaptureFixture, level: int, warned: bool
) -> None:
    """logging=True with the root logger at WARNING: an INFO line tagged for
    Mixpanel is never made, and configure() says so at once with the fix."""
    root = logging.getLogger()
    before = root.level
    root.setLevel(level)
    try:
        with caplog.at_level(logging.WARNING, logger="otel_mixpanel"):
            pipeline = configure(tracer_provider=TracerProvider(),
                                 logger_provider=LoggerProvider(), logging=True,
                                 token=mixpanel.token, api_host=mixpanel.url)
        lines = [m for m in caplog.messages if "root logger's level" in m]
        logging.getLogger("app").info("paid", extra={"mixpanel.event": "Paid"})
        pipeline.force_flush()
        pipeline.shutdown()
    finally:
        root.setLevel(before)
    assert bool(lines) is warned
    if warned:
        assert "setLevel(logging.INFO)" in lines[0]
    assert bool(mixpanel.events_named("Paid")) is not warned


def test_structlog_configured_after_us_keeps_our_processor(mixpanel: LocalMixpanel) -> None:
    """configure(structlog=True) first, structlog.configure(...) after, as many
    apps do at import: the events still arrive; shutdown gives structlog back."""
    original = structlog.configure
    pipeline = configure(tracer_provider=TracerProvider(), logger_provider=LoggerProvider(),
                         structlog=True, token=mixpanel.token, api_host=mixpanel.url)
    structlog.configure(processors=[structlog.processors.JSONRenderer()],
                        logger_factory=structlog.ReturnLoggerFactory())
    chain = structlog.get_config()["processors"]
    assert isinstance(chain[0], MixpanelProcessor) and len(chain) == 2
    structlog.get_logger().info("signup", mixpanel_event="Late Config")
    pipeline.force_flush()
    pipeline.shutdown()
    assert [e["event"] for e in mixpanel.events] == ["Late Config"]
    assert structlog.configure is original
    assert not any(isinstance(p, MixpanelProcessor) for p in structlog.get_config()["processors"])


def test_dates_in_extra_arrive_as_iso_8601(mixpanel: LocalMixpanel) -> None:
    """A datetime in stdlib extra= arrives as ISO-8601, as docs/attributes.md says."""
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.INFO)
    try:
        pipeline = configure(tracer_provider=TracerProvider(), logger_provider=LoggerProvider(),
                             logging=True, token=mixpanel.token, api_host=mixpanel.url)
        logging.getLogger("app").info("renewed", extra={
            "mixpanel.event": "Renewed",
            "mixpanel.properties.renews_at": datetime.datetime(2024, 5, 1, 12, 0, 0),
        })
        pipeline.force_flush()
        pipeline.shutdown()
    finally:
        root.setLevel(before)
    (event,) = mixpanel.events_named("Renewed")
    assert event["properties"]["renews_at"] == "2024-05-01T12:00:00"


def test_flush_and_shutdown_are_bounded(mixpanel: LocalMixpanel) -> None:
    """With Mixpanel hanging, force_flush and shutdown return False in time."""
    mixpanel.fail_next(100, status=None, delay=30)
    tracer_provider = TracerProvider()
    pipeline = configure(tracer_provider=tracer_provider, logger_provider=LoggerProvider(),
                         token=mixpanel.token, api_host=mixpanel.url, timeout=20)
    with tracer_provider.get_tracer("t").start_as_current_span("s") as span:
        span.set_attribute("mixpanel.event", "E")
    assert pipeline.force_flush(timeout_millis=200) is False
    assert pipeline.shutdown(timeout_millis=200) is False


def test_rejects_a_foreign_global_provider() -> None:
    """A non-SDK global provider cannot take processors: a clear error, not a no-op."""
    code = textwrap.dedent("""
        from opentelemetry import trace
        class Foreign(trace.TracerProvider):
            def get_tracer(self, *args, **kwargs):
                return trace.NoOpTracer()
        trace.set_tracer_provider(Foreign())
        import otel_mixpanel
        try:
            otel_mixpanel.configure(token="t")
        except otel_mixpanel.ConfigurationError as error:
            print("error:", error)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert "error: the global tracer provider is a Foreign" in result.stdout


def test_creates_global_providers_when_none(mixpanel: LocalMixpanel) -> None:
    """With nothing set up, configure() creates and sets the global providers."""
    code = textwrap.dedent("""
        from opentelemetry import trace
        import otel_mixpanel
        pipeline = otel_mixpanel.configure()
        assert trace.get_tracer_provider() is pipeline.tracer_provider
        with trace.get_tracer("t").start_as_current_span("s") as span:
            span.set_attribute("mixpanel.event", "Global")
        pipeline.shutdown()
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(mixpanel.env())
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert [e["event"] for e in mixpanel.events] == ["Global"]


@pytest.mark.parametrize("batching", [
    {"max_queue_size": 0}, {"max_queue_size": -1}, {"max_queue_size": "20480"},
    {"max_export_batch_size": 0}, {"max_export_batch_size": True},
    {"schedule_delay_millis": 0}, {"schedule_delay_millis": float("nan")},
])
def test_a_buffer_that_holds_nothing_is_a_clear_error(
    mixpanel: LocalMixpanel, batching: Dict[str, Any],
) -> None:
    """max_queue_size=0 would drop every event (counted, but still): refused at
    once, before any provider is touched."""
    tracer_provider = TracerProvider()
    name = next(iter(batching))
    with pytest.raises(ConfigurationError, match=name):
        configure(tracer_provider=tracer_provider, logger_provider=LoggerProvider(),
                  token=mixpanel.token, api_host=mixpanel.url, **batching)
    assert not tracer_provider._active_span_processor._span_processors


def test_missing_credentials_fail_loudly() -> None:
    """configure() without credentials raises, naming the variables."""
    with pytest.raises(ConfigurationError, match="OTEL_EXPORTER_MIXPANEL_TOKEN"):
        configure(tracer_provider=TracerProvider(), logger_provider=LoggerProvider())


def test_failed_call_leaves_nothing_behind(
    mixpanel: LocalMixpanel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A configure() that fails (a missing extra) adds no processor, so the next
    call does not deliver everything twice."""
    def no_handler() -> type:
        raise ImportError("opentelemetry.instrumentation.logging")

    tracer_provider = TracerProvider()
    monkeypatch.setattr(_compat, "logging_handler_class", no_handler)
    with pytest.raises(ConfigurationError, match=r"\[logging\]"):
        configure(tracer_provider=tracer_provider, logger_provider=LoggerProvider(),
                  logging=True, token=mixpanel.token, api_host=mixpanel.url)
    monkeypatch.undo()
    pipeline = configure(tracer_provider=tracer_provider, logger_provider=LoggerProvider(),
                         token=mixpanel.token, api_host=mixpanel.url)
    with tracer_provider.get_tracer("t").start_as_current_span("s") as span:
        span.set_attribute("mixpanel.event", "Once")
        span.set_attribute("mixpanel.distinct_id", "u")
        span.set_attribute("mixpanel.people.add.credits", 10)
    pipeline.force_flush()
    assert len(mixpanel.events) == 1
    assert mixpanel.profiles["u"] == {"credits": 10}
    pipeline.shutdown()


@pytest.mark.parametrize(
    ("signal", "sdk_class"), [("tracer", TracerProvider), ("logger", LoggerProvider)]
)
def test_global_provider_is_used_made_or_refused(signal: str, sdk_class: type) -> None:
    """The SDK's global provider is used; the API's placeholder is replaced by a
    new SDK provider made global; anything else is a clear error."""
    made: List[object] = []
    existing = sdk_class()
    assert _global_provider(signal, lambda: existing, made.append, sdk_class) is existing
    assert made == []

    placeholder = type(f"Proxy{sdk_class.__name__}", (), {})()
    created = _global_provider(signal, lambda: placeholder, made.append, sdk_class)
    assert isinstance(created, sdk_class) and made == [created]

    foreign = type("VendorProvider", (), {})()
    with pytest.raises(ConfigurationError) as raised:
        _global_provider(signal, lambda: foreign, made.append, sdk_class)
    assert str(raised.value) == (
        f"the global {signal} provider is a VendorProvider, not the SDK's "
        f"{sdk_class.__name__}: pass {signal}_provider= to configure()"
    )
    created.shutdown()
