"""The exporter's counters as OpenTelemetry metrics, read by an
InMemoryMetricReader after real exports to the local Mixpanel."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Sum
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_mixpanel import MixpanelSpanExporter, RetryPolicy
from otel_mixpanel.testing import LocalMixpanel

FAST = RetryPolicy(initial=0.01, maximum=0.02, jitter=(0, 0))
# instrument name -> (stats key, attribute name)
INSTRUMENTS = {
    "otel_mixpanel.records.sent": ("sent", "kind"),
    "otel_mixpanel.records.retried": ("retried", "kind"),
    "otel_mixpanel.records.spooled": ("spooled", "kind"),
    "otel_mixpanel.records.dropped": ("dropped", "reason"),
    "otel_mixpanel.records.adjusted": ("adjusted", "reason"),
}

Points = Dict[str, Dict[Tuple[Tuple[str, Any], ...], int]]


def finished_spans(*attribute_sets: Mapping[str, Any]) -> List[ReadableSpan]:
    """Real ReadableSpans, one per attribute set."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("metrics")
    for attributes in attribute_sets:
        with tracer.start_as_current_span("op", attributes=dict(attributes)):
            pass
    provider.shutdown()
    return list(memory.get_finished_spans())


def collect(reader: InMemoryMetricReader) -> Points:
    """Every data point: instrument name -> attributes -> value."""
    points: Points = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            assert scope_metrics.scope.name == "otel_mixpanel"
            for metric in scope_metrics.metrics:
                assert isinstance(metric.data, Sum) and metric.data.is_monotonic
                assert metric.unit == "{record}"
                for point in metric.data.data_points:
                    key = tuple(sorted((point.attributes or {}).items()))
                    points.setdefault(metric.name, {})[key] = int(point.value)
    return points


def test_counters_as_metrics(mixpanel: LocalMixpanel) -> None:
    """After three events (one with a NaN property), a profile update and one 503
    retried, the metrics carry sent{kind=events}=3, sent{kind=profile_updates}=1,
    dropped{reason=non_finite_number}=1 and retried{kind=events}=3, and agree with
    stats() for every counter."""
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    try:
        exporter = MixpanelSpanExporter(
            token=mixpanel.token, api_host=mixpanel.url, timeout=5, retry_policy=FAST,
            meter_provider=meter_provider,
        )
        mixpanel.fail_next(1, status=503, endpoint="/import")
        spans = finished_spans(
            {"mixpanel.event": "A", "mixpanel.distinct_id": "u"},
            {"mixpanel.event": "B", "mixpanel.distinct_id": "u",
             "mixpanel.properties.ratio": float("nan")},
            {"mixpanel.event": "C", "mixpanel.distinct_id": "u",
             "mixpanel.people.set.plan": "pro"},
        )
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert [r.status for r in mixpanel.requests] == [503, 200, 200]
        assert sorted(e["event"] for e in mixpanel.events) == ["A", "B", "C"]

        points = collect(reader)
        assert points["otel_mixpanel.records.sent"] == {
            (("kind", "events"),): 3, (("kind", "profile_updates"),): 1,
        }
        assert points["otel_mixpanel.records.dropped"] == {
            (("reason", "non_finite_number"),): 1,
        }
        assert points["otel_mixpanel.records.retried"] == {(("kind", "events"),): 3}

        stats = exporter.stats()
        for name, (key, attribute) in INSTRUMENTS.items():
            expected = {((attribute, label),): count for label, count in stats[key].items()}
            assert points.get(name, {}) == expected, name
    finally:
        meter_provider.shutdown()


def test_metrics_follow_later_exports(mixpanel: LocalMixpanel) -> None:
    """Counters are cumulative: a second collection after more exports shows the
    new totals, still equal to stats()."""
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    try:
        exporter = MixpanelSpanExporter(
            token=mixpanel.token, api_host=mixpanel.url, meter_provider=meter_provider,
        )
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
    finally:
        meter_provider.shutdown()


def test_undelivered_as_metric(mixpanel: LocalMixpanel) -> None:
    """When Mixpanel stays unavailable past the deadline, dropped{reason=undelivered}
    and the retries show up as metrics too."""
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    try:
        exporter = MixpanelSpanExporter(
            token=mixpanel.token, api_host=mixpanel.url, timeout=0.3, retry_policy=FAST,
            meter_provider=meter_provider,
        )
        mixpanel.fail_next(1000, status=503)
        assert exporter.export(finished_spans({"mixpanel.event": "E"})) is (
            SpanExportResult.FAILURE
        )
        points = collect(reader)
        assert points["otel_mixpanel.records.dropped"] == {(("reason", "undelivered"),): 1}
        retried = points["otel_mixpanel.records.retried"][(("kind", "events"),)]
        assert retried >= 1 and retried == exporter.stats()["retried"]["events"]
        assert "otel_mixpanel.records.sent" not in points
    finally:
        meter_provider.shutdown()
