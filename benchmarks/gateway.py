"""The OTLP gateway's throughput, one process and two, and its memory under overload.

    .venv/bin/python benchmarks/gateway.py [--spans 60000]

A LocalMixpanel runs in another process; the gateways are real
``otel-mixpanel gateway`` processes; two load processes post ready-made OTLP
protobuf requests (500 tagged spans each, 10 properties) round-robin over the
gateways. Printed: spans/s accepted and delivered end to end, the ratio of two
gateways to one and of one gateway to the in-process exporter (the baseline,
same spans, same sink), and, with Mixpanel answering slowly, the gateways'
peak memory, their 503 answers and whether every span still arrived.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

from benchmarks.run import TAGGED, Child, _local_main  # noqa: E402
from otel_mixpanel import configure  # noqa: E402

BATCH = 500


def spans_body(first: int, count: int) -> bytes:
    """One ExportTraceServiceRequest of *count* tagged spans, numbered from *first*."""

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("bench")
    for i in range(first, first + count):
        with tracer.start_as_current_span("op", attributes={
                "mixpanel.event": "Bench", "mixpanel.distinct_id": f"u{i % 1000}",
                "mixpanel.insert_id": f"bench-{i}", **TAGGED}):
            pass
    provider.shutdown()
    return bytes(encode_spans(memory.get_finished_spans()).SerializeToString())


def _load(urls: List[str], bodies: List[bytes], result: Any) -> None:
    """Post every body (retrying 503s after Retry-After); report 503s seen."""
    busy = 0
    with requests.Session() as session:
        for n, body in enumerate(bodies):
            url = urls[n % len(urls)]
            while True:
                answer = session.post(f"{url}/v1/traces", data=body, timeout=60,
                                      headers={"Content-Type": "application/x-protobuf"})
                if answer.status_code == 200:
                    break
                busy += 1
                time.sleep(float(answer.headers.get("Retry-After", "1")))
    result.put(busy)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_gateways(count: int, mixpanel: Tuple[str, str], **env: str) -> List[Tuple[Any, str]]:
    url, token = mixpanel
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    environ.update(OTEL_EXPORTER_MIXPANEL_TOKEN=token, OTEL_EXPORTER_MIXPANEL_API_HOST=url, **env)
    started = []
    for _ in range(count):
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "otel_mixpanel.cli", "gateway", "--port", str(port)],
            env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        started.append((process, f"http://127.0.0.1:{port}"))
    for process, gateway in started:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{gateway}/health", timeout=1).ok:
                    break
            except requests.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"gateway did not start: {process.stderr}") from None
                time.sleep(0.05)
    return started


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(gateways: int, bodies: List[bytes], spans: int, slow: float = 0.0,
        **env: str) -> Dict[str, Any]:
    sink = Child(_local_main)
    sink.ask("latency", slow)
    started = start_gateways(gateways, sink.hello, **env)
    urls = [url for _, url in started]
    results: Any = multiprocessing.Queue()
    halves = [bodies[0::2], bodies[1::2]]
    begin = time.perf_counter()
    loaders = [multiprocessing.Process(target=_load, args=(urls, half, results)) for half in halves]
    for loader in loaders:
        loader.start()
    busy = sum(results.get(timeout=600) for _ in loaders)
    accepted = time.perf_counter() - begin
    for loader in loaders:
        loader.join()
    if slow:
        sink.ask("latency", 0.0)
    deadline = time.monotonic() + 600
    while sink.ask("count") < spans and time.monotonic() < deadline:
        time.sleep(0.05)
    delivered = time.perf_counter() - begin
    arrived = sink.ask("count")
    peaks = [peak_rss_mib(process.pid) for process, _ in started]
    for process, _ in started:
        process.terminate()
        process.wait(timeout=60)
    sink.ask("stop")
    return {"accepted_per_s": spans / accepted, "delivered_per_s": spans / delivered,
            "arrived": arrived, "busy": busy, "peak_rss_mib": max(peaks)}


def in_process_baseline(spans: int) -> float:
    """The in-process exporter's end-to-end spans/s to the same kind of sink."""

    sink = Child(_local_main)
    url, token = sink.hello
    provider = TracerProvider()
    pipeline = configure(token=token, api_host=url, tracer_provider=provider)
    tracer = provider.get_tracer("bench")
    begin = time.perf_counter()
    for i in range(spans):
        with tracer.start_as_current_span("op", attributes={
                "mixpanel.event": "Bench", "mixpanel.distinct_id": f"u{i % 1000}",
                "mixpanel.insert_id": f"base-{i}", **TAGGED}):
            pass
    pipeline.force_flush(600_000)
    while sink.ask("count") < spans:
        time.sleep(0.05)
    elapsed = time.perf_counter() - begin
    pipeline.shutdown()
    sink.ask("stop")
    return spans / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=60_000)
    args = parser.parse_args()
    spans = args.spans - args.spans % BATCH
    bodies = [spans_body(i, BATCH) for i in range(0, spans, BATCH)]
    print(f"{spans} tagged spans in {len(bodies)} OTLP requests of {BATCH}; "
          f"{os.cpu_count()} cores; Python {sys.version.split()[0]}")
    baseline = in_process_baseline(spans)
    one = run(1, bodies, spans)
    two = run(2, bodies, spans)
    overload = run(1, bodies, spans, slow=0.2, OTEL_EXPORTER_MIXPANEL_QUEUE_MAX_BYTES=str(2**20))
    print(f"{'':28} {'accepted/s':>12} {'delivered/s':>12} {'arrived':>8} {'503s':>6} "
          f"{'peak MiB':>9}")
    for name, row in (("1 gateway", one), ("2 gateways", two),
                      ("1 gateway, slow Mixpanel", overload)):
        print(f"{name:28} {row['accepted_per_s']:12.0f} {row['delivered_per_s']:12.0f} "
              f"{row['arrived']:8d} {row['busy']:6d} {row['peak_rss_mib']:9.1f}")
    print(f"in-process exporter (baseline): {baseline:.0f} spans/s delivered")
    print(f"ratios: 2 gateways / 1 = {two['delivered_per_s'] / one['delivered_per_s']:.2f}; "
          f"1 gateway / in-process = {one['delivered_per_s'] / baseline:.2f}")


if __name__ == "__main__":
    main()
