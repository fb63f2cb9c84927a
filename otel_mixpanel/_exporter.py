"""What the span and log-record exporters share: settings, delivery, stats,
resource properties, the shutdown flag.

The signal exporters only turn their input into :class:`Record` objects and
hand them here, as OTLP's signal exporters hand bytes to one HTTP client.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Mapping
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from opentelemetry import context as otel_context

from otel_mixpanel._config import Settings, resolve_settings
from otel_mixpanel._delivery import Delivery
from otel_mixpanel._metrics import observe
from otel_mixpanel._model import Message
from otel_mixpanel._retry import RetryPolicy
from otel_mixpanel._spool import Spool
from otel_mixpanel._stats import Stats
from otel_mixpanel._translate import Record, translate
from otel_mixpanel._transport import Transport

try:  # the key the batch processors set around export(); our own thread needs it too
    from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY
except ImportError:  # pragma: no cover - very old API
    _SUPPRESS_INSTRUMENTATION_KEY = otel_context.create_key("suppress_instrumentation")

# The library's own loggers: their records never become Mixpanel events.
OWN_LOGGER_PREFIX = "otel_mixpanel"
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
        timeout: seconds one export may take, retries included (default 10).
        compression: ``gzip`` (default) or ``none``, for ``/import``.
        resource_attributes: resource attributes copied onto every event
            (default ``("service.name",)``).
        trace_ids: whether events carry ``trace_id``/``span_id`` (default True).
        spool_dir: keep what cannot be delivered in this directory and re-send
            it later (off by default).
        spool_max_bytes: the spool's size bound (default 64 MiB).
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
        )
        self._stats = Stats(self._logger)
        spool = None
        if self._settings.spool_dir is not None:
            spool = Spool(
                self._settings.spool_dir,
                max_bytes=self._settings.spool_max_bytes,
                on_drop=self._stats.dropped,
            )
        self._delivery = Delivery(
            self._settings, transport=transport, stats=self._stats,
            retry_policy=retry_policy, spool=spool,
        )
        self._retry_pause = (retry_policy or RetryPolicy()).outage_pause
        self._resource_properties: Dict[int, Tuple[Mapping[str, Any], Mapping[str, Any]]] = {}
        self._lock = threading.Lock()
        self._is_shut_down = False
        self._replayer: Optional[threading.Thread] = None
        observe(self._stats, meter_provider)
        _reset_in_forked_child(self)
        if self._delivery.backlog:
            self._start_replay()

    def _properties_of_resource(self, attributes: Mapping[str, Any]) -> Mapping[str, Any]:
        """The chosen resource attributes as event properties, cached per resource."""
        key = id(attributes)
        cached = self._resource_properties.get(key)
        # The entry holds the attributes themselves: while cached they cannot be
        # collected, so their id cannot pass to another resource's.
        if cached is None or cached[0] is not attributes:
            names = self._settings.resource_attributes
            properties = {name: attributes[name] for name in names if name in attributes}
            if len(self._resource_properties) >= _MAX_CACHED_RESOURCES:
                self._resource_properties.clear()  # resources made per record: stay bounded
            cached = self._resource_properties[key] = (attributes, properties)
        return cached[1]

    def _deliver(self, records: Iterable[Record]) -> bool:
        """Translate and send; False after shutdown, on any error, or when a
        request went unanswered. Never raises."""
        if self._is_shut_down:
            tagged = sum(1 for _ in records)
            if tagged:
                self._stats.dropped(
                    "exporter_shut_down", tagged, detail="export() called after shutdown()"
                )
            return False
        try:
            messages: List[Message] = []
            trace_ids = self._settings.trace_ids
            for record in records:
                try:
                    messages.extend(translate(record, self._stats, trace_ids=trace_ids))
                except Exception as error:  # one bad record must not cost the batch
                    self._stats.dropped("translation_error", detail=type(error).__name__)
            if not messages:
                return True
            delivered = self._delivery.deliver(messages).ok
            if self._delivery.backlog:
                self._start_replay()  # keeps trying until Mixpanel takes it back
            return delivered
        except Exception:  # export must never raise into the batch processor
            self._logger.exception("Mixpanel export failed")
            return False

    def stats(self) -> Dict[str, Dict[str, int]]:
        """Counters of records sent, adjusted and dropped, by reason.

        >>> exporter.stats()  # doctest: +SKIP
        {'sent': {'events': 12}, 'dropped': {'non_finite_number': 1}, 'adjusted': {}}
        """
        return self._stats.snapshot()

    def _start_replay(self) -> None:
        """Re-send the spool on a background thread, unless one is running."""
        spool = self._delivery.spool
        with self._lock:
            if spool is None or self._is_shut_down or (
                self._replayer is not None and self._replayer.is_alive()
            ):
                return
            self._replayer = threading.Thread(
                target=self._replay, args=(spool,), name="otel-mixpanel-spool", daemon=True
            )
            self._replayer.start()

    def _replay(self, spool: Spool) -> None:
        # Like the batch processors around export(): our HTTP calls make no spans.
        token = otel_context.attach(otel_context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
        try:
            while not self._is_shut_down:
                writes_before = self._delivery.spool_writes
                result = spool.replay(
                    self._delivery.replay, should_stop=lambda: self._is_shut_down
                )
                if result.error is not None:
                    self._logger.warning("Mixpanel spool replay stopped: %s", result.error)
                drained = not result.kept_records and not result.locked and not result.error
                with self._lock:
                    # Leave only if nothing was spooled during the pass; an export
                    # that spools after this sees no replayer and starts one.
                    if drained and self._delivery.spool_writes == writes_before:
                        self._delivery.backlog = False
                        self._replayer = None
                        return
                # Mixpanel failed (or another process is replaying): try again
                # after the outage pause. Records spooled during the pass: at once.
                failed = result.locked or result.error is not None or self._delivery.in_outage
                if failed and self._delivery.wait_closed(self._retry_pause):
                    break
        except Exception:
            self._logger.exception("Mixpanel spool replay failed")
        finally:
            otel_context.detach(token)

    def _after_fork(self) -> None:
        """In a forked child: fresh locks (another thread may have held one at
        the fork), no replay thread, delivery reopened; the HTTP session renews
        itself on first use."""
        self._lock = threading.Lock()
        self._replayer = None
        self._stats.after_fork()
        self._delivery.reopen()

    def shutdown(self, timeout_millis: float = 30_000) -> None:
        """Stop: a backoff in progress ends at once, the replay thread is given
        at most *timeout_millis* to stop, connections close. Safe to call twice."""
        with self._lock:
            if self._is_shut_down:
                self._logger.warning("Mixpanel exporter shutdown called more than once")
                return
            self._is_shut_down = True
            replayer = self._replayer
        self._delivery.close()
        if replayer is not None:
            replayer.join(timeout=max(0.0, timeout_millis / 1000))

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Nothing is buffered inside the exporter: always True."""
        return True


def _reset_in_forked_child(exporter: MixpanelExporterBase) -> None:
    """Register a fork hook that does not keep the exporter alive."""
    if not hasattr(os, "register_at_fork"):  # pragma: no cover - Windows
        return
    reference = weakref.WeakMethod(exporter._after_fork)

    def after_in_child() -> None:
        method = reference()
        if method is not None:
            method()

    os.register_at_fork(after_in_child=after_in_child)
