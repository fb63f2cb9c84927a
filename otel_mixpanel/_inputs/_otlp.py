"""OTLP requests → records: the gateway's input.

Spans and log records received over OTLP (the protobuf classes of
``opentelemetry-proto``, which OTLP/JSON is parsed into too) become the very
:class:`~otel_mixpanel._convention._translate.Record` the SDK exporters make of
the same telemetry, with the same ``$insert_id`` seeds: an identical tagged span
gives an identical Mixpanel payload whichever way it came. Only translation
happens here; the convention, limits and sending queue are shared.

Install with ``pip install 'otel-mixpanel[gateway]'``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Iterable, Iterator, Mapping, Optional, Tuple

from otel_mixpanel._convention._translate import Record, is_tagged, log_seed
from otel_mixpanel._inputs._exporter import is_own_logger

__all__ = ["OTLPInput", "log_records", "span_records", "value_of"]

ResourceProperties = Callable[[Mapping[str, Any]], Mapping[str, Any]]


def value_of(value: Any) -> Any:
    """An OTLP ``AnyValue`` as the SDK holds it: lists as tuples, kvlists as dicts."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(value_of(item) for item in value.array_value.values)
    if kind == "kvlist_value":
        return attributes_of(value.kvlist_value.values)
    if kind is None:
        return None
    return getattr(value, kind)


def attributes_of(key_values: Iterable[Any]) -> Dict[str, Any]:
    """OTLP ``KeyValue``s as a dict, in their order."""
    return {kv.key: value_of(kv.value) for kv in key_values}


def _hex(raw: bytes) -> Optional[str]:
    return raw.hex() if raw and any(raw) else None


def span_records(request: Any, resource_properties: ResourceProperties) -> Iterator[Record]:
    """The records of an ``ExportTraceServiceRequest``'s tagged spans and span
    events, as :class:`~otel_mixpanel.MixpanelSpanExporter` makes them."""
    for resource_spans in request.resource_spans:
        resource = resource_properties(attributes_of(resource_spans.resource.attributes))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield from _span(span, resource)


def _span(span: Any, resource: Mapping[str, Any]) -> Iterator[Record]:
    attributes = attributes_of(span.attributes)
    tagged = is_tagged(attributes)
    events = [(position, event) for position, event in enumerate(span.events, start=1)]
    event_attributes = [(p, e, attributes_of(e.attributes)) for p, e in events]
    tagged_events = [(p, e, a) for p, e, a in event_attributes if is_tagged(a)]
    if not tagged and not tagged_events:
        return
    trace_id, span_id = span.trace_id.hex(), span.span_id.hex()
    seed = f"{trace_id}{span_id}"
    if tagged:
        start = span.start_time_unix_nano
        end = span.end_time_unix_nano or start
        yield Record(attributes, end // 1_000_000, seed, 0, trace_id, span_id,
                     (end - start) / 1e9, resource)
    for position, event, event_attributes_ in tagged_events:
        yield Record(event_attributes_, event.time_unix_nano // 1_000_000, seed, position,
                     trace_id, span_id, resource=resource, inherited=attributes)


def log_records(
    request: Any, resource_properties: ResourceProperties,
    own: Callable[[str], None] = lambda scope: None,
) -> Iterator[Record]:
    """The records of an ``ExportLogsServiceRequest``'s tagged log records, as
    :class:`~otel_mixpanel.MixpanelLogExporter` makes them. *own* is told of a
    tagged record from one of our own loggers, which is skipped."""
    for resource_logs in request.resource_logs:
        resource = resource_properties(attributes_of(resource_logs.resource.attributes))
        for scope_logs in resource_logs.scope_logs:
            scope = scope_logs.scope.name
            for log in scope_logs.log_records:
                attributes = attributes_of(log.attributes)
                if not is_tagged(attributes):
                    continue
                if is_own_logger(scope):
                    own(scope)
                    continue
                time_ns = log.time_unix_nano or log.observed_time_unix_nano or time.time_ns()
                trace_id, span_id = _hex(log.trace_id), _hex(log.span_id)
                body = value_of(log.body) if log.HasField("body") else None
                yield Record(
                    attributes, time_ns // 1_000_000,
                    log_seed(body, attributes, time_ns, trace_id, span_id),
                    0, trace_id, span_id, resource=resource,
                )


class OTLPInput:
    """Decodes OTLP/HTTP bodies (protobuf or JSON) into records.

    Example::

        records, count = OTLPInput().traces(body, "application/x-protobuf")
    """

    def __init__(self) -> None:
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2  # noqa: PLC0415
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2  # noqa: PLC0415

        self._traces = trace_service_pb2.ExportTraceServiceRequest
        self._logs = logs_service_pb2.ExportLogsServiceRequest

    def parse_traces(self, body: bytes) -> Tuple[Any, int]:
        """An ``ExportTraceServiceRequest`` from protobuf bytes, and its span count."""
        request = self._traces.FromString(body)
        count = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return request, count

    def parse_logs(self, body: bytes) -> Tuple[Any, int]:
        """An ``ExportLogsServiceRequest`` from protobuf bytes, and its record count."""
        request = self._logs.FromString(body)
        count = sum(len(s.log_records) for r in request.resource_logs for s in r.scope_logs)
        return request, count
