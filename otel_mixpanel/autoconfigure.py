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

from typing import Any, List

from opentelemetry.sdk._configuration import _OTelSDKConfigurator

from otel_mixpanel.identity import MixpanelIdentityLogProcessor, MixpanelIdentitySpanProcessor

__all__ = ["MixpanelConfigurator"]


class MixpanelConfigurator(_OTelSDKConfigurator):
    """The SDK's default configuration plus the Mixpanel identity processors."""

    def _configure(self, **kwargs: Any) -> None:
        span_processors: List[Any] = list(kwargs.pop("span_processors", None) or [])
        log_processors: List[Any] = list(kwargs.pop("log_record_processors", None) or [])
        span_processors.insert(0, MixpanelIdentitySpanProcessor())
        log_processors.insert(0, MixpanelIdentityLogProcessor())
        super()._configure(  # type: ignore[no-untyped-call]
            span_processors=span_processors, log_record_processors=log_processors, **kwargs
        )
