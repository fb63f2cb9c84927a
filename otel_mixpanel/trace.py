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
from typing import Iterator, Optional, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import format_span_id, format_trace_id

from otel_mixpanel._exporter import ExporterCore
from otel_mixpanel._translate import Record, is_tagged
from otel_mixpanel._transport import Transport

__all__ = ["MixpanelSpanExporter"]

_logger = logging.getLogger(__name__)


class MixpanelSpanExporter(SpanExporter):
    """Sends the Mixpanel messages of tagged spans; untagged spans are skipped.

    Every argument defaults to its ``OTEL_EXPORTER_MIXPANEL_*`` environment
    variable (see :mod:`otel_mixpanel.environment_variables`), so the exporter
    can be built with no arguments, as ``opentelemetry-instrument`` does.

    Args:
        token: the project token.
        project_id: the project id (needed with a service account).
        service_account_username: service account that authenticates ``/import``.
        service_account_secret: its secret.
        region: ``us``, ``eu`` or ``in``.
        api_host: a host or base URL replacing the region's host.
        timeout: seconds one export may take, retries included (default 10).
        compression: ``gzip`` (default) or ``none``, for ``/import``.
        resource_attributes: resource attributes copied onto every event
            (default ``("service.name",)``).
        trace_ids: whether events carry ``trace_id``/``span_id`` (default True).
        transport: replaces the HTTP client (tests).

    Raises:
        ConfigurationError: no credentials, or an invalid setting.

    Example::

        exporter = MixpanelSpanExporter(token="...", region="eu")
    """

    def __init__(
        self,
        token: Optional[str] = None,
        project_id: Optional[str] = None,
        service_account_username: Optional[str] = None,
        service_account_secret: Optional[str] = None,
        region: Optional[str] = None,
        api_host: Optional[str] = None,
        timeout: Optional[float] = None,
        compression: Optional[str] = None,
        *,
        resource_attributes: Optional[Sequence[str]] = None,
        trace_ids: Optional[bool] = None,
        transport: Optional[Transport] = None,
    ) -> None:
        self._core = ExporterCore(
            token=token,
            project_id=project_id,
            service_account_username=service_account_username,
            service_account_secret=service_account_secret,
            region=region,
            api_host=api_host,
            timeout=timeout,
            compression=compression,
            resource_attributes=resource_attributes,
            trace_ids=trace_ids,
            transport=transport,
            logger=_logger,
        )

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Deliver the tagged spans; never raises."""
        if self._core.is_shut_down:
            _logger.warning("Mixpanel span exporter already shut down; dropping spans")
            return SpanExportResult.FAILURE
        try:
            delivered = self._core.deliver(self._records(spans))
        except Exception:  # export must never raise into the batch processor
            _logger.exception("Mixpanel span export failed")
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS if delivered else SpanExportResult.FAILURE

    def _records(self, spans: Sequence[ReadableSpan]) -> Iterator[Record]:
        for span in spans:
            attributes = span.attributes or {}
            tagged = is_tagged(attributes)
            events = [event for event in span.events if is_tagged(event.attributes)]
            if not tagged and not events:
                continue
            context = span.context
            trace_id = format_trace_id(context.trace_id) if context else None
            span_id = format_span_id(context.span_id) if context else None
            seed = f"{trace_id}{span_id}"
            resource = self._core.resource_properties(span.resource.attributes)
            if tagged:
                start, end = span.start_time or 0, span.end_time or span.start_time or 0
                yield Record(
                    attributes, end // 1_000_000, seed, 0, trace_id, span_id,
                    duration=(end - start) / 1e9, resource=resource,
                )
            for position, event in enumerate(span.events, start=1):
                if event in events:
                    yield Record(
                        event.attributes or {}, event.timestamp // 1_000_000, seed, position,
                        trace_id, span_id, resource=resource, inherited=attributes,
                    )

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters of records sent, adjusted and dropped (by reason)."""
        return self._core.stats.snapshot()

    def shutdown(self) -> None:
        """Close the HTTP connections; later exports return FAILURE."""
        self._core.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Nothing is buffered inside the exporter: always True."""
        return True
