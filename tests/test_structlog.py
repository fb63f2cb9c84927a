"""The structlog processor: tagged events reach Mixpanel once, the chain still
renders, and nothing ever raises into the application."""

from __future__ import annotations

import json
from typing import Any, Iterator, List, Tuple

import pytest
import structlog
from opentelemetry.sdk._logs import LoggerProvider

from otel_mixpanel import MixpanelLogExporter
from otel_mixpanel.structlog import MixpanelProcessor
from otel_mixpanel.testing import LocalMixpanel

Pipeline = Tuple[LoggerProvider, MixpanelLogExporter]


@pytest.fixture(autouse=True)
def reset_structlog() -> Iterator[None]:
    """Each test configures structlog itself; restore the defaults afterwards."""
    yield
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


def configure(processor: MixpanelProcessor) -> List[str]:
    """A chain ending in a JSON renderer whose output is collected."""
    rendered: List[str] = []

    def collect(logger: Any, method_name: str, event_dict: Any) -> Any:
        rendered.append(event_dict)
        return event_dict

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            processor,
            structlog.processors.JSONRenderer(),
            collect,
        ],
        logger_factory=structlog.ReturnLoggerFactory(),
    )
    return rendered


def test_tagged_event_reaches_mixpanel_and_still_renders(
    mixpanel: LocalMixpanel, log_pipeline: Pipeline
) -> None:
    """Every structlog spelling becomes the same Mixpanel content; the renderer
    still gets the whole event dict."""
    provider, _ = log_pipeline
    rendered = configure(MixpanelProcessor(provider))
    structlog.get_logger().info(
        "signed up",
        mixpanel_event="Signed Up", mixpanel_user_id="u1",
        mixpanel_properties={"plan": "pro"},
        mixpanel_people_set={"$email": "a@example.com"},
        mixpanel_people_track_charge={"amount": 9.99, "sku": "A1"},
        mixpanel_identify_anon_id="anon-1",
        mixpanel_group={"key": "company", "id": "acme", "set": {"tier": "gold"}},
        other="kept",
    )
    provider.force_flush()
    assert [e["event"] for e in mixpanel.events] == ["$identify", "Signed Up"]
    assert mixpanel.events[1]["properties"]["plan"] == "pro"
    assert "other" not in mixpanel.events[1]["properties"]
    profile = mixpanel.profiles["u1"]
    assert profile["$email"] == "a@example.com"
    assert profile["$transactions"][0]["$amount"] == 9.99
    assert profile["$transactions"][0]["sku"] == "A1"
    assert mixpanel.groups[("company", "acme")] == {"tier": "gold"}
    (output,) = rendered
    assert json.loads(output)["mixpanel_event"] == "Signed Up"
    assert json.loads(output)["other"] == "kept"


def test_dotted_keys_in_the_event_dict(mixpanel: LocalMixpanel, log_pipeline: Pipeline) -> None:
    """log.info("paid", **{"mixpanel.event": "Paid"}) works too."""
    provider, _ = log_pipeline
    configure(MixpanelProcessor(provider))
    structlog.get_logger().info("paid", **{"mixpanel.event": "Paid", "mixpanel.user_id": "u"})
    provider.force_flush()
    assert len(mixpanel.events_named("Paid")) == 1


def test_remove_keys(mixpanel: LocalMixpanel, log_pipeline: Pipeline) -> None:
    """remove_keys=True keeps mixpanel_* keys out of the rendered line."""
    provider, _ = log_pipeline
    rendered = configure(MixpanelProcessor(provider, remove_keys=True))
    structlog.get_logger().info("paid", mixpanel_event="Paid", amount=3)
    provider.force_flush()
    assert json.loads(rendered[0]) == {"event": "paid", "amount": 3}
    assert len(mixpanel.events_named("Paid")) == 1


def test_contextvars_identity(mixpanel: LocalMixpanel, log_pipeline: Pipeline) -> None:
    """Binding mixpanel_distinct_id once tags later events; identity alone sends nothing."""
    provider, _ = log_pipeline
    configure(MixpanelProcessor(provider))
    structlog.contextvars.bind_contextvars(mixpanel_distinct_id="u9")
    log = structlog.get_logger()
    log.info("request started")
    log.info("paid", mixpanel_event="Paid")
    log.info("override", mixpanel_event="Other", mixpanel_distinct_id="explicit")
    provider.force_flush()
    assert [e["properties"]["distinct_id"] for e in mixpanel.events] == ["u9", "explicit"]


def test_untagged_events_emit_nothing(mixpanel: LocalMixpanel, log_pipeline: Pipeline) -> None:
    """Plain log lines never become log records of ours."""
    provider, _ = log_pipeline
    configure(MixpanelProcessor(provider))
    structlog.get_logger().info("hello", user="x")
    provider.force_flush()
    assert mixpanel.requests == []


def test_errors_never_reach_the_caller(log_pipeline: Pipeline) -> None:
    """A broken provider costs the Mixpanel event, never the log call or the rendering."""

    class Broken(LoggerProvider):
        def get_logger(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("boom")

    processor = MixpanelProcessor(Broken())
    rendered = configure(processor)
    structlog.get_logger().info("paid", mixpanel_event="Paid")
    assert json.loads(rendered[0])["event"] == "paid"
    assert processor._stats.snapshot()["dropped"] == {"structlog_processor_error": 1}


def test_never_drops_the_event() -> None:
    """The processor returns the very event dict it was given."""
    processor = MixpanelProcessor(LoggerProvider())
    event_dict = {"event": "x", "mixpanel_event": "E"}
    assert processor(None, "info", event_dict) is event_dict


@pytest.mark.needs_sdk("1.44", "opentelemetry-instrumentation-structlog starts at 0.65b0")
def test_no_double_delivery_with_instrumentation_structlog(
    mixpanel: LocalMixpanel, log_pipeline: Pipeline
) -> None:
    """With opentelemetry-instrumentation-structlog emitting every event, ours steps
    aside and each tagged event reaches Mixpanel exactly once, in both spellings."""
    provider, _ = log_pipeline
    # The instrumentor inserts its processor before the last one: the renderer.
    structlog.configure(
        processors=[MixpanelProcessor(provider), structlog.processors.JSONRenderer()],
        logger_factory=structlog.ReturnLoggerFactory(),
    )
    import opentelemetry.instrumentation.structlog as instrumentation  # noqa: PLC0415
    instrumentor = instrumentation.StructlogInstrumentor()
    instrumentor.instrument(logger_provider=provider)
    try:
        log = structlog.get_logger()
        log.info("signed up", mixpanel_event="Signed Up", mixpanel_user_id="u1")
        log.info("paid", **{"mixpanel.event": "Paid", "mixpanel.user_id": "u1"})
        provider.force_flush()
    finally:
        instrumentor.uninstrument()
    assert [e["event"] for e in mixpanel.events] == ["Signed Up", "Paid"]
