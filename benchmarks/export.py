"""Cost of MixpanelSpanExporter.export() per tagged span, to a local Mixpanel.

    python benchmarks/export.py [--spans 20000] [--batch 512]

The local Mixpanel runs in another process, so its parsing does not share our
GIL. Printed: µs per event with gzip and without, and a baseline measured in
the same run (``json.dumps`` of the same records) as a ratio, with the machine's
description. No target is asserted: this makes the cost visible.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import time
from typing import Any, Dict, List, Union

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_mixpanel import MixpanelSpanExporter
from otel_mixpanel.testing import LocalMixpanel

PROPERTIES: Dict[str, Union[str, bool, int, float]] = {
    "plan": "pro", "seats": 12, "price": 29.99, "currency": "EUR", "coupon": "WELCOME10",
    "trial": False, "source": "landing-page", "campaign": "autumn-2026", "country": "DE",
    "referrer": "https://example.com/blog/analytics",
}


def serve(queue: multiprocessing.Queue[Any], stop: Any) -> None:
    """Run a local Mixpanel in this (child) process until told to stop."""
    with LocalMixpanel(max_records=2000) as server:
        queue.put((server.url, server.token))
        stop.wait()


def tagged_spans(count: int) -> List[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("bench")
    for i in range(count):
        with tracer.start_as_current_span("checkout") as span:
            span.set_attribute("mixpanel.event", "Purchased")
            span.set_attribute("mixpanel.distinct_id", f"user-{i % 1000}")
            for name, value in PROPERTIES.items():
                span.set_attribute(f"mixpanel.properties.{name}", value)
    provider.shutdown()
    return list(memory.get_finished_spans())


def time_export(exporter: MixpanelSpanExporter, spans: List[ReadableSpan], batch: int) -> float:
    start = time.perf_counter()
    for offset in range(0, len(spans), batch):
        exporter.export(spans[offset : offset + batch])
    return (time.perf_counter() - start) / len(spans) * 1e6


def time_json_baseline(spans: List[ReadableSpan]) -> float:
    records: List[Dict[str, Any]] = [
        {"event": "Purchased", "properties": dict(span.attributes or {})} for span in spans
    ]
    start = time.perf_counter()
    for record in records:
        json.dumps(record, separators=(",", ":")).encode()
    return (time.perf_counter() - start) / len(records) * 1e6


def describe_machine() -> str:
    return (
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=512)
    args = parser.parse_args()

    queue: multiprocessing.Queue[Any] = multiprocessing.Queue()
    stop = multiprocessing.Event()
    server = multiprocessing.Process(target=serve, args=(queue, stop), daemon=True)
    server.start()
    try:
        url, token = queue.get(timeout=30)
        spans = tagged_spans(args.spans)
        baseline = time_json_baseline(spans)
        rows = []
        for compression in ("gzip", "none"):
            exporter = MixpanelSpanExporter(token=token, api_host=url, compression=compression)
            time_export(exporter, spans[: args.batch], args.batch)  # warm up the connection
            cost = time_export(exporter, spans, args.batch)
            rows.append((f"export() to local Mixpanel, {compression}", cost))
            exporter.shutdown()
    finally:
        stop.set()
        server.join(timeout=10)

    print(f"machine: {describe_machine()}")
    print(f"{args.spans} tagged spans (10 properties each), export batches of {args.batch}\n")
    print(f"{'measure':<42} {'µs/event':>9} {'x json.dumps':>13}")
    print(f"{'baseline: json.dumps of the attributes':<42} {baseline:>9.2f} {1.0:>13.1f}")
    for name, cost in rows:
        print(f"{name:<42} {cost:>9.2f} {cost / baseline:>13.1f}")


if __name__ == "__main__":
    main()
