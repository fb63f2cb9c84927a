"""The exporter's counters as OpenTelemetry metrics, read by an
InMemoryMetricReader after real exports to the local Mixpanel."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Gauge, InMemoryMetricReader, Sum
from opentelemetry.sdk.trace.export import SpanExportResult

from otel_mixpanel import MixpanelSpanExporter
from otel_mixpanel.testing import LocalMixpanel
from tests.helpers import FAST, finished_spans, until

# instrument name -> (stats key, attribute name)
COUNTERS = {
    "otel_mixpanel.records.sent": ("sent", "kind"),
    "otel_mixpanel.records.retried": ("retried", "kind"),
    "otel_mixpanel.records.dropped": ("dropped", "reason"),
    "otel_mixpanel.records.adjusted": ("adjusted", "reason"),
}
WAITING = "otel_mixpanel.queue.waiting"  # a gauge: what waits now, not a running total
INSTRUMENTS = {**COUNTERS, WAITING: ("waiting", "measure")}

Points = Dict[str, Dict[Tuple[Tuple[str, Any], ...], int]]


def collect(reader: InMemoryMetricReader) -> Points:
    """Every data point: instrument name -> attributes -> value. The counters
    are monotonic sums of records; the waiting measure is a gauge."""
    points: Points = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            assert scope_metrics.scope.name == "otel_mixpanel"
            for metric in scope_metrics.metrics:
                assert metric.name in INSTRUMENTS, metric.name
                if metric.name == WAITING:
                    assert isinstance(metric.data, Gauge)
                else:
                    assert isinstance(metric.data, Sum) and metric.data.is_monotonic
                    assert metric.unit == "{record}"
                for point in metric.data.data_points:
                    key = tuple(sorted((point.attributes or {}).items()))
                    points.setdefault(metric.name, {})[key] = int(point.value)
    return points


def agree(points: Points, stats: Mapping[str, Mapping[str, int]]) -> None:
    """Every instrument shows exactly what ``stats()`` says."""
    for name, (key, attribute) in INSTRUMENTS.items():
        expected = {((attribute, label),): count for label, count in stats[key].items()}
        assert points.get(name, {}) == expected, name


def test_counters_as_metrics(mixpanel: LocalMixpanel) -> None:
    """After three events (one with a NaN property), a profile update and one 503
    retried, the metrics carry sent{kind=events}=3, sent{kind=profile_updates}=1,
    dropped{reason=non_finite_number}=1, retried{kind=events}=3 and nothing
    waiting, and agree with stats() for every instrument."""
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    exporter = MixpanelSpanExporter(
        token=mixpanel.token, api_host=mixpanel.url, timeout=5, retry_policy=FAST,
        meter_provider=meter_provider,
    )
    try:
        mixpanel.fail_next(1, status=503, endpoint="/import")
        spans = finished_spans(
            {"mixpanel.event": "A", "mixpanel.distinct_id": "u"},
            {"mixpanel.event": "B", "mixpanel.distinct_id": "u",
             "mixpanel.properties.ratio": float("nan")},
            {"mixpanel.event": "C", "mixpanel.distinct_id": "u",
             "mixpanel.people.set.plan": "pro"},
        )
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert exporter.force_flush(10_000)  # export returned at the 503: records waited
        statuses = [r.status for r in mixpanel.requests]
        assert statuses[0] == 503 and set(statuses[1:]) == {200}
        assert sorted(e["event"] for e in mixpanel.events) == ["A", "B", "C"]

        points = collect(reader)
        assert points["otel_mixpanel.records.sent"] == {
            (("kind", "events"),): 3, (("kind", "profile_updates"),): 1,
        }
        assert points["otel_mixpanel.records.dropped"] == {
            (("reason", "non_finite_number"),): 1,
        }
        assert points["otel_mixpanel.records.retried"] == {(("kind", "events"),): 3}
        assert points[WAITING] == {(("measure", "records"),): 0, (("measure", "bytes"),): 0}
        agree(points, exporter.stats())
    finally:
        exporter.shutdown()
        meter_provider.shutdown()


def test_metrics_follow_later_exports(mixpanel: LocalMixpanel) -> None:
    """Counters are cumulative: a second collection after more exports shows the
    new totals, still equal to stats()."""
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    exporter = MixpanelSpanExporter(
        token=mixpanel.token, api_host=mixpanel.url, meter_provider=meter_provider,
    )
    try:
        exporter.export(finished_spans({"mixpanel.event": "A"}))
        first = collect(reader)
        assert first["otel_mixpanel.records.sent"] == {(("kind", "events"),): 1}
        exporter.export(finished_spans(
            {"mixpanel.event": "B", "mixpanel.properties.s": "x" * 300},
            {"mixpanel.event": "C"},
        ))
        second = collect(reader)
        assert second["otel_mixpanel.records.sent"] == {(("kind", "events"),): 3}
        assert second["otel_mixpanel.records.adjusted"] == {
            (("reason", "string_truncated"),): 1,
        }
        assert exporter.stats()["sent"] == {"events": 3}
        agree(second, exporter.stats())
    finally:
        exporter.shutdown()
        meter_provider.shutdown()


def test_waiting_then_undelivered_as_metrics(mixpanel: LocalMixpanel) -> None:
    """While Mixpanel keeps failing, the waiting gauge shows the record queued
    and the retries count up; shutdown during the outage moves it to
    dropped{reason=undelivered_at_shutdown}, and every instrument agrees with
    stats()."""
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    exporter = MixpanelSpanExporter(
        token=mixpanel.token, api_host=mixpanel.url, timeout=5, retry_policy=FAST,
        shutdown_timeout=0.2, meter_provider=meter_provider,
    )
    try:
        mixpanel.fail_next(100_000, status=503)
        assert exporter.export(finished_spans({"mixpanel.event": "E"})) is (
            SpanExportResult.SUCCESS
        )
        assert until(lambda: exporter.stats()["retried"].get("events", 0) >= 2)
        during = collect(reader)
        assert during[WAITING][(("measure", "records"),)] == 1
        assert during[WAITING][(("measure", "bytes"),)] > 0
        assert during["otel_mixpanel.records.retried"][(("kind", "events"),)] >= 2
        assert "otel_mixpanel.records.dropped" not in during
        assert "otel_mixpanel.records.sent" not in during
    finally:
        exporter.shutdown()
    try:
        after = collect(reader)
        assert after["otel_mixpanel.records.dropped"] == {
            (("reason", "undelivered_at_shutdown"),): 1,
        }
        assert after[WAITING] == {(("measure", "records"),): 0, (("measure", "bytes"),): 0}
        assert "otel_mixpanel.records.sent" not in after
        agree(after, exporter.stats())  # the sender has stopped: the numbers hold still
    finally:
        meter_provider.shutdown()
