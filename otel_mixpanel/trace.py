"""Spans tagged with ``mixpanel.*`` attributes → Mixpanel.

Use :class:`MixpanelSpanExporter` with the SDK's ``BatchSpanProcessor``::

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from otel_mixpanel import MixpanelSpanExporter

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(MixpanelSpanExporter()))
    trace.set_tracer_provider(provider)

    with trace.get_tracer(__name__).start_as_current_span("signup") as span:
        span.set_attribute("mixpanel.event", "Signed Up")
        span.set_attribute("mixpanel.distinct_id", "user-42")
"""

from __future__ import annotations

import logging
from typing import Iterator, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from otel_mixpanel._convention._translate import Record, is_tagged
from otel_mixpanel._inputs._exporter import MixpanelExporterBase

__all__ = ["MixpanelSpanExporter"]

_logger = logging.getLogger(__name__)
_ATTRIBUTE_LIMIT = "span_attribute_limit"
_ATTRIBUTE_LIMIT_FIX = (
    "the SDK's span attribute limit (128 by default) evicted the oldest attributes of a "
    "tagged span, mixpanel.event perhaps among them, and then the event itself is lost: "
    "raise TracerProvider(span_limits=SpanLimits(max_span_attributes=...)) or "
    "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT"
)


class MixpanelSpanExporter(MixpanelExporterBase, SpanExporter):
    """Sends the Mixpanel messages of tagged spans; untagged spans are skipped.

    Takes the arguments of :class:`~otel_mixpanel._inputs._exporter.MixpanelExporterBase`,
    each defaulting to its ``OTEL_EXPORTER_MIXPANEL_*`` variable.

    Example::

        exporter = MixpanelSpanExporter(token="...", region="eu")
    """

    _logger = _logger

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Deliver the tagged spans; never raises."""
        if self._deliver(self._records(spans)):
            return SpanExportResult.SUCCESS
        return SpanExportResult.FAILURE

    def _records(self, spans: Sequence[ReadableSpan]) -> Iterator[Record]:
        properties_of_resource = self._properties_of_resource
        for span in spans:
            # The SDK span's own attributes and events when it has them: its public
            # properties copy (a MappingProxy whose reads run in Python, a tuple
            # taken under a lock), and an untagged span must cost next to nothing.
            attributes = getattr(span, "_attributes", None)
            if attributes is None:
                attributes = span.attributes or {}
            tagged = is_tagged(attributes)
            raw_events = getattr(span, "_events", None)
            events = (
                [event for event in span.events if is_tagged(event.attributes)]
                if raw_events is None or len(raw_events)
                else []
            )
            if not tagged and not events:
                continue
            evicted = getattr(attributes, "dropped", 0) if tagged else 0
            if evicted:
                self._stats.dropped(_ATTRIBUTE_LIMIT, evicted, detail=_ATTRIBUTE_LIMIT_FIX)
            context = span.context
            # format_trace_id/format_span_id's spelling in half their time: a
            # %-format skips the format-spec parsing of format() and f-strings.
            trace_id = "%032x" % context.trace_id if context else None  # noqa: UP031
            span_id = "%016x" % context.span_id if context else None  # noqa: UP031
            seed = f"{trace_id}{span_id}"
            resource = properties_of_resource(span.resource.attributes)
            if tagged:
                start = span.start_time or 0
                end = span.end_time or start
                yield Record(
                    attributes, end // 1_000_000, seed, 0, trace_id, span_id,
                    (end - start) / 1e9, resource,
                )
            for position, event in enumerate(span.events if events else (), start=1):
                if event in events:
                    yield Record(
                        event.attributes or {}, event.timestamp // 1_000_000, seed, position,
                        trace_id, span_id, resource=resource, inherited=attributes,
                    )
