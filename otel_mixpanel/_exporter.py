"""What the span and log-record exporters share: settings, delivery, stats,
resource properties, the shutdown flag.

The signal exporters only turn their input into :class:`Record` objects and
hand them here, as OTLP's signal exporters hand bytes to one HTTP client.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any, Dict, Iterable, List, Optional, Sequence

from otel_mixpanel._config import Settings, resolve_settings
from otel_mixpanel._delivery import Delivery
from otel_mixpanel._model import Message
from otel_mixpanel._stats import Stats
from otel_mixpanel._translate import Record, translate
from otel_mixpanel._transport import Transport

# The library's own loggers: their records never become Mixpanel events.
OWN_LOGGER_PREFIX = "otel_mixpanel"


class MixpanelExporterBase:
    """Configuration and lifecycle shared by the signal exporters.

    Every argument defaults to its ``OTEL_EXPORTER_MIXPANEL_*`` environment
    variable (see :mod:`otel_mixpanel.environment_variables`), so an exporter
    can be built with no arguments, as ``opentelemetry-instrument`` does.

    Args:
        token: the project token.
        project_id: the project id (needed with a service account).
        service_account_username: service account that authenticates ``/import``.
        service_account_secret: its secret.
        region: ``us``, ``eu`` or ``in``.
        api_host: a host or base URL replacing the region's host.
        timeout: seconds one export may take, retries included (default 10).
        compression: ``gzip`` (default) or ``none``, for ``/import``.
        resource_attributes: resource attributes copied onto every event
            (default ``("service.name",)``).
        trace_ids: whether events carry ``trace_id``/``span_id`` (default True).
        transport: replaces the HTTP client (tests).

    Raises:
        ConfigurationError: no credentials, or an invalid setting.
    """

    _logger: logging.Logger = logging.getLogger(__name__)

    def __init__(
        self,
        token: Optional[str] = None,
        project_id: Optional[str] = None,
        service_account_username: Optional[str] = None,
        service_account_secret: Optional[str] = None,
        region: Optional[str] = None,
        api_host: Optional[str] = None,
        timeout: Optional[float] = None,
        compression: Optional[str] = None,
        *,
        resource_attributes: Optional[Sequence[str]] = None,
        trace_ids: Optional[bool] = None,
        transport: Optional[Transport] = None,
    ) -> None:
        self._settings: Settings = resolve_settings(
            token=token,
            project_id=project_id,
            service_account_username=service_account_username,
            service_account_secret=service_account_secret,
            region=region,
            api_host=api_host,
            timeout=timeout,
            compression=compression,
            resource_attributes=resource_attributes,
            trace_ids=trace_ids,
        )
        self._stats = Stats(self._logger)
        self._delivery = Delivery(self._settings, transport=transport, stats=self._stats)
        self._resource_properties: Dict[int, Mapping[str, Any]] = {}
        self._lock = threading.Lock()
        self._is_shut_down = False

    def _properties_of_resource(self, attributes: Mapping[str, Any]) -> Mapping[str, Any]:
        """The chosen resource attributes as event properties, cached per resource."""
        key = id(attributes)
        cached = self._resource_properties.get(key)
        if cached is None:
            names = self._settings.resource_attributes
            cached = {name: attributes[name] for name in names if name in attributes}
            # Resources live as long as their provider: a handful per process.
            self._resource_properties[key] = cached
        return cached

    def _deliver(self, records: Iterable[Record]) -> bool:
        """Translate and send; False after shutdown, on any error, or when a
        request went unanswered. Never raises."""
        if self._is_shut_down:
            self._logger.warning("Mixpanel exporter already shut down; dropping the batch")
            return False
        try:
            messages: List[Message] = []
            trace_ids = self._settings.trace_ids
            for record in records:
                messages.extend(translate(record, self._stats, trace_ids=trace_ids))
            if not messages:
                return True
            return self._delivery.deliver(messages).ok
        except Exception:  # export must never raise into the batch processor
            self._logger.exception("Mixpanel export failed")
            return False

    def stats(self) -> Dict[str, Dict[str, int]]:
        """Counters of records sent, adjusted and dropped, by reason.

        >>> exporter.stats()  # doctest: +SKIP
        {'sent': {'events': 12}, 'dropped': {'non_finite_number': 1}, 'adjusted': {}}
        """
        return self._stats.snapshot()

    def shutdown(self) -> None:
        """Close the HTTP connections; later exports fail. Safe to call twice."""
        with self._lock:
            if self._is_shut_down:
                self._logger.warning("Mixpanel exporter shutdown called more than once")
                return
            self._is_shut_down = True
        self._delivery.close()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Nothing is buffered inside the exporter: always True."""
        return True
