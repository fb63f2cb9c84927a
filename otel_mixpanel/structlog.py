"""structlog events tagged with ``mixpanel_*`` keys → OpenTelemetry log records → Mixpanel.

:class:`MixpanelProcessor` goes in the processor chain (before the renderer).
It emits each tagged event as an OpenTelemetry log record to a
``LoggerProvider`` whose ``BatchLogRecordProcessor`` and
:class:`~otel_mixpanel.MixpanelLogExporter` deliver it, and returns the event
dict so rendering goes on as before::

    import structlog
    from otel_mixpanel.structlog import MixpanelProcessor

    structlog.configure(processors=[
        structlog.contextvars.merge_contextvars,
        MixpanelProcessor(),
        structlog.processors.JSONRenderer(),
    ])
    log = structlog.get_logger()
    log.info("signed up", mixpanel_event="Signed Up", mixpanel_user_id="u1",
             mixpanel_properties={"plan": "pro"}, mixpanel_people_set={"plan": "pro"})

Binding ``mixpanel_distinct_id`` (or ``_user_id``) with
``structlog.contextvars.bind_contextvars`` tags every later event of the
request. Identity alone sends nothing.

If ``opentelemetry-instrumentation-structlog`` is active, its processor already
emits every event dict as a log record, and the log exporter understands the
``mixpanel_*`` keys on it; this processor then steps aside (it emits nothing
and removes no keys), so an event can never reach Mixpanel twice.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, MutableMapping, Optional

import structlog
from opentelemetry._logs import Logger, LoggerProvider, SeverityNumber, get_logger_provider

from otel_mixpanel import _compat
from otel_mixpanel._convention import _table as c
from otel_mixpanel._convention._table import flat_attributes
from otel_mixpanel._convention._translate import carries_messages
from otel_mixpanel._stats import Stats

__all__ = ["MixpanelProcessor"]

_logger = logging.getLogger(__name__)

_SEVERITY = {
    "debug": SeverityNumber.DEBUG,
    "info": SeverityNumber.INFO,
    "msg": SeverityNumber.INFO,
    "warning": SeverityNumber.WARN,
    "warn": SeverityNumber.WARN,
    "error": SeverityNumber.ERROR,
    "exception": SeverityNumber.ERROR,
    "critical": SeverityNumber.FATAL,
    "fatal": SeverityNumber.FATAL,
}
_INSTRUMENTATION_MODULE = "opentelemetry.instrumentation.structlog"


class MixpanelProcessor:
    """A structlog processor that hands tagged events to OpenTelemetry logs.

    Args:
        logger_provider: where to emit; the global provider (looked up at
            each event, so configuration order does not matter) when omitted.
        remove_keys: drop the ``mixpanel_*`` keys from the event dict after
            emitting, so renderers do not print them.

    It never raises into the application and never raises ``DropEvent``: an
    error is counted and logged (at most once a minute) and the event dict is
    returned unchanged.
    """

    def __init__(
        self, logger_provider: Optional[LoggerProvider] = None, *, remove_keys: bool = False
    ) -> None:
        self._logger_provider = logger_provider
        self._remove_keys = remove_keys
        self._loggers: Dict[int, Dict[str, Logger]] = {}
        self._stats = Stats(_logger)
        self._checked_chain: Optional[int] = None
        self._defer = False

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        try:
            tagged = [name for name in event_dict if name.startswith(c.PREFIXES)]
            if tagged and not self._instrumentation_emits():
                if carries_messages(event_dict):
                    self._emit(logger, method_name, event_dict, tagged)
                if self._remove_keys:
                    for name in tagged:
                        del event_dict[name]
        except Exception as error:  # the application's log call must never fail
            self._stats.dropped("structlog_processor_error", detail=type(error).__name__)
        return event_dict

    def _emit(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any], tagged: list[str]
    ) -> None:
        body = event_dict.get("event")
        attributes = {name: event_dict[name] for name in tagged}
        if not _compat.LOG_MAPPINGS:  # the SDK would drop mapping values
            attributes = flat_attributes(attributes)
        _compat.emit(
            self._otel_logger(getattr(logger, "name", None) or "structlog"),
            timestamp=time.time_ns(),
            severity_number=_SEVERITY.get(method_name, SeverityNumber.INFO),
            severity_text=method_name,
            body=body if isinstance(body, str) else repr(body),
            attributes=attributes,
        )

    def _otel_logger(self, name: str) -> Logger:
        provider = self._logger_provider or get_logger_provider()
        # A provider set after this processor was built gets its own loggers.
        by_name = self._loggers.setdefault(id(provider), {})
        otel_logger = by_name.get(name)
        if otel_logger is None:
            otel_logger = by_name[name] = provider.get_logger(name)
        return otel_logger

    def _instrumentation_emits(self) -> bool:
        """Whether opentelemetry-instrumentation-structlog's processor is in the
        configured chain; checked again only when the chain changes."""
        processors = structlog.get_config().get("processors", ())
        if id(processors) != self._checked_chain:
            self._checked_chain = id(processors)
            self._defer = any(
                type(p).__module__.startswith(_INSTRUMENTATION_MODULE) for p in processors
            )
        return self._defer
