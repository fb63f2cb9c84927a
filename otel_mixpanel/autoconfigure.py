"""Zero-code set-up: ``opentelemetry-instrument`` with environment variables only.

The exporters are registered as ``mixpanel`` for ``OTEL_TRACES_EXPORTER`` and
``OTEL_LOGS_EXPORTER``. Request-scoped identity also needs our span and log
processors, which an exporter cannot add; this configurator (entry point
``opentelemetry_configurator`` named ``mixpanel``) is the SDK's supported hook
for that: it sets the SDK up exactly as the default does, plus the identity
processors::

    OTEL_TRACES_EXPORTER=mixpanel OTEL_LOGS_EXPORTER=mixpanel OTEL_METRICS_EXPORTER=none \\
    OTEL_EXPORTER_MIXPANEL_TOKEN=... opentelemetry-instrument python app.py

``opentelemetry-instrument`` runs only one configurator; when
``opentelemetry-distro`` is installed too, choose ours with
``OTEL_PYTHON_CONFIGURATOR=mixpanel``.
"""

from __future__ import annotations

import os
from typing import Any, List, Optional

from opentelemetry.sdk._configuration import _OTelSDKConfigurator
from opentelemetry.sdk.environment_variables import (
    OTEL_BLRP_MAX_EXPORT_BATCH_SIZE,
    OTEL_BLRP_MAX_QUEUE_SIZE,
    OTEL_BLRP_SCHEDULE_DELAY,
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
    OTEL_BSP_MAX_QUEUE_SIZE,
    OTEL_BSP_SCHEDULE_DELAY,
)

from otel_mixpanel import _compat
from otel_mixpanel._inputs._intake import (
    DEFAULT_MAX_QUEUE_SIZE,
    OrderedLogRecordProcessor,
    OrderedSpanProcessor,
)
from otel_mixpanel.identity import MixpanelIdentityLogProcessor, MixpanelIdentitySpanProcessor
from otel_mixpanel.logs import MixpanelLogExporter
from otel_mixpanel.trace import MixpanelSpanExporter

__all__ = ["MixpanelConfigurator"]

# The entry point name our exporters are registered under (pyproject.toml).
_NAME = "mixpanel"


class MixpanelConfigurator(_OTelSDKConfigurator):
    """The SDK's default configuration plus the Mixpanel identity processors."""

    def _configure(self, **kwargs: Any) -> None:
        span_processors: List[Any] = list(kwargs.pop("span_processors", None) or [])
        log_processors: List[Any] = list(kwargs.pop("log_record_processors", None) or [])
        span_processors.insert(0, MixpanelIdentitySpanProcessor())
        log_processors.insert(0, MixpanelIdentityLogProcessor())
        # Our exporters get configure()'s one ordered, burst-sized buffer for
        # both signals (unless the variable sets its size) and counted
        # queue-full drops; other exporters keep the SDK's processors.
        _compat.initialize_components(
            super()._configure,
            span_processors=span_processors,
            log_record_processors=log_processors,
            exporters={
                "traces": (_NAME, MixpanelSpanExporter, _span_processor),
                "logs": (_NAME, MixpanelLogExporter, _log_processor),
            },
            **kwargs,
        )


def _queue_size(variable: str) -> int:
    """The size the user set in *variable*, else our burst-sized default."""
    return _from_env(variable) or DEFAULT_MAX_QUEUE_SIZE


def _from_env(variable: str) -> Optional[int]:
    """A positive integer the user set, else None (our default applies): the
    SDK's batch processors read the same variables."""
    raw = os.environ.get(variable, "").strip()
    try:
        value = int(raw) if raw else None
    except ValueError:
        value = None
    return value if value is not None and value > 0 else None


def _span_processor(exporter: MixpanelSpanExporter) -> OrderedSpanProcessor:
    return OrderedSpanProcessor(
        exporter, max_queue_size=_queue_size(OTEL_BSP_MAX_QUEUE_SIZE),
        max_export_batch_size=_from_env(OTEL_BSP_MAX_EXPORT_BATCH_SIZE),
        schedule_delay_millis=_from_env(OTEL_BSP_SCHEDULE_DELAY),
    )


def _log_processor(exporter: MixpanelLogExporter) -> OrderedLogRecordProcessor:
    return OrderedLogRecordProcessor(
        exporter, max_queue_size=_queue_size(OTEL_BLRP_MAX_QUEUE_SIZE),
        max_export_batch_size=_from_env(OTEL_BLRP_MAX_EXPORT_BATCH_SIZE),
        schedule_delay_millis=_from_env(OTEL_BLRP_SCHEDULE_DELAY),
    )
