"""Log records tagged with ``mixpanel.*`` attributes → Mixpanel.

Use :class:`MixpanelLogExporter` with the SDK's ``BatchLogRecordProcessor``;
any log record carrying the convention's attributes (stdlib ``extra=``, the
structlog processor, ``Logger.emit``) becomes the same messages a span would::

    from opentelemetry._logs import set_logger_provider
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from otel_mixpanel import MixpanelLogExporter

    provider = LoggerProvider()
    provider.add_log_record_processor(BatchLogRecordProcessor(MixpanelLogExporter()))
    set_logger_provider(provider)
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, Iterator, Sequence

from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.trace import format_span_id, format_trace_id

from otel_mixpanel._convention._translate import Record, is_tagged
from otel_mixpanel._inputs._exporter import OWN_LOGGER_PREFIX, MixpanelExporterBase

__all__ = ["MixpanelLogExporter"]

_logger = logging.getLogger(__name__)


class MixpanelLogExporter(MixpanelExporterBase, LogRecordExporter):
    """Sends the Mixpanel messages of tagged log records; others are skipped.

    Takes the same arguments as :class:`otel_mixpanel.MixpanelSpanExporter`,
    each defaulting to its ``OTEL_EXPORTER_MIXPANEL_*`` variable. Attribute
    values may be mappings here (``mixpanel.properties={"plan": "pro"}``), and
    structlog's underscore spelling (``mixpanel_event``) is understood too.

    Example::

        exporter = MixpanelLogExporter(token="...", region="eu")
    """

    _logger = _logger

    def export(self, batch: Sequence[Any]) -> LogRecordExportResult:
        """Deliver the tagged records; never raises."""
        if self._deliver(self._records(batch)):
            return LogRecordExportResult.SUCCESS
        return LogRecordExportResult.FAILURE

    def _records(self, batch: Sequence[Any]) -> Iterator[Record]:
        for data in batch:
            log_record = data.log_record
            attributes = log_record.attributes
            if not is_tagged(attributes):
                continue
            scope = data.instrumentation_scope
            if scope is not None and scope.name.startswith(OWN_LOGGER_PREFIX):
                # Our own warnings, routed back by a logging handler: never analytics.
                self._stats.dropped("own_log_record", detail=scope.name)
                continue
            time_ns = log_record.timestamp or log_record.observed_timestamp or time.time_ns()
            trace_id = format_trace_id(log_record.trace_id) if log_record.trace_id else None
            span_id = format_span_id(log_record.span_id) if log_record.span_id else None
            resource = data.resource.attributes if data.resource is not None else {}
            yield Record(
                attributes, time_ns // 1_000_000, _seed(log_record, time_ns, trace_id, span_id),
                0, trace_id, span_id, resource=self._properties_of_resource(resource),
            )


def _seed(log_record: Any, time_ns: int, trace_id: Any, span_id: Any) -> str:
    """Stable content of the record, so a re-exported record gets the same
    ``$insert_id`` and two different records never share one."""
    content = f"{time_ns}|{trace_id}|{span_id}|{log_record.body!r}|{dict(log_record.attributes)!r}"
    return hashlib.blake2b(content.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
