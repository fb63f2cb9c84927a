"""What the span and log-record exporters share: settings, the sending queue,
stats, resource properties, the shutdown flag.

The signal exporters only turn their input into :class:`Record` objects and
hand them here, as OTLP's signal exporters hand bytes to one HTTP client; the
messages go to the destination's one sending queue (``otel_mixpanel._queue``).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Mapping
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from otel_mixpanel import _queue
from otel_mixpanel._config import Settings, resolve_settings
from otel_mixpanel._convention._translate import Record, translate_all
from otel_mixpanel._metrics import observe
from otel_mixpanel._model import Message
from otel_mixpanel._queue._retry import RetryPolicy
from otel_mixpanel._queue._transport import Transport

_OWN_LOGGER = "otel_mixpanel"


def is_own_logger(name: str) -> bool:
    """Whether *name* is one of the library's own loggers (``otel_mixpanel`` and
    below it, not ``otel_mixpanel_demo``): their records never become events."""
    return name == _OWN_LOGGER or name.startswith(_OWN_LOGGER + ".")


# Resources live as long as their provider: a handful per process, unless made per record.
_MAX_CACHED_RESOURCES = 64


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
        timeout: seconds one request may take, and the longest ``export()``
            waits for its records to be answered (default 10); records not
            answered by then stay queued, never dropped.
        compression: ``gzip`` (default) or ``none``, for ``/import``.
        resource_attributes: resource attributes copied onto every event
            (default ``("service.name",)``).
        trace_ids: whether events carry ``trace_id``/``span_id`` (default True).
        spool_dir: keep the sending queue in this directory, durably across
            restarts (default: in memory).
        spool_max_bytes: the spool's size bound (default 64 MiB).
        queue_max_bytes: the memory queue's size bound (default 64 MiB).
        shutdown_timeout: seconds ``shutdown()`` keeps delivering (default 20).
        offload: ``auto`` (default): under load, ``configure()``'s batch worker
            translates in a helper process, off the application's interpreter
            lock (same bytes); ``off`` keeps it in this process.
        property_allowlist: when given, only these property names are sent.
        property_denylist: property names never sent.
        retry_policy: backoff between attempts (default: Mixpanel's guidance).
        meter_provider: where to report the counters as OpenTelemetry metrics
            (default: the global one, a no-op unless configured).
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
        spool_dir: Optional[str] = None,
        spool_max_bytes: Optional[int] = None,
        property_allowlist: Optional[Iterable[str]] = None,
        property_denylist: Optional[Iterable[str]] = None,
        queue_max_bytes: Optional[int] = None,
        shutdown_timeout: Optional[float] = None,
        offload: Optional[str] = None,
        retry_policy: Optional[RetryPolicy] = None,
        meter_provider: Any = None,
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
            spool_dir=spool_dir,
            spool_max_bytes=spool_max_bytes,
            property_allowlist=property_allowlist,
            property_denylist=property_denylist,
            queue_max_bytes=queue_max_bytes,
            shutdown_timeout=shutdown_timeout,
            offload=offload,
        )
        # Exporters to the same destination share one queue and its counters.
        self._queue, created = _queue.acquire(
            self._settings, transport=transport, retry_policy=retry_policy
        )
        self._stats = self._queue.stats
        if created:
            observe(self._stats, meter_provider)
        # An exporter dropped without shutdown() must not keep its queue's sender
        # retrying forever: it lets go at once (what waits is counted lost).
        # At interpreter exit the providers' own shutdown does this properly.
        self._release = weakref.finalize(self, _queue.release, self._queue, 0.0)
        self._release.atexit = False
        self._resource_properties: Dict[int, Tuple[Mapping[str, Any], Mapping[str, Any]]] = {}
        self._lock = threading.Lock()
        self._is_shut_down = False

    def _properties_of_resource(self, attributes: Mapping[str, Any]) -> Mapping[str, Any]:
        """The chosen resource attributes as event properties, cached per resource."""
        key = id(attributes)
        cached = self._resource_properties.get(key)
        # The entry holds the attributes themselves: while cached they cannot be
        # collected, so their id cannot pass to another resource's.
        if cached is None or cached[0] is not attributes:
            names = self._settings.resource_attributes
            properties = {name: attributes[name] for name in names if name in attributes}
            if str(properties.get("service.name", "")).startswith("unknown_service"):
                # The SDK's stand-in when the service set no name: noise on every event.
                del properties["service.name"]
            if len(self._resource_properties) >= _MAX_CACHED_RESOURCES:
                self._resource_properties.clear()  # resources made per record: stay bounded
            cached = self._resource_properties[key] = (attributes, properties)
        return cached[1]

    def _records(self, batch: Sequence[Any]) -> Iterator[Record]:
        """The signal exporter's reading of its SDK objects (spans, log records)."""
        raise NotImplementedError

    def _records_of(self, kept: Sequence[Any]) -> Iterator[Record]:
        """The same, of what the ordered processor kept of them (by default the
        objects themselves)."""
        return self._records(kept)

    def _messages(self, records: Iterable[Record]) -> List[Message]:
        """Translate *records*; one bad record never costs the others."""
        return translate_all(records, self._stats, trace_ids=self._settings.trace_ids)

    def _deliver(self, records: Iterable[Record]) -> bool:
        """Translate and queue, then wait while Mixpanel answers (at most
        ``timeout``); returns at once while Mixpanel is failing, the records
        staying queued. False after shutdown or on an error. Never raises."""
        if self._is_shut_down:
            tagged = sum(1 for _ in records)
            if tagged:
                self._stats.dropped(
                    "exporter_shut_down", tagged, detail="export() called after shutdown()"
                )
            return False
        try:
            return self._submit(self._messages(records))
        except Exception:  # export must never raise into the batch processor
            self._logger.exception("Mixpanel export failed")
            return False

    def _submit(self, messages: List[Message], *, wait: bool = True) -> bool:
        """Queue *messages* and (``wait``) wait while Mixpanel answers; True."""
        if not messages:
            return True
        ticket = self._queue.submit(messages)
        if ticket is not None and wait:
            self._queue.wait(ticket, self._settings.timeout)
        return True

    def stats(self) -> Dict[str, Dict[str, int]]:
        """Counters of records sent, adjusted and dropped, by reason.

        >>> exporter.stats()  # doctest: +SKIP
        {'sent': {'events': 12}, 'dropped': {'non_finite_number': 1}, 'adjusted': {}}
        """
        return self._stats.snapshot()

    def shutdown(self, timeout_millis: Optional[float] = None) -> None:
        """Stop taking records; the last exporter of a destination keeps
        delivering what waits for at most ``shutdown_timeout`` seconds (or
        *timeout_millis*, when shorter), then the spool keeps the rest or the
        memory queue counts it lost, in one log line. Safe to call twice."""
        with self._lock:
            if self._is_shut_down:
                self._logger.warning("Mixpanel exporter shutdown called more than once")
                return
            self._is_shut_down = True
        self._release.detach()
        _queue.release(self._queue, self._shutdown_budget(timeout_millis))

    def _shutdown_budget(self, timeout_millis: Optional[float]) -> float:
        """Seconds to keep delivering at shutdown: ``shutdown_timeout``, or the
        caller's *timeout_millis* when shorter."""
        budget = self._settings.shutdown_timeout
        if timeout_millis is not None:
            budget = min(budget, max(0.0, timeout_millis / 1000))
        return budget

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Wait until every record handed over before the call has been
        answered by Mixpanel; False if that takes longer than *timeout_millis*."""
        return self._queue.flush(max(0.0, timeout_millis / 1000))
