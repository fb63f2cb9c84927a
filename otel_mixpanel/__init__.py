"""otel-mixpanel: Mixpanel analytics from the telemetry a service already emits.

Tag a span or a log record with ``mixpanel.*`` attributes (or a structlog
event with ``mixpanel_*`` keys) and :class:`MixpanelSpanExporter` /
:class:`MixpanelLogExporter` turn it into Mixpanel events, profile updates and
group updates, delivered in batches on the OpenTelemetry batch processors'
threads. :func:`bind_identity` tags everything of a request with its user.
"""

from __future__ import annotations

from otel_mixpanel._configure import MixpanelPipeline, configure
from otel_mixpanel._exceptions import ConfigurationError, MixpanelError
from otel_mixpanel._inputs._track import (
    alias,
    group_delete,
    group_remove,
    group_set,
    group_set_once,
    group_union,
    group_unset,
    people_append,
    people_delete,
    people_increment,
    people_remove,
    people_set,
    people_set_once,
    people_track_charge,
    people_union,
    people_unset,
    track,
)
from otel_mixpanel._queue._retry import RetryPolicy
from otel_mixpanel._version import __version__
from otel_mixpanel.identity import (
    MixpanelIdentityLogProcessor,
    MixpanelIdentitySpanProcessor,
    bind_identity,
)
from otel_mixpanel.logs import MixpanelLogExporter
from otel_mixpanel.trace import MixpanelSpanExporter

__all__ = [
    "ConfigurationError",
    "MixpanelError",
    "MixpanelIdentityLogProcessor",
    "MixpanelIdentitySpanProcessor",
    "MixpanelLogExporter",
    "MixpanelPipeline",
    "MixpanelSpanExporter",
    "RetryPolicy",
    "__version__",
    "alias",
    "bind_identity",
    "configure",
    "group_delete",
    "group_remove",
    "group_set",
    "group_set_once",
    "group_union",
    "group_unset",
    "people_append",
    "people_delete",
    "people_increment",
    "people_remove",
    "people_set",
    "people_set_once",
    "people_track_charge",
    "people_union",
    "people_unset",
    "track",
]
