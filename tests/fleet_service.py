"""A Python "service" for tests/test_gateway_fleet.py: the SDK with the stock
OTLP/gRPC exporters behind batch processors, sending tagged spans, span events
and log records to a Collector.

    python -m tests.fleet_service <spec.json> <grpc endpoint> <service.name> \\
        [<reference Mixpanel url> <token>]

The spec (the test writes it, tests/node/service.mjs reads the same shape)::

    {"spans": [{"name": ..., "attributes": {...},
                "events": [{"name": ..., "attributes": {...}}],
                "logs": [{"body": ..., "attributes": {...}}]}],   # emitted inside the span
     "logs": [{"body": ..., "attributes": {...}}]}

With a reference Mixpanel, the in-process exporters (MixpanelSpanExporter,
MixpanelLogExporter) are attached to the same providers as well: they see the
very spans and records the OTLP exporters send, ids and timestamps included,
so what they deliver is what the gateway must deliver. Exits 1 when an OTLP
export failed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, List, Mapping, Sequence

from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from tests.helpers import log


def emit(spec: Mapping[str, Any], tracer_provider: Any, logger_provider: Any) -> None:
    """Make the spec's spans, span events and log records (the logs of a span
    inside it, so they carry its trace and span ids)."""
    tracer = tracer_provider.get_tracer("fleet-service")
    logger = logger_provider.get_logger("fleet-service")
    for span_spec in spec.get("spans", ()):
        with tracer.start_as_current_span(span_spec["name"],
                                          attributes=span_spec["attributes"]) as span:
            for event in span_spec.get("events", ()):
                span.add_event(event["name"], event["attributes"])
            for record in span_spec.get("logs", ()):
                log(logger, body=record["body"], attributes=record["attributes"])
    for record in spec.get("logs", ()):
        log(logger, body=record["body"], attributes=record["attributes"])


class Checked:
    """An exporter that remembers its failed exports (the SDK's processors only log them)."""

    def __init__(self, exporter: Any, failures: List[str]) -> None:
        self._exporter = exporter
        self._failures = failures

    def export(self, batch: Sequence[Any]) -> Any:
        result = self._exporter.export(batch)
        if result.name != "SUCCESS":
            self._failures.append(f"{type(self._exporter).__name__}: {result.name}")
        return result

    def __getattr__(self, name: str) -> Any:  # shutdown, force_flush, ...
        return getattr(self._exporter, name)


def checked(exporter: Any, failures: List[str]) -> Any:
    """*exporter*, its failed exports recorded in *failures*."""
    return Checked(exporter, failures)


def main(argv: Sequence[str]) -> int:
    spec_path, endpoint, service_name, *reference = argv
    spec = json.loads(Path(spec_path).read_text())
    resource = Resource.create({"service.name": service_name})
    failures: List[str] = []
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(
        checked(OTLPSpanExporter(endpoint=endpoint, insecure=True), failures)))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(
        checked(OTLPLogExporter(endpoint=endpoint, insecure=True), failures)))
    if reference:
        from otel_mixpanel import MixpanelLogExporter, MixpanelSpanExporter  # noqa: PLC0415

        url, token = reference
        tracer_provider.add_span_processor(
            BatchSpanProcessor(MixpanelSpanExporter(token=token, api_host=url)))
        logger_provider.add_log_record_processor(
            BatchLogRecordProcessor(MixpanelLogExporter(token=token, api_host=url)))
    emit(spec, tracer_provider, logger_provider)
    tracer_provider.shutdown()
    logger_provider.shutdown()
    for failure in failures:
        print(f"export failed: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
