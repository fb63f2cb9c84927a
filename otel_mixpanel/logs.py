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

import datetime
import logging
import threading
import time
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Tuple

from opentelemetry.trace import format_span_id, format_trace_id

from otel_mixpanel import _compat
from otel_mixpanel._compat import LogRecordExporter, LogRecordExportResult, log_resource
from otel_mixpanel._convention._table import flat_attributes
from otel_mixpanel._convention._translate import Record, is_tagged, log_seed
from otel_mixpanel._exceptions import ConfigurationError
from otel_mixpanel._inputs._exporter import MixpanelExporterBase, is_own_logger

__all__ = ["MixpanelLogExporter", "logging_handler"]

_logger = logging.getLogger(__name__)
_handling = threading.local()


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

    def _records(self, batch: Iterable[Any]) -> Iterator[Record]:
        return self._records_of(filter(None, map(read_log, batch)))

    def _records_of(self, kept: Iterable[Any]) -> Iterator[Record]:
        """The records of log records as :func:`read_log` kept them."""
        for attributes, own, time_ns, trace, span, body, resource in kept:
            if own is not None:
                # Our own warnings, routed back by a logging handler: never analytics.
                self._stats.dropped("own_log_record", detail=own)
                continue
            trace_id = format_trace_id(trace) if trace else None
            span_id = format_span_id(span) if span else None
            seed = log_seed(body, attributes, time_ns, trace_id, span_id)
            yield Record(
                attributes, time_ns // 1_000_000, seed, 0, trace_id, span_id,
                resource=self._properties_of_resource(resource),
            )


# What the exporter keeps of an emitted log record: (attributes, the scope name
# when it is one of our own loggers, time ns, trace id, span id, body, resource
# attributes).
KeptLog = Tuple[Mapping[str, Any], Optional[str], int, Optional[int], Optional[int], Any,
                Mapping[str, Any]]


def read_log(data: Any) -> Optional[KeptLog]:
    """What Mixpanel needs of an emitted log record, or None when it has nothing
    for it: on the application's thread, like :func:`otel_mixpanel.trace.read_span`
    (the record itself is then free to go)."""
    log_record = data.log_record
    attributes = log_record.attributes
    if not is_tagged(attributes):
        return None
    scope = data.instrumentation_scope
    name = (scope.name or "") if scope is not None else ""
    own = name if is_own_logger(name) else None
    resource = log_resource(data)
    # The SDK's BoundedAttributes keeps a plain dict: keep that (reads in C).
    plain = getattr(attributes, "_dict", None)
    return (
        plain if type(plain) is dict else attributes, own,
        log_record.timestamp or log_record.observed_timestamp or time.time_ns(),
        log_record.trace_id, log_record.span_id, log_record.body,
        resource.attributes if resource is not None else {},
    )


def logging_handler(logger_provider: Any = None, level: int = logging.NOTSET) -> logging.Handler:
    """A stdlib logging handler that turns records into OTel log records.

    The handler of opentelemetry-instrumentation-logging (SDK 1.40 and later;
    ``pip install 'otel-mixpanel[logging]'``), or the SDK's own on older SDKs,
    with what the convention needs on top: dates and times in ``extra=`` as
    ISO-8601 strings (the SDK would write ``str()``, with a space for the
    ``T``), and before SDK 1.33, which drops mapping values, mappings as
    dotted keys. ``configure(logging=True)`` attaches one to the root logger.
    Raises :class:`~otel_mixpanel.ConfigurationError` when no handler is installed.

    Example::

        logging.getLogger().addHandler(logging_handler(logger_provider))
        logging.getLogger("shop").info("paid", extra={"mixpanel.event": "Paid"})
    """
    try:
        handler_class = _compat.logging_handler_class()
    except ImportError as error:
        raise ConfigurationError(
            "stdlib logging needs opentelemetry-instrumentation-logging: "
            "pip install 'otel-mixpanel[logging]'"
        ) from error

    class MixpanelLoggingHandler(handler_class):  # type: ignore[misc,valid-type]
        def emit(self, record: logging.LogRecord) -> None:
            # A line logged while a record is handled (older SDKs log one for each
            # record after shutdown) must not come back here: no feedback loop.
            if getattr(_handling, "active", False):
                return
            _handling.active = True
            try:
                super().emit(record)
            finally:
                _handling.active = False

        def _get_attributes(self, record: logging.LogRecord) -> Any:
            result = super()._get_attributes(record)
            attributes = result[0] if isinstance(result, tuple) else result
            for name, value in attributes.items():
                if isinstance(value, (datetime.date, datetime.time)):
                    attributes[name] = value.isoformat()
            if not _compat.LOG_MAPPINGS and is_tagged(attributes):
                flat = flat_attributes(attributes)
                attributes.clear()
                attributes.update(flat)
            return result

    handler: logging.Handler = MixpanelLoggingHandler(level=level, logger_provider=logger_provider)
    return handler
