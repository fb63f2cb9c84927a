"""Test helpers shared by several test modules: tagged spans and a filled spool."""

from __future__ import annotations

import atexit
import socket
import time
from pathlib import Path
from typing import Any, Callable, List, Mapping

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_mixpanel import MixpanelSpanExporter, RetryPolicy, _compat
from otel_mixpanel.testing import LocalMixpanel

_REFUSING: List[socket.socket] = []


@atexit.register
def _close_refusing() -> None:
    for sock in _REFUSING:
        sock.close()


def refusing_port() -> int:
    """A loopback port that refuses connections for the rest of the run: bound and
    never listening, so no other server (another test, a parallel test session)
    can take it and answer in its place."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    _REFUSING.append(sock)
    return int(sock.getsockname()[1])


# Short backoffs for tests; users keep Mixpanel's real ones.
FAST = RetryPolicy(initial=0.01, maximum=0.02, jitter=(0, 0))


def emit(provider: TracerProvider, count: int, prefix: str = "E", counter: str = "") -> None:
    """*count* spans, each an event ``{prefix}{i}`` of user ``u`` that adds 1 to
    the profile property ``{counter or prefix}{i}`` (so each update is visible)."""
    tracer = provider.get_tracer("t")
    for i in range(count):
        with tracer.start_as_current_span("s") as span:
            span.set_attribute("mixpanel.event", f"{prefix}{i}")
            span.set_attribute("mixpanel.distinct_id", "u")
            span.set_attribute(f"mixpanel.people.add.{counter or prefix}{i}", 1)


def fill_spool(directory: Path, mixpanel: LocalMixpanel, count: int, batch: int = 10) -> None:
    """Export while Mixpanel refuses every request (the 503s stay scripted), so
    *count* events and *count* profile updates (``n0``, ``n1``, ...) are spooled."""
    mixpanel.fail_next(10_000, status=503)
    exporter = MixpanelSpanExporter(
        token=mixpanel.token, api_host=mixpanel.url, timeout=0.2, retry_policy=FAST,
        spool_dir=str(directory), shutdown_timeout=0.1,  # leave the records spooled
    )
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=batch))
    emit(provider, count, counter="n")
    provider.shutdown()


def finished_spans(
    *attribute_sets: Mapping[str, Any], resource: Any = None, span_limits: Any = None
) -> List[ReadableSpan]:
    """Real ReadableSpans, one per attribute set (resource ``service.name=shop``
    unless given; the SDK's span limits unless given)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=resource or Resource.create({"service.name": "shop"}),
                              span_limits=span_limits)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests")
    for attributes in attribute_sets:
        with tracer.start_as_current_span("op", attributes=dict(attributes)):
            pass
    provider.shutdown()
    return list(memory.get_finished_spans())


def until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll *condition* until it holds or *timeout* seconds passed."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def log(logger: Any, **fields: Any) -> None:
    """``logger.emit(body=..., attributes=...)`` on every supported SDK (the
    keyword form is API 1.38+)."""
    _compat.emit(logger, **fields)


def memory_log_exporter() -> Any:
    """The SDK's in-memory log exporter (``InMemoryLogExporter`` before 1.39)."""
    from opentelemetry.sdk._logs import export  # noqa: PLC0415

    exporter_class = getattr(export, "InMemoryLogRecordExporter", None)
    return (exporter_class or export.InMemoryLogExporter)()


def logger_provider(resource: Resource, max_attributes: int) -> Any:
    """An SDK LoggerProvider keeping up to *max_attributes* per record: a setting
    of the provider from 1.45; before, records keep the default 128."""
    import inspect  # noqa: PLC0415

    from opentelemetry.sdk import _logs  # noqa: PLC0415

    limits = getattr(_logs, "LogRecordLimits", None)
    if limits is None or "log_record_limits" not in inspect.signature(
            _logs.LoggerProvider.__init__).parameters:
        return _logs.LoggerProvider(resource=resource)
    return _logs.LoggerProvider(
        resource=resource, log_record_limits=limits(max_attributes=max_attributes))
