"""What the span and log-record exporters share: settings, delivery, stats,
resource properties, the shutdown flag.

The signal exporters only turn their input into :class:`Record` objects and
hand them here, as OTLP's signal exporters hand bytes to one HTTP client.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from otel_mixpanel._config import Settings, resolve_settings
from otel_mixpanel._delivery import Delivery
from otel_mixpanel._model import Message
from otel_mixpanel._stats import Stats
from otel_mixpanel._translate import Record, translate
from otel_mixpanel._transport import Transport

_logger = logging.getLogger(__name__)


class ExporterCore:
    """Settings → delivery; translation of records; counters."""

    def __init__(
        self,
        *,
        token: Optional[str],
        project_id: Optional[str],
        service_account_username: Optional[str],
        service_account_secret: Optional[str],
        region: Optional[str],
        api_host: Optional[str],
        timeout: Optional[float],
        compression: Optional[str],
        resource_attributes: Optional[Sequence[str]],
        trace_ids: Optional[bool],
        transport: Optional[Transport],
        logger: logging.Logger,
    ) -> None:
        self.settings: Settings = resolve_settings(
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
        self.logger = logger
        self.stats = Stats(logger)
        self.delivery = Delivery(self.settings, transport=transport, stats=self.stats)
        self._resource_properties: Dict[int, Mapping[str, Any]] = {}
        self._lock = threading.Lock()
        self.is_shut_down = False

    def resource_properties(self, attributes: Mapping[str, Any]) -> Mapping[str, Any]:
        """The chosen resource attributes as event properties, cached per resource."""
        key = id(attributes)
        cached = self._resource_properties.get(key)
        if cached is None:
            names = self.settings.resource_attributes
            cached = {name: attributes[name] for name in names if name in attributes}
            # Resources live as long as their provider: a handful per process.
            self._resource_properties[key] = cached
        return cached

    def deliver(self, records: Iterable[Record]) -> bool:
        """Translate and send; True when every request was answered by Mixpanel."""
        messages: List[Message] = []
        trace_ids = self.settings.trace_ids
        for record in records:
            messages.extend(translate(record, self.stats, trace_ids=trace_ids))
        if not messages:
            return True
        return self.delivery.deliver(messages).ok

    def shutdown(self) -> None:
        """Stop accepting exports and close connections; safe to call twice."""
        with self._lock:
            if self.is_shut_down:
                self.logger.warning("Mixpanel exporter shutdown called more than once")
                return
            self.is_shut_down = True
        self.delivery.close()
