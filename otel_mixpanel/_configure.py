"""``configure()``: Mixpanel in one call, beside whatever OpenTelemetry set-up exists.

Adds our processors to the providers the application already has (global or
given), creates providers only where there are none, never replaces a provider
or a processor, and is safe to call twice.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from typing import Any, Callable, List, Optional, Type, TypeVar

from opentelemetry import trace
from opentelemetry._logs import get_logger_provider, set_logger_provider
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.trace import TracerProvider

from otel_mixpanel._exceptions import ConfigurationError
from otel_mixpanel._inputs._intake import (
    DEFAULT_MAX_EXPORT_BATCH_SIZE,
    DEFAULT_MAX_QUEUE_SIZE,
    DEFAULT_SCHEDULE_DELAY_MILLIS,
    OrderedLogRecordProcessor,
    OrderedSpanProcessor,
)
from otel_mixpanel.identity import MixpanelIdentityLogProcessor, MixpanelIdentitySpanProcessor
from otel_mixpanel.logs import MixpanelLogExporter, logging_handler
from otel_mixpanel.trace import MixpanelSpanExporter

__all__ = ["MixpanelPipeline", "configure"]

_logger = logging.getLogger(__name__)
_Provider = TypeVar("_Provider", TracerProvider, LoggerProvider)
# How long shutdown() waits beyond the exporters' delivery budget for the
# final accounting and its log line.
_SHUTDOWN_MARGIN = 2.0

_configured: weakref.WeakKeyDictionary[Any, MixpanelPipeline] = weakref.WeakKeyDictionary()
_configure_lock = threading.Lock()


class MixpanelPipeline:
    """What :func:`configure` set up; flush and shut down only our part of it.

    Attributes:
        tracer_provider: the provider our span processors were added to.
        logger_provider: the provider our log processors were added to.
        span_exporter: the :class:`~otel_mixpanel.MixpanelSpanExporter`.
        log_exporter: the :class:`~otel_mixpanel.MixpanelLogExporter`.
    """

    def __init__(
        self,
        tracer_provider: TracerProvider,
        logger_provider: LoggerProvider,
        span_exporter: MixpanelSpanExporter,
        log_exporter: MixpanelLogExporter,
        processors: List[Any],
    ) -> None:
        self.tracer_provider = tracer_provider
        self.logger_provider = logger_provider
        self.span_exporter = span_exporter
        self.log_exporter = log_exporter
        self._processors = processors
        self._undo: List[Callable[[], None]] = []

    def stats(self) -> dict[str, dict[str, int]]:
        """The counters of the destination both exporters share (sent, retried,
        dropped by reason, ...), as :meth:`MixpanelSpanExporter.stats` gives them."""
        return self.span_exporter.stats()

    def force_flush(self, timeout_millis: int = 10_000) -> bool:
        """Export what our processors hold and wait until Mixpanel has answered
        for all of it; returns within *timeout_millis*, True when it did."""
        return _bounded(
            lambda: all(p.force_flush(timeout_millis) for p in self._processors), timeout_millis
        )

    def shutdown(self, timeout_millis: Optional[int] = None) -> bool:
        """Export what our processors hold, keep delivering for at most
        *timeout_millis* (default: the exporters' ``shutdown_timeout``, 20 s),
        then stop our processors and hooks; the application's own providers and
        processors keep running. What could not be delivered stays in the spool,
        or is counted lost and logged before this returns. True when nothing
        was left."""
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        with _configure_lock:
            for provider in (self.tracer_provider, self.logger_provider):
                if _configured.get(provider) is self:
                    del _configured[provider]

        budget = self.span_exporter._shutdown_budget(timeout_millis)

        def stop() -> bool:
            for processor in self._processors:
                processor.shutdown(budget * 1000)
            return self.span_exporter._queue.delivered_all is True

        return _bounded(stop, (budget + _SHUTDOWN_MARGIN) * 1000)


def configure(
    *,
    tracer_provider: Optional[TracerProvider] = None,
    logger_provider: Optional[LoggerProvider] = None,
    logging: bool = False,
    structlog: bool = False,
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
    max_export_batch_size: int = DEFAULT_MAX_EXPORT_BATCH_SIZE,
    schedule_delay_millis: int = DEFAULT_SCHEDULE_DELAY_MILLIS,
    **exporter_settings: Any,
) -> MixpanelPipeline:
    """Send tagged spans, log records and (optionally) stdlib logging and
    structlog events to Mixpanel.

    Args:
        tracer_provider: add to this provider (default: the global one, created
            and set when the application has none).
        logger_provider: likewise for logs.
        logging: also attach an OpenTelemetry handler to the root logger, so
            ``logging`` calls with ``extra={"mixpanel.event": ...}`` are sent
            (needs ``opentelemetry-instrumentation-logging``).
        structlog: also insert :class:`otel_mixpanel.structlog.MixpanelProcessor`
            into structlog's configured chain, before the renderer.
        max_queue_size: the batch buffer both signals share, sized for bursts
            by default; what a full buffer drops is counted (``queue_full``).
        max_export_batch_size: records per export call.
        schedule_delay_millis: how often the batch processors export.
        exporter_settings: the exporters' keyword arguments (``token``,
            ``region``, ``spool_dir``, ...), defaulting to the environment.

    Returns:
        The :class:`MixpanelPipeline`; calling ``configure`` again for the same
        providers returns the same pipeline (nothing is added twice).

    Example::

        import otel_mixpanel

        pipeline = otel_mixpanel.configure(structlog=True)
        ...
        pipeline.shutdown()
    """
    _check_batching(max_queue_size, max_export_batch_size, schedule_delay_millis)
    with _configure_lock:
        tracer_provider = tracer_provider or _global_tracer_provider()
        logger_provider = logger_provider or _global_logger_provider()
        existing = _configured.get(tracer_provider) or _configured.get(logger_provider)
        if existing is not None:
            _logger.info("otel_mixpanel.configure() already ran for these providers")
            return existing
        # Everything that can fail runs before a provider is touched: a failed
        # call must leave nothing behind for the next call to add to.
        hooks = []
        if logging:
            hooks.append(_logging_hook(logger_provider))
        if structlog:
            hooks.append(_structlog_hook(logger_provider))
        span_exporter = MixpanelSpanExporter(**exporter_settings)
        log_exporter = MixpanelLogExporter(**exporter_settings)
        # One ordered buffer behind both: a span's $set and a later log record's
        # $set reach Mixpanel in the order the application made them.
        batching = {
            "max_queue_size": max_queue_size, "max_export_batch_size": max_export_batch_size,
            "schedule_delay_millis": schedule_delay_millis,
        }
        span_processor = OrderedSpanProcessor(span_exporter, **batching)
        log_processor = OrderedLogRecordProcessor(log_exporter, **batching)
        tracer_provider.add_span_processor(MixpanelIdentitySpanProcessor())
        tracer_provider.add_span_processor(span_processor)
        logger_provider.add_log_record_processor(MixpanelIdentityLogProcessor())
        logger_provider.add_log_record_processor(log_processor)
        pipeline = MixpanelPipeline(
            tracer_provider, logger_provider, span_exporter, log_exporter,
            [span_processor, log_processor],
        )
        pipeline._undo.extend(hook() for hook in hooks)
        _configured[tracer_provider] = pipeline
        _configured[logger_provider] = pipeline
        return pipeline


def _global_tracer_provider() -> TracerProvider:
    return _global_provider(
        "tracer", trace.get_tracer_provider, trace.set_tracer_provider, TracerProvider
    )


def _global_logger_provider() -> LoggerProvider:
    return _global_provider("logger", get_logger_provider, set_logger_provider, LoggerProvider)


def _global_provider(
    signal: str,
    get: Callable[[], object],
    set_global: Callable[[Any], None],
    sdk_class: Type[_Provider],
) -> _Provider:
    """The global provider when it is the SDK's; a new SDK one, made global, when
    none is set yet (the API's proxy or no-op); otherwise a clear error."""
    provider = get()
    if isinstance(provider, sdk_class):
        return provider
    kind = sdk_class.__name__
    if type(provider).__name__ not in (f"Proxy{kind}", f"NoOp{kind}"):
        raise ConfigurationError(
            f"the global {signal} provider is a {type(provider).__name__}, not the SDK's "
            f"{kind}: pass {signal}_provider= to configure()"
        )
    created = sdk_class()
    set_global(created)
    return created


def _logging_hook(logger_provider: LoggerProvider) -> Callable[[], Callable[[], None]]:
    """Checks the handler is installed now; the returned function attaches it
    and returns its undo."""
    handler = logging_handler(logger_provider)

    def attach() -> Callable[[], None]:
        root = logging.getLogger()
        if root.getEffectiveLevel() > logging.INFO:
            # A record below the logger's level is never made: no handler sees it.
            _logger.warning(
                "otel_mixpanel.configure(logging=True): the root logger's level is %s, so "
                "log.info(..., extra={'mixpanel.event': ...}) never reaches Mixpanel; "
                "call logging.getLogger().setLevel(logging.INFO) (or tag at %s and above)",
                logging.getLevelName(root.getEffectiveLevel()),
                logging.getLevelName(root.getEffectiveLevel()),
            )
        root.addHandler(handler)
        return lambda: root.removeHandler(handler)

    return attach


def _structlog_hook(logger_provider: LoggerProvider) -> Callable[[], Callable[[], None]]:
    """Checks structlog is installed now; the returned function inserts our
    processor before the renderer, keeps it there when the application calls
    ``structlog.configure(processors=...)`` afterwards, and returns its undo."""
    try:
        import structlog  # noqa: PLC0415

        from otel_mixpanel.structlog import MixpanelProcessor  # noqa: PLC0415
    except ImportError as error:
        raise ConfigurationError(
            "configure(structlog=True) needs structlog: pip install 'otel-mixpanel[structlog]'"
        ) from error

    def insert() -> Callable[[], None]:
        if any(isinstance(p, MixpanelProcessor) for p in structlog.get_config()["processors"]):
            return lambda: None  # the application put one in its chain itself
        processor = MixpanelProcessor(logger_provider)
        original = structlog.configure

        def place() -> None:
            processors = list(structlog.get_config()["processors"])
            if not any(p is processor for p in processors):
                # Before the renderer, which is last by structlog's convention.
                processors.insert(max(len(processors) - 1, 0), processor)
                original(processors=processors)

        def configure_keeping_ours(*args: Any, **kwargs: Any) -> None:
            # An application that configures structlog after us would otherwise
            # throw our processor away with its old chain, and nothing would say so.
            original(*args, **kwargs)
            if args or "processors" in kwargs:
                place()

        place()
        for module in (structlog, structlog._config):
            setattr(module, "configure", configure_keeping_ours)  # noqa: B010 - a module

        def undo() -> None:
            for module in (structlog, structlog._config):
                if getattr(module, "configure", None) is configure_keeping_ours:
                    setattr(module, "configure", original)  # noqa: B010 - a module
            current = list(structlog.get_config()["processors"])
            original(processors=[p for p in current if p is not processor])

        return undo

    return insert


def _check_batching(max_queue_size: Any, max_export_batch_size: Any, delay: Any) -> None:
    """A clear error for a buffer that could hold nothing (every event then
    dropped, if counted) or a delay that is no time: before anything is set up."""
    for name, value in (("max_queue_size", max_queue_size),
                        ("max_export_batch_size", max_export_batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(
                f"configure({name}={value!r}): a whole number of at least 1 is needed")
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 < delay < math.inf:
        raise ConfigurationError(
            f"configure(schedule_delay_millis={delay!r}): a number of milliseconds above 0 "
            "is needed")


def _bounded(action: Callable[[], bool], timeout_millis: float) -> bool:
    """Run *action* on a helper thread and wait at most *timeout_millis*."""
    outcome: List[bool] = []
    worker = threading.Thread(
        target=lambda: outcome.append(action()), name="otel-mixpanel-flush", daemon=True
    )
    worker.start()
    worker.join(timeout=max(0.0, timeout_millis / 1000))
    return bool(outcome and outcome[0])
