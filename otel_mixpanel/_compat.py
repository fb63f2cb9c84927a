"""Every difference between the OpenTelemetry releases we support, in one place.

The rest of the package is written against the newest SDK; what older
releases (opentelemetry-api/-sdk 1.20 and later) name or do differently is
adapted here, each with the release that changed it, so that dropping an old
release means deleting lines from this module only.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, Tuple, Type

from opentelemetry import trace
from opentelemetry._logs import Logger, get_logger_provider, set_logger_provider
from opentelemetry.sdk import _logs as _sdk_logs
from opentelemetry.sdk.version import __version__ as SDK_VERSION

__all__ = [
    "LOG_MAPPINGS",
    "SDK_VERSION",
    "LogRecordExportResult",
    "LogRecordExporter",
    "LogRecordProcessor",
    "emit",
    "exporter_of",
    "initialize_components",
    "log_resource",
    "logging_handler_class",
    "sdk_release",
]


def sdk_release(version: str = SDK_VERSION) -> Tuple[int, int]:
    """``(major, minor)`` of an SDK version string.

    >>> sdk_release("1.33.1")
    (1, 33)
    """
    major, minor = version.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


# 1.39 renamed LogExporter / LogExportResult (the old names stay as aliases).
if TYPE_CHECKING:
    from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
else:
    from opentelemetry.sdk._logs import export as _log_export

    LogRecordExporter = getattr(_log_export, "LogRecordExporter", None) or _log_export.LogExporter
    LogRecordExportResult = (
        getattr(_log_export, "LogRecordExportResult", None) or _log_export.LogExportResult
    )

# 1.33 keeps mapping-valued log attributes; older releases drop them with a
# warning, so our log inputs pass them through flat_attributes() there.
LOG_MAPPINGS = sdk_release() >= (1, 33)


class LogRecordProcessor(_sdk_logs.LogRecordProcessor):
    """The SDK's log record processor base; subclasses implement ``on_emit``.

    1.35 renamed ``emit`` to ``on_emit`` (without an alias): older providers
    call ``emit``, and their base class cannot be instantiated without it.
    """

    def on_emit(self, log_data: Any) -> None:  # pragma: no cover - always overridden
        raise NotImplementedError

    def emit(self, log_data: Any) -> None:
        """The name before SDK 1.35."""
        self.on_emit(log_data)

    def shutdown(self) -> None:
        """Holds nothing (a processor that holds records overrides it)."""

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Holds nothing: always True."""
        return True


def exporter_of(processor: Any) -> Any:
    """The exporter an SDK batch or simple processor feeds, or None: the batch
    processors keep it on ``_batch_processor._exporter`` from 1.34; before, the
    span processors on ``span_exporter`` and the log processors on ``_exporter``."""
    for holder in (getattr(processor, "_batch_processor", None), processor):
        for name in ("_exporter", "span_exporter"):
            exporter = getattr(holder, name, None)
            if exporter is not None:
                return exporter
    return None


def log_resource(log_data: Any) -> Any:
    """The resource of an exported log record: on the record itself from 1.39
    (``ReadableLogRecord.resource``), on its ``log_record`` before (``LogData``)."""
    resource = getattr(log_data, "resource", None)
    return resource if resource is not None else getattr(log_data.log_record, "resource", None)


# API 1.38 added keyword arguments to Logger.emit; before it took a LogRecord.
_KEYWORD_EMIT = "body" in inspect.signature(Logger.emit).parameters


def emit(
    logger: Logger,
    *,
    body: Any = None,
    attributes: Optional[Mapping[str, Any]] = None,
    timestamp: Optional[int] = None,
    observed_timestamp: Optional[int] = None,
    severity_number: Any = None,
    severity_text: Optional[str] = None,
) -> None:
    """``logger.emit(body=..., attributes=...)`` on every supported release.

    Before 1.38 the record is built here, with the current span's ids and, for
    an SDK logger, its resource (the SDK filled neither before 1.35).
    """
    if _KEYWORD_EMIT:
        logger.emit(
            timestamp=timestamp, observed_timestamp=observed_timestamp,
            severity_number=severity_number,
            severity_text=severity_text, body=body, attributes=attributes,
        )
        return
    span_context = trace.get_current_span().get_span_context()
    resource = getattr(logger, "resource", None)
    # The SDK's LogRecord (gone in 1.39) carries the resource; the API's does not.
    sdk_logs: Any = _sdk_logs
    record_class: Any = sdk_logs.LogRecord if resource is not None else _api_log_record()
    fields: Dict[str, Any] = dict(
        timestamp=timestamp, observed_timestamp=observed_timestamp or time.time_ns(),
        severity_text=severity_text,
        severity_number=severity_number, body=body, attributes=attributes,
    )
    if "context" in inspect.signature(record_class.__init__).parameters:  # 1.35
        from opentelemetry import context  # noqa: PLC0415

        fields["context"] = context.get_current()
    else:
        fields.update(trace_id=span_context.trace_id, span_id=span_context.span_id,
                      trace_flags=span_context.trace_flags)
    if resource is not None:
        fields["resource"] = resource
    logger.emit(record_class(**fields))


def _api_log_record() -> Any:
    from opentelemetry._logs import LogRecord  # noqa: PLC0415

    return LogRecord


def logging_handler_class() -> Type[logging.Handler]:
    """The logging handler that turns stdlib records into OTel log records.

    opentelemetry-instrumentation-logging's handler (0.61b0, for SDK 1.40) replaced
    the SDK's own, which warns when built from 1.40 on; older SDKs have only theirs.
    Raises ImportError when neither applies.
    """
    try:
        from opentelemetry.instrumentation.logging.handler import (  # noqa: PLC0415
            LoggingHandler,
        )
    except ImportError:
        if sdk_release() >= (1, 40):
            raise
        return _sdk_logs.LoggingHandler if sdk_release() >= (1, 28) else _scoped_logging_handler()
    return LoggingHandler


def _scoped_logging_handler() -> Type[logging.Handler]:
    """Before 1.28 the SDK's handler emitted every record under its own module's
    scope: this one, as from 1.28, under the stdlib logger's name (the log
    exporter uses it to skip our own log lines)."""

    class ScopedLoggingHandler(_sdk_logs.LoggingHandler):
        def emit(self, record: logging.LogRecord) -> None:
            from opentelemetry._logs import get_logger  # noqa: PLC0415

            handler: Any = self
            logger = get_logger(record.name, logger_provider=handler._logger_provider)
            logger.emit(handler._translate(record))

    return ScopedLoggingHandler


# The variables opentelemetry-instrument reads the exporter names from.
_EXPORTER_VARIABLES = {"traces": "OTEL_TRACES_EXPORTER", "logs": "OTEL_LOGS_EXPORTER"}


def initialize_components(
    configure: Callable[..., None],
    *,
    span_processors: Sequence[Any],
    log_record_processors: Sequence[Any],
    exporters: Mapping[str, Tuple[str, Type[Any], Callable[[Any], Any]]],
    **kwargs: Any,
) -> None:
    """Zero-code set-up with our processors on every SDK release.

    *exporters* maps a signal (``traces``/``logs``) to our exporter's entry
    point name, its class and the processor it is fed by. From 1.40
    ``_initialize_components`` takes processors and an exporter-processor
    factory. Before, the SDK would wrap every named exporter in its own batch
    processor: our names are taken out of the variables while it runs, and
    our processors are added to the providers it set up afterwards.
    """
    # Imported here, for zero-code only: in 1.39 importing it warns (DeprecationWarning
    # for the events API), which a test suite running with -W error would not survive.
    from opentelemetry.sdk._configuration import _initialize_components  # noqa: PLC0415

    hooks = inspect.signature(_initialize_components).parameters
    if "span_processors" in hooks:
        factories = {"traces": "export_span_processor", "logs": "export_log_record_processor"}
        for signal, (_, exporter_class, make) in exporters.items():
            kwargs.setdefault(factories[signal], _factory(exporter_class, make, signal))
        configure(span_processors=span_processors, log_record_processors=log_record_processors,
                  **kwargs)
        return
    asked = {signal: _without(signal, name) for signal, (name, _, _) in exporters.items()}
    try:
        configure(**{name: value for name, value in kwargs.items() if name in hooks})
    finally:
        for signal, (previous, named) in asked.items():
            if named:
                os.environ[_EXPORTER_VARIABLES[signal]] = previous
    tracer_provider: Any = trace.get_tracer_provider()
    for span_processor in span_processors:
        tracer_provider.add_span_processor(span_processor)
    logger_provider: Any = get_logger_provider()
    sdk_logs = hasattr(logger_provider, "add_log_record_processor")
    if not sdk_logs and asked.get("logs", ("", False))[1]:
        # Before 1.30 no logger provider is set up unless the logging handler is asked for.
        logger_provider = _sdk_logs.LoggerProvider(resource=tracer_provider.resource)
        set_logger_provider(logger_provider)
        sdk_logs = True
    if sdk_logs:
        for log_processor in log_record_processors:
            logger_provider.add_log_record_processor(log_processor)
    for signal, (_, exporter_class, make) in exporters.items():
        if asked[signal][1]:
            processor = make(exporter_class())
            if signal == "traces":
                tracer_provider.add_span_processor(processor)
            else:
                logger_provider.add_log_record_processor(processor)


def _factory(exporter_class: Type[Any], make: Callable[[Any], Any], signal: str) -> Any:
    """The SDK's default processor for other exporters, *make* for ours."""
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    default: Any = BatchSpanProcessor if signal == "traces" else BatchLogRecordProcessor

    def processor(exporter: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(exporter, exporter_class):
            return make(exporter)
        return default(exporter, *args, **kwargs)

    return processor


def _without(signal: str, ours: str) -> Tuple[str, bool]:
    """Take *ours* out of the signal's exporter variable; returns its old value
    and whether ours was named (the variable is untouched when it was not)."""
    variable = _EXPORTER_VARIABLES[signal]
    previous = os.environ.get(variable, "")
    names = [name.strip() for name in previous.split(",") if name.strip()]
    others = [name for name in names if name != ours]
    if len(others) == len(names):
        return previous, False
    os.environ[variable] = ",".join(others) or "none"
    return previous, True
