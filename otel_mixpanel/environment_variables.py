"""Environment variables read by the Mixpanel exporters.

Every ``OTEL_*`` constant here is also a flag of ``opentelemetry-instrument``
(``OTEL_EXPORTER_MIXPANEL_TOKEN`` becomes ``--exporter_mixpanel_token``).
A keyword argument of the exporter with the same suffix, lower-cased,
overrides the variable: ``MixpanelSpanExporter(token=...)``.
"""

from __future__ import annotations

__all__ = [
    "OTEL_EXPORTER_MIXPANEL_API_HOST",
    "OTEL_EXPORTER_MIXPANEL_COMPRESSION",
    "OTEL_EXPORTER_MIXPANEL_OFFLOAD",
    "OTEL_EXPORTER_MIXPANEL_PROJECT_ID",
    "OTEL_EXPORTER_MIXPANEL_PROPERTY_ALLOWLIST",
    "OTEL_EXPORTER_MIXPANEL_PROPERTY_DENYLIST",
    "OTEL_EXPORTER_MIXPANEL_QUEUE_MAX_BYTES",
    "OTEL_EXPORTER_MIXPANEL_REGION",
    "OTEL_EXPORTER_MIXPANEL_RESOURCE_ATTRIBUTES",
    "OTEL_EXPORTER_MIXPANEL_SERVICE_ACCOUNT_SECRET",
    "OTEL_EXPORTER_MIXPANEL_SERVICE_ACCOUNT_USERNAME",
    "OTEL_EXPORTER_MIXPANEL_SHUTDOWN_TIMEOUT",
    "OTEL_EXPORTER_MIXPANEL_SPOOL_DIR",
    "OTEL_EXPORTER_MIXPANEL_SPOOL_MAX_BYTES",
    "OTEL_EXPORTER_MIXPANEL_TIMEOUT",
    "OTEL_EXPORTER_MIXPANEL_TOKEN",
    "OTEL_EXPORTER_MIXPANEL_TRACE_IDS",
]

OTEL_EXPORTER_MIXPANEL_TOKEN = "OTEL_EXPORTER_MIXPANEL_TOKEN"
"""The project token: authenticates ``/import`` (when no service account is
set) and fills ``$token`` on profile and group updates."""

OTEL_EXPORTER_MIXPANEL_PROJECT_ID = "OTEL_EXPORTER_MIXPANEL_PROJECT_ID"
"""The numeric project id; required with a service account."""

OTEL_EXPORTER_MIXPANEL_SERVICE_ACCOUNT_USERNAME = "OTEL_EXPORTER_MIXPANEL_SERVICE_ACCOUNT_USERNAME"
"""Service account username (HTTP Basic on ``/import``)."""

OTEL_EXPORTER_MIXPANEL_SERVICE_ACCOUNT_SECRET = "OTEL_EXPORTER_MIXPANEL_SERVICE_ACCOUNT_SECRET"
"""Service account secret."""

OTEL_EXPORTER_MIXPANEL_REGION = "OTEL_EXPORTER_MIXPANEL_REGION"
"""``us`` (default), ``eu`` or ``in``: the data residency of the project."""

OTEL_EXPORTER_MIXPANEL_API_HOST = "OTEL_EXPORTER_MIXPANEL_API_HOST"
"""A host (``api-eu.mixpanel.com``) or a base URL (``http://127.0.0.1:8080``);
overrides the region. Plain ``http`` is accepted for loopback hosts only."""

OTEL_EXPORTER_MIXPANEL_TIMEOUT = "OTEL_EXPORTER_MIXPANEL_TIMEOUT"
"""Seconds one request to Mixpanel may take, and the longest ``export()``
waits for its records to be answered while Mixpanel answers (default 10).
No timer drops records: what is not answered stays in the sending queue."""

OTEL_EXPORTER_MIXPANEL_COMPRESSION = "OTEL_EXPORTER_MIXPANEL_COMPRESSION"
"""``gzip`` (default) or ``none``; applies to ``/import`` only, since
``/engage`` and ``/groups`` do not accept compressed bodies."""

OTEL_EXPORTER_MIXPANEL_RESOURCE_ATTRIBUTES = "OTEL_EXPORTER_MIXPANEL_RESOURCE_ATTRIBUTES"
"""Comma-separated resource attributes copied onto every event
(default ``service.name``; empty for none)."""

OTEL_EXPORTER_MIXPANEL_TRACE_IDS = "OTEL_EXPORTER_MIXPANEL_TRACE_IDS"
"""``true`` (default) or ``false``: whether events carry ``trace_id`` and
``span_id`` properties linking them to their trace."""

OTEL_EXPORTER_MIXPANEL_SPOOL_DIR = "OTEL_EXPORTER_MIXPANEL_SPOOL_DIR"
"""A directory for the sending queue's disk backend (off when unset: the queue
is in memory): records wait there, durably, until Mixpanel answers for them,
across restarts."""

OTEL_EXPORTER_MIXPANEL_SPOOL_MAX_BYTES = "OTEL_EXPORTER_MIXPANEL_SPOOL_MAX_BYTES"
"""The spool's size bound in bytes (default 64 MiB); the oldest records go first."""

OTEL_EXPORTER_MIXPANEL_QUEUE_MAX_BYTES = "OTEL_EXPORTER_MIXPANEL_QUEUE_MAX_BYTES"
"""The in-memory sending queue's size bound in bytes (default 64 MiB), counted
as held (records waiting during an outage are compressed); the oldest records
go first, counted as ``sending_queue_full``."""

OTEL_EXPORTER_MIXPANEL_SHUTDOWN_TIMEOUT = "OTEL_EXPORTER_MIXPANEL_SHUTDOWN_TIMEOUT"
"""Seconds ``shutdown()`` keeps delivering what waits (default 20; a shorter
timeout given by the provider wins). What is left then stays in the spool, or
is counted lost (``undelivered_at_shutdown``) with the memory queue."""

OTEL_EXPORTER_MIXPANEL_OFFLOAD = "OTEL_EXPORTER_MIXPANEL_OFFLOAD"
"""``auto`` (default) or ``off``. Under load (batches of 256 records and
more), ``configure()``'s batch worker hands translation and encoding to a
helper process, so they stop competing with the application's threads for the
interpreter lock; the bytes sent are the same. ``off`` keeps all of it in the
application's process."""

OTEL_EXPORTER_MIXPANEL_PROPERTY_ALLOWLIST = "OTEL_EXPORTER_MIXPANEL_PROPERTY_ALLOWLIST"
"""Comma-separated property names: when set, only these (and ``time``,
``distinct_id``, ``$insert_id``) are sent on events and profiles."""

OTEL_EXPORTER_MIXPANEL_PROPERTY_DENYLIST = "OTEL_EXPORTER_MIXPANEL_PROPERTY_DENYLIST"
"""Comma-separated property names never sent on events or profiles."""
