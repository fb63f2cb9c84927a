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
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Tuple

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from otel_mixpanel._convention._translate import _NOTHING, Record, is_tagged
from otel_mixpanel._inputs._exporter import MixpanelExporterBase

__all__ = ["MixpanelSpanExporter"]

_logger = logging.getLogger(__name__)
_new_record = tuple.__new__
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

    def _records(self, spans: Iterable[ReadableSpan]) -> Iterator[Record]:
        return self._records_of(filter(None, map(read_span, spans)))

    def _records_of(self, ended: Iterable[Any]) -> Iterator[Record]:
        """The records of spans as :func:`read_span` kept them."""
        properties_of_resource = self._properties_of_resource
        cached = self._resource_properties  # its cache, read here without a call
        for attributes, tagged, evicted, events, trace, span, started, ended_at, resource in ended:
            if evicted:
                self._stats.dropped(_ATTRIBUTE_LIMIT, evicted, detail=_ATTRIBUTE_LIMIT_FIX)
            # format_trace_id/format_span_id's spelling in half their time: a
            # %-format skips the format-spec parsing of format() and f-strings.
            trace_id = "%032x" % trace if trace is not None else None  # noqa: UP031
            entry = cached.get(id(resource))
            properties = (entry[1] if entry is not None and entry[0] is resource
                          else properties_of_resource(resource))
            if tagged:
                yield span_record(attributes, trace_id, span, started, ended_at, properties)
            if events:
                span_id = "%016x" % span if span is not None else None  # noqa: UP031
                seed = f"{trace_id}{span_id}"
                for position, event in events:
                    yield Record(
                        event.attributes or {}, event.timestamp // 1_000_000, seed, position,
                        trace_id, span_id, resource=properties, inherited=attributes,
                    )


def span_record(
    attributes: Mapping[str, Any], trace_id: Optional[str], span: Optional[int],
    started: Optional[int], ended_at: Optional[int], properties: Mapping[str, Any],
) -> Record:
    """The record of a tagged span (its $insert_id seeded by its ids): made by
    the exporter, or by the helper process from what crossed its pipe."""
    span_id = "%016x" % span if span is not None else None  # noqa: UP031
    start = started or 0
    end = ended_at or start
    # Record's own __new__ is a Python function: one call per span saved.
    return _new_record(Record, (
        attributes, end // 1_000_000, f"{trace_id}{span_id}", 0, trace_id, span_id,
        (end - start) / 1e9, properties, _NOTHING,
    ))


# What the exporter keeps of an ended span: (attributes, tagged, attributes
# evicted, ((position, tagged event), ...), trace id, span id, start ns, end ns,
# resource attributes).
EndedSpan = Tuple[Mapping[str, Any], bool, int, Tuple[Tuple[int, Any], ...],
                  Optional[int], Optional[int], Optional[int], Optional[int], Mapping[str, Any]]


def read_span(span: ReadableSpan) -> Optional[EndedSpan]:
    """What Mixpanel needs of an ended *span*, or None when it has nothing for it.

    :class:`~otel_mixpanel.configure`'s span processor calls it as the span ends,
    on the application's thread (about what the SDK's batch processor costs it):
    the span itself is then free to go, while only this tuple waits for the
    worker. A span waiting whole keeps a dozen objects alive that the garbage
    collector walks again and again on the application's threads; an untagged
    span does not wait at all.
    """
    if type(span) is ReadableSpan:
        # What every processor is given: the SDK's own fields, read directly. Its
        # public properties copy (a MappingProxy whose reads run in Python, a
        # tuple of events taken under a lock) or run in Python (every other one),
        # and this runs on the application's thread for every span.
        attributes, queue = span._attributes, getattr(span._events, "_dq", span._events)
        context, resource = span._context, span._resource
        start, end = span._start_time, span._end_time
    else:  # a span of another making: its public interface (and the SDK's
        # attributes, with their count of evicted ones, when it has them)
        attributes = getattr(span, "_attributes", None)
        if attributes is None:
            attributes = span.attributes
        queue, context = None, span.context
        resource, start, end = span.resource, span.start_time, span.end_time
    if attributes is None:
        attributes = {}
    tagged = is_tagged(attributes)
    events = (
        tuple((position, event) for position, event in enumerate(span.events, start=1)
              if is_tagged(event.attributes))
        if queue is None or queue  # the SDK's events are a BoundedList around a deque
        else ()
    )
    if not tagged and not events:
        return None
    evicted = getattr(attributes, "dropped", 0) if tagged else 0
    # The SDK's BoundedAttributes keeps a plain dict, which never changes once
    # the span has ended: keep that (reads in C), not its Python-level wrapper.
    plain = getattr(attributes, "_dict", None)
    return (
        plain if type(plain) is dict else attributes, tagged, evicted, events,
        context.trace_id if context else None, context.span_id if context else None,
        start, end, resource.attributes if resource is not None else {},
    )
