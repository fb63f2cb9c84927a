"""otel-mixpanel: Mixpanel analytics from the telemetry a service already emits.

Tag a span with ``mixpanel.*`` attributes and :class:`MixpanelSpanExporter`
turns it into Mixpanel events, profile updates and group updates, delivered
in batches on the OpenTelemetry batch processor's thread.
"""

from __future__ import annotations

from otel_mixpanel._exceptions import ConfigurationError, MixpanelError
from otel_mixpanel._version import __version__
from otel_mixpanel.trace import MixpanelSpanExporter

__all__ = [
    "ConfigurationError",
    "MixpanelError",
    "MixpanelSpanExporter",
    "__version__",
]
