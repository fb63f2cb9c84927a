"""The exporter's counters as OpenTelemetry metrics.

Observable counters read :class:`Stats` when a metric reader collects, so the
hot path pays nothing; with no MeterProvider configured the global one is a
no-op.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation, get_meter_provider

from otel_mixpanel._stats import Stats
from otel_mixpanel._version import __version__

# (instrument name, snapshot key, attribute name for the key's entries)
_INSTRUMENTS = (
    ("otel_mixpanel.records.sent", "sent", "kind"),
    ("otel_mixpanel.records.retried", "retried", "kind"),
    ("otel_mixpanel.records.dropped", "dropped", "reason"),
    ("otel_mixpanel.records.adjusted", "adjusted", "reason"),
)


def observe(stats: Stats, meter_provider: Optional[MeterProvider] = None) -> None:
    """Register one observable counter per kind of counter in *stats*."""
    meter = (meter_provider or get_meter_provider()).get_meter("otel_mixpanel", __version__)
    for name, key, attribute in _INSTRUMENTS:
        meter.create_observable_counter(
            name, callbacks=[_reader(stats, key, attribute)], unit="{record}",
            description=f"Records {key} by the Mixpanel exporter, by {attribute}",
        )
    meter.create_observable_gauge(
        "otel_mixpanel.queue.waiting", callbacks=[_reader(stats, "waiting", "measure")],
        description="Records and bytes waiting in the sending queue for Mixpanel",
    )


def _reader(
    stats: Stats, key: str, attribute: str
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def read(options: Any) -> Iterable[Observation]:
        return [
            Observation(count, {attribute: label})
            for label, count in stats.snapshot()[key].items()
        ]

    return read
