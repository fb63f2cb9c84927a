"""The performance table: our pipeline and the peer SDKs, side by side, in one run.

    python benchmarks/run.py [--quick] [--no-write]

Every figure is measured in this run, and every ratio is against a baseline
measured in this run (the machine is shared and noisy: compare ratios, not
absolute figures between runs). The local Mixpanel and the peers' sink run in
other processes, so their parsing never shares our GIL. The table is printed
and written into docs/performance.md between the ``perf-table`` markers.
Peers are optional: ``pip install mixpanel segment-analytics-python posthog``
(a missing one is reported as such). Needs no network beyond loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import gzip
import json
import logging
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a fresh clone
    sys.path.insert(0, str(ROOT))

from opentelemetry.sdk._logs import LoggerProvider  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import (  # noqa: E402
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

import otel_mixpanel  # noqa: E402
from otel_mixpanel import (  # noqa: E402
    MixpanelIdentitySpanProcessor,
    MixpanelSpanExporter,
    autoconfigure,
)
from otel_mixpanel._convention._translate import translate  # noqa: E402
from otel_mixpanel._inputs import _intake  # noqa: E402
from otel_mixpanel._queue import _batch, _client  # noqa: E402
from otel_mixpanel._queue._transport import HTTPResponse, RequestsTransport, Transport  # noqa: E402

PROPERTIES: Dict[str, Any] = {
    "plan": "pro", "seats": 12, "price": 29.99, "currency": "EUR", "coupon": "WELCOME10",
    "trial": False, "source": "landing-page", "campaign": "autumn-2026", "country": "DE",
    "referrer": "https://example.com/blog/analytics",
}
TAGGED = {f"mixpanel.properties.{k}": v for k, v in PROPERTIES.items()}
BURST = 20_000
DOC = ROOT / "docs" / "performance.md"
START, END = "<!-- perf-table -->", "<!-- /perf-table -->"


# ---------------------------------------------------------------- servers (other processes)


def _local_main(conn: Connection) -> None:
    """A LocalMixpanel answering commands: count, latency, stop."""
    from otel_mixpanel.testing import LocalMixpanel  # noqa: PLC0415

    with LocalMixpanel(max_records=2000) as server:
        conn.send((server.url, server.token))
        while True:
            command, argument = conn.recv()
            if command == "count":
                conn.send(len(server._events))
            elif command == "latency":
                server.latency = float(argument)
                conn.send(True)
            elif command == "clear":
                server.clear()
                conn.send(True)
            else:
                conn.send(True)
                return


class Child:
    """A server in another process, spoken to over a pipe."""

    def __init__(self, target: Callable[[Connection], None]) -> None:
        self.conn, child = multiprocessing.Pipe()
        self.process = multiprocessing.Process(target=target, args=(child,), daemon=True)
        self.process.start()
        self.hello = self.conn.recv()

    def ask(self, command: str, argument: Any = None) -> Any:
        self.conn.send((command, argument))
        return self.conn.recv()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("stop", None))
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.terminate()


# ---------------------------------------------------------------- helpers


class NoopSpanExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class NoopMixpanelExporter(MixpanelSpanExporter):
    """Our exporter's type (so our processors accept it), exporting nothing."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def _submit(self, messages: Any, *, wait: bool = True) -> bool:  # the buffer calls it
        return True

    def _records_of(self, kept: Any) -> Any:  # nothing read, nothing for the helper process
        return iter(())

    def _messages(self, records: Any) -> Any:
        return []


class NullTransport(Transport):
    """Answers every /import like Mixpanel, without a network: worker CPU only."""

    def post(
        self, url: str, body: bytes, headers: Any, timeout: float
    ) -> HTTPResponse:
        raw = gzip.decompress(body) if headers.get("Content-Encoding") == "gzip" else body
        count = raw.count(b'{"event":')
        return HTTPResponse(200, b'{"code":200,"num_records_imported":%d,"status":"OK"}' % count)


def emit_tagged(tracer: Any, i: int, properties: Optional[Dict[str, Any]] = None) -> None:
    with tracer.start_as_current_span("checkout") as span:
        span.set_attribute("mixpanel.event", "Purchased")
        span.set_attribute("mixpanel.distinct_id", f"user-{i % 1000}")
        for name, value in (properties if properties is not None else TAGGED).items():
            span.set_attribute(name, value)


def emit_bare(tracer: Any, i: int) -> None:
    with tracer.start_as_current_span("checkout") as span:
        for name, value in PROPERTIES.items():
            span.set_attribute(name, value)


def per_event(action: Callable[[int], Any], count: int) -> Tuple[float, float]:
    """(wall µs, caller-thread CPU µs) per call of *action*."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.thread_time()
    for i in range(count):
        action(i)
    return (
        (time.perf_counter() - wall) / count * 1e6,
        (time.thread_time() - cpu) / count * 1e6,
    )


def finished_spans(count: int, properties: Optional[Dict[str, Any]] = None, *,
                   tagged: bool = True) -> List[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "bench"}),
        span_limits=SpanLimits(max_span_attributes=512),
    )
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("bench")
    for i in range(count):
        (emit_tagged(tracer, i, properties) if tagged else emit_bare(tracer, i))
    provider.shutdown()
    return list(memory.get_finished_spans())


def best(repeats: int, measure: Callable[[], float]) -> float:
    """The least of *repeats* measurements: the noise on a shared machine only adds."""
    return min(measure() for _ in range(repeats))


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, "
        f"load average {load:.2f} at start; orjson "
        f"{'installed' if _batch._orjson is not None else 'absent'}; "
        f"gzip level {_client.GZIP_LEVEL}"
    )


def wait_for(local: Child, target: int, timeout: float = 60) -> int:
    end = time.monotonic() + timeout
    count = local.ask("count")
    while count < target and time.monotonic() < end:
        time.sleep(0.05)
        count = local.ask("count")
    return int(count)


def providers() -> Tuple[TracerProvider, LoggerProvider]:
    resource_ = Resource.create({"service.name": "bench"})
    return TracerProvider(resource=resource_), LoggerProvider(resource=resource_)


# ---------------------------------------------------------------- 1. caller cost


Row = Tuple[str, float, float, str]


def caller_costs(local: Child, n: int, rounds: int = 3) -> List[Row]:
    url, token = local.hello
    rows: List[Tuple[str, float, float, str]] = []

    # The baseline (the SDK alone, a no-op exporter), a tagged span through it,
    # and our span processors alone (identity + the ordered batch buffer) with a
    # no-op export: what the target "our processors add at most 5 %" is about, a
    # small difference on a noisy machine. So the three are timed in rounds, in
    # turn, each keeping its run with the least CPU.
    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_span_processor(BatchSpanProcessor(NoopSpanExporter()))
    tracer = provider.get_tracer("bench")
    ours = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    ours.add_span_processor(MixpanelIdentitySpanProcessor())
    noop = NoopMixpanelExporter(token=token, api_host=url)
    ours.add_span_processor(_intake.OrderedSpanProcessor(
        noop, max_queue_size=_intake.DEFAULT_MAX_QUEUE_SIZE,
    ))
    paths: List[Tuple[str, Callable[[int], Any], str]] = [
        ("OTel span + 10 attributes, BatchSpanProcessor, no-op exporter",
         lambda i: emit_bare(tracer, i), "baseline"),
        ("tagged span (12 mixpanel.* attributes), same no-op pipeline",
         lambda i: emit_tagged(tracer, i), "tagged baseline"),
        ("tagged span, configure()'s processors, no-op export",
         functools.partial(emit_tagged, ours.get_tracer("bench")), "our processors"),
    ]
    measured: List[List[Tuple[float, float]]] = [[] for _ in paths]
    for _, action, _ in paths:
        per_event(action, 2000)
    for _ in range(rounds):
        for (_, action, _), runs in zip(paths, measured):
            runs.append(per_event(action, n))
    for (name, _, note), runs in zip(paths, measured):
        wall, cpu = min(runs, key=lambda run: run[1])
        rows.append((name, wall, cpu, note))
    provider.shutdown()
    ours.shutdown()

    # Ours: configure()'s processors, our exporter, LocalMixpanel in another process.
    tracer_provider, logger_provider = providers()
    pipeline = otel_mixpanel.configure(
        tracer_provider=tracer_provider, logger_provider=logger_provider,
        token=token, api_host=url,
    )
    tracer = tracer_provider.get_tracer("bench")
    per_event(lambda i: emit_tagged(tracer, i), 2000)
    pipeline.force_flush(30_000)
    wall, cpu = per_event(lambda i: emit_tagged(tracer, i), n)
    pipeline.force_flush(30_000)
    rows.append(("tagged span, configure() → our exporter → local Mixpanel", wall, cpu, "ours"))
    pipeline.shutdown(30_000)

    # structlog and stdlib logging, through configure(structlog=True, logging=True).
    import structlog  # noqa: PLC0415

    structlog.configure(
        processors=[structlog.processors.JSONRenderer()],
        logger_factory=structlog.ReturnLoggerFactory(),
    )
    tracer_provider, logger_provider = providers()
    pipeline = otel_mixpanel.configure(
        tracer_provider=tracer_provider, logger_provider=logger_provider,
        structlog=True, logging=True, token=token, api_host=url,
    )
    log = structlog.get_logger("bench")

    def structlog_event(i: int) -> None:
        log.info("paid", mixpanel_event="Purchased", mixpanel_distinct_id=f"user-{i % 1000}",
                 mixpanel_properties=PROPERTIES)

    per_event(structlog_event, 2000)
    pipeline.force_flush(30_000)
    wall, cpu = per_event(structlog_event, n)
    pipeline.force_flush(30_000)
    rows.append(("structlog event, configure(structlog=True) → local Mixpanel", wall, cpu,
                 "ours"))
    stdlib = logging.getLogger("bench.shop")

    def log_record(i: int) -> None:
        extra = {"mixpanel.event": "Purchased", "mixpanel.distinct_id": f"user-{i % 1000}"}
        extra.update(TAGGED)
        stdlib.warning("paid", extra=extra)

    per_event(log_record, 2000)
    pipeline.force_flush(30_000)
    wall, cpu = per_event(log_record, n)
    pipeline.force_flush(30_000)
    rows.append(("stdlib log record, configure(logging=True) → local Mixpanel", wall, cpu,
                 "ours"))
    pipeline.shutdown(30_000)
    structlog.reset_defaults()
    return rows


# ---------------------------------------------------------------- 2. worker cost


def _compress_all(bodies: List[bytes], level: int) -> List[bytes]:
    return [gzip.compress(body, level) for body in bodies]


def worker_costs(local: Child, n: int, repeats: int) -> Dict[str, float]:
    """µs per event of each stage, the floor among them. The stages are timed
    in rounds (each round times every stage once, in turn) and each keeps its
    best: a machine that gets busier during the run weighs on every stage and
    on the floor alike, so their ratio holds."""
    url, token = local.hello
    spans = finished_spans(n)
    exporter = MixpanelSpanExporter(token=token, api_host=url, transport=NullTransport())
    stats = exporter._stats

    records = list(exporter._records(spans))
    messages = [m for r in records for m in translate(r, stats)]
    limited = exporter._queue._limits.apply(messages)
    bodies = [b.body() for b in _batch.make_batches(limited, token, stats)]
    raw = sum(map(len, bodies))
    compressed = [gzip.compress(b, _client.GZIP_LEVEL) for b in bodies]
    payloads = [m.payload(token) for m in limited]
    transport = RequestsTransport()
    headers = dict(exporter._queue._client._import_headers)
    transport.post(f"{url}/import?strict=1", compressed[0], headers, 30)
    untagged = finished_spans(n, tagged=False)
    stages: Dict[str, Callable[[], Any]] = {
        "translate": lambda: [m for r in exporter._records(spans) for m in translate(r, stats)],
        "limits": lambda: exporter._queue._limits.apply(messages),
        "serialise": lambda: _batch.make_batches(limited, token, stats),
        "compress": lambda: [gzip.compress(b, _client.GZIP_LEVEL) for b in bodies],
        **{f"gzip level {level}": functools.partial(_compress_all, bodies, level)
           for level in (1, 6, 9)},
        "send": lambda: [transport.post(f"{url}/import?strict=1", b, headers, 30)
                         for b in compressed],
        "floor json": lambda: [json.dumps(p, ensure_ascii=False, separators=(",", ":")).encode()
                               for p in payloads],
    }
    out: Dict[str, float] = {name: float("inf") for name in stages}
    for _ in range(repeats):
        for name, action in stages.items():
            start = time.perf_counter()
            action()
            out[name] = min(out[name], (time.perf_counter() - start) / n * 1e6)
    # Compared with no other row: each timed on its own, its runs in a row (an
    # untagged span's 0.4 µs doubles when other stages ran just before it).
    for name, action in (
        ("export() total, no network",
         lambda: [exporter.export(spans[o:o + 1000]) for o in range(0, n, 1000)]),
        ("untagged span", lambda: exporter.export(untagged)),
    ):
        for _ in range(repeats):
            start = time.perf_counter()
            action()
            out[name] = min(out.get(name, float("inf")), (time.perf_counter() - start) / n * 1e6)
    transport.close()
    for level in (1, 6, 9):
        out[f"gzip level {level} ratio"] = sum(len(gzip.compress(b, level)) for b in bodies) / raw
    out["floor"] = out["floor json"] + out["compress"]
    exporter.shutdown()
    return out


# ---------------------------------------------------------------- 3. bursts, throughput


def burst(local: Child, how: str) -> Tuple[int, int, int]:
    """(offered, delivered, counted in stats) for a burst of BURST tagged spans."""
    url, token = local.hello
    local.ask("clear")
    tracer_provider, logger_provider = providers()
    counted = 0
    if how == "configure":
        pipeline = otel_mixpanel.configure(
            tracer_provider=tracer_provider, logger_provider=logger_provider,
            token=token, api_host=url,
        )
    else:
        exporter = MixpanelSpanExporter(token=token, api_host=url)
        tracer_provider.add_span_processor(MixpanelIdentitySpanProcessor())
        if how == "zero-code":  # what our configurator gives opentelemetry-instrument
            tracer_provider.add_span_processor(autoconfigure._span_processor(exporter))
        else:  # a pipeline built by hand with the SDK's default processor
            tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = tracer_provider.get_tracer("bench")
    sdk_logger = logging.getLogger("opentelemetry.sdk._shared_internal")
    level = sdk_logger.level
    sdk_logger.setLevel(logging.ERROR)  # its "Queue full" line, once per dropped span
    try:
        per_event(lambda i: emit_tagged(tracer, i), BURST)
    finally:
        sdk_logger.setLevel(level)
    tracer_provider.force_flush(60_000)
    delivered = local.ask("count")
    if how == "configure":
        counted = pipeline.stats()["dropped"].get(_intake.QUEUE_FULL, 0)
        pipeline.shutdown(30_000)
    else:
        counted = exporter.stats()["dropped"].get(_intake.QUEUE_FULL, 0)
    tracer_provider.shutdown()
    return BURST, int(delivered), counted


def throughput(local: Child, n: int, *, noop: bool = False, latency: float = 0.0) -> float:
    """End-to-end events/s: first span started → last event accepted."""
    url, token = local.hello
    local.ask("clear")
    local.ask("latency", latency)
    tracer_provider, logger_provider = providers()
    if noop:
        tracer_provider.add_span_processor(MixpanelIdentitySpanProcessor())
        tracer_provider.add_span_processor(BatchSpanProcessor(
            NoopSpanExporter(), max_queue_size=_intake.DEFAULT_MAX_QUEUE_SIZE,
            max_export_batch_size=_intake.DEFAULT_MAX_EXPORT_BATCH_SIZE,
            schedule_delay_millis=_intake.DEFAULT_SCHEDULE_DELAY_MILLIS,
        ))
    else:
        pipeline = otel_mixpanel.configure(
            tracer_provider=tracer_provider, logger_provider=logger_provider,
            token=token, api_host=url,
        )
    tracer = tracer_provider.get_tracer("bench")
    gc.collect()
    start = time.perf_counter()
    for i in range(n):
        emit_tagged(tracer, i)
    tracer_provider.force_flush(120_000)
    delivered = n if noop else wait_for(local, n)
    elapsed = time.perf_counter() - start
    if not noop:
        pipeline.shutdown(30_000)
    tracer_provider.shutdown()
    local.ask("latency", 0.0)
    return delivered / elapsed


# ---------------------------------------------------------------- 4. growth


def growth(local: Child, quick: bool) -> Dict[str, float]:
    url, token = local.hello
    out: Dict[str, float] = {}
    spans = finished_spans(2000 if quick else 4000)
    for size in (1, 10, 100, 512, 2000):
        count = min(len(spans), size * 200) if size < 100 else len(spans)
        exporter = MixpanelSpanExporter(token=token, api_host=url)
        exporter.export(spans[:size])
        start = time.perf_counter()
        for offset in range(0, count, size):
            exporter.export(spans[offset:offset + size])
        out[f"batch {size}"] = (time.perf_counter() - start) / count * 1e6
        null = MixpanelSpanExporter(token=token, api_host=url, transport=NullTransport())

        def cpu(s: int = size, c: int = count, e: MixpanelSpanExporter = null) -> float:
            begin = time.perf_counter()
            for offset in range(0, c, s):
                e.export(spans[offset:offset + s])
            return (time.perf_counter() - begin) / c * 1e6

        out[f"batch {size} cpu"] = best(3, cpu)
        exporter.shutdown()
        null.shutdown()
    for width in (1, 10, 100):
        props = {f"mixpanel.properties.p{k}": (f"value-{k}" if k % 2 else k) for k in range(width)}
        wide = finished_spans(1000, props)
        null = MixpanelSpanExporter(token=token, api_host=url, transport=NullTransport())

        def once(e: MixpanelSpanExporter = null, w: List[ReadableSpan] = wide) -> float:
            begin = time.perf_counter()
            e.export(w)
            return (time.perf_counter() - begin) / len(w) * 1e6

        out[f"props {width}"] = best(3, once)
        null.shutdown()
    return out


# ---------------------------------------------------------------- 5. memory during an outage


def outage_child(events: int) -> None:
    """Run in a subprocess: offer *events* tagged spans while Mixpanel is down."""
    import socket  # noqa: PLC0415

    with socket.socket() as probe:  # a port nobody listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    samples = []
    with tempfile.TemporaryDirectory() as spool:
        tracer_provider, logger_provider = providers()
        pipeline = otel_mixpanel.configure(
            tracer_provider=tracer_provider, logger_provider=logger_provider,
            token="t", api_host=f"http://127.0.0.1:{port}", timeout=1,
            spool_dir=spool, spool_max_bytes=16 * 1024 * 1024,
        )
        logging.getLogger("opentelemetry.sdk._shared_internal").setLevel(logging.ERROR)
        tracer = tracer_provider.get_tracer("bench")
        checkpoints = {events // 100, events // 10, events // 4, events // 2, events}
        start = time.perf_counter()
        for i in range(1, events + 1):
            emit_tagged(tracer, i)
            if i in checkpoints:
                with open("/proc/self/statm") as statm:
                    rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                samples.append((i, rss, peak))
        elapsed = time.perf_counter() - start
        stats = pipeline.stats()
        spool_bytes = sum(p.stat().st_size for p in Path(spool).rglob("*") if p.is_file())
        pipeline.shutdown(5_000)
    print(json.dumps({"samples": samples, "stats": stats, "spool_bytes": spool_bytes,
                      "seconds": elapsed}))


def outage(events: int) -> Dict[str, Any]:
    result = subprocess.run(
        [sys.executable, __file__, "--outage-child", str(events)],
        capture_output=True, text=True, check=True, timeout=600,
    )
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------- the table


def table(args: argparse.Namespace) -> str:
    from benchmarks.peers import side_by_side  # noqa: PLC0415 - it imports this module

    lines: List[str] = []
    add = lines.append
    add(f"Machine: {machine()}.\n")
    add(side_by_side(5_000 if args.quick else BURST, 1 if args.quick else 5))
    add("")
    local = Child(_local_main)
    try:
        n = 5_000 if args.quick else BURST
        callers = caller_costs(local, n)
        worker = worker_costs(local, 2000, 3 if args.quick else 9)
        bursts = {how: burst(local, how) for how in ("configure", "zero-code", "by-hand")}
        events = 10_000 if args.quick else BURST
        noop_rate = throughput(local, events, noop=True)
        rate = throughput(local, events)
        slow_rate = throughput(local, events, latency=0.020)
        grow = growth(local, args.quick)
    finally:
        local.stop()
    memory = outage(100_000 if args.quick else 1_000_000)

    base_wall, base_cpu = callers[0][1], callers[0][2]
    tagged_wall, tagged_cpu = callers[1][1], callers[1][2]
    add("**Caller thread, per event** (ratios against the first row; CPU = the calling "
        "thread's own CPU time, wall includes waiting for the GIL held by workers)\n")
    add("| pipeline | wall µs | ratio | caller CPU µs | ratio | note |")
    add("|---|---|---|---|---|---|")
    for name, wall, cpu, note in callers:
        add(f"| {name} | {wall:.1f} | {wall / base_wall:.2f} | {cpu:.1f} | "
            f"{cpu / base_cpu:.2f} | {note} |")
    processors, ours = callers[2], callers[3]
    share_cpu = (processors[2] / tagged_cpu - 1) * 100
    share_wall = (processors[1] / tagged_wall - 1) * 100
    add("")
    add(f"Our span processors' share of a tagged span's caller cost: CPU {share_cpu:+.1f} %, "
        f"wall {share_wall:+.1f} % (target ≤ 5 %). With our exporter translating and "
        f"sending in the same process, the caller's CPU rises "
        f"{(ours[2] / tagged_cpu - 1) * 100:+.1f} %: the worker and the caller share one "
        "GIL (see the worker and end-to-end rows).\n")
    add("**Worker, per tagged event** (best of several runs of 2000 spans)\n")
    add("| stage | µs/event |")
    add("|---|---|")
    for key in ("translate", "limits", "serialise", "compress", "send"):
        add(f"| {key} | {worker[key]:.2f} |")
    cpu_total = sum(worker[k] for k in ("translate", "limits", "serialise", "compress"))
    add(f"| **CPU total (translate … compress)** | **{cpu_total:.2f}** |")
    add(f"| floor: json.dumps + gzip level {_client.GZIP_LEVEL} of the same records | "
        f"{worker['floor']:.2f} |")
    add(f"| ratio to the floor (target ≤ 2) | {cpu_total / worker['floor']:.2f} |")
    add(f"| export() end to end without network (includes span reading) | "
        f"{worker['export() total, no network']:.2f} |")
    add(f"| untagged span, export() (target < 1 µs) | {worker['untagged span']:.3f} |")
    add("")
    add("gzip, µs/event and compressed/raw size: " + ", ".join(
        f"level {lv}: {worker[f'gzip level {lv}']:.2f} µs, "
        f"{worker[f'gzip level {lv} ratio']:.3f}" for lv in (1, 6, 9)) + ".\n")
    add(f"**Bursts of {BURST} tagged spans as fast as the caller can go**\n")
    add("| set-up | offered | delivered | lost | counted in stats() |")
    add("|---|---|---|---|---|")
    for how, label in (("configure", "configure() defaults (queue "
                        f"{_intake.DEFAULT_MAX_QUEUE_SIZE}, batch "
                        f"{_intake.DEFAULT_MAX_EXPORT_BATCH_SIZE}, "
                        f"{_intake.DEFAULT_SCHEDULE_DELAY_MILLIS} ms)"),
                       ("zero-code", "zero-code (opentelemetry-instrument, our configurator)"),
                       ("by-hand", "built by hand, SDK default processor (2048, 512, 5 s)")):
        offered, delivered, counted = bursts[how]
        counted_text = str(counted) if how != "by-hand" else "no (SDK logs \"Queue full\")"
        add(f"| {label} | {offered} | {delivered} | {offered - delivered} | {counted_text} |")
    add("")
    add(f"**End to end** ({events} tagged spans, first started → last accepted)\n")
    add("| pipeline | events/s | ratio |")
    add("|---|---|---|")
    add(f"| same processors, no-op exporter | {noop_rate:,.0f} | 1.00 |")
    add(f"| configure() → local Mixpanel | {rate:,.0f} | {rate / noop_rate:.2f} (target ≥ 0.80) |")
    add(f"| the same, 20 ms added server latency per request | {slow_rate:,.0f} | "
        f"{slow_rate / noop_rate:.2f} (target ≥ 10 000/s) |")
    add("")
    add("**Growth** (µs per event)\n")
    add("| export batch size | 1 | 10 | 100 | 512 | 2000 |")
    add("|---|---|---|---|---|---|")
    add("| export() to local Mixpanel | " + " | ".join(
        f"{grow[f'batch {s}']:.1f}" for s in (1, 10, 100, 512, 2000)) + " |")
    add("| worker CPU (no network) | " + " | ".join(
        f"{grow[f'batch {s} cpu']:.1f}" for s in (1, 10, 100, 512, 2000)) + " |")
    add("")
    add("| properties per event | 1 | 10 | 100 |")
    add("|---|---|---|---|")
    add("| worker CPU µs/event | " + " | ".join(
        f"{grow[f'props {w}']:.1f}" for w in (1, 10, 100)) + " |")
    add("| µs per property | " + " | ".join(
        f"{grow[f'props {w}'] / w:.2f}" for w in (1, 10, 100)) + " |")
    add("")
    offered_total = memory["samples"][-1][0]
    add(f"**Memory during an outage** ({offered_total:,} tagged spans offered, Mixpanel "
        f"refusing connections, spool 16 MiB, configure() defaults; took "
        f"{memory['seconds']:.0f} s)\n")
    add("| offered | RSS MiB | peak RSS MiB |")
    add("|---|---|---|")
    for count, rss, peak in memory["samples"]:
        add(f"| {count:,} | {rss / 2**20:.0f} | {peak / 2**20:.0f} |")
    stats = memory["stats"]
    add("")
    add(f"stats() after the outage: waiting {stats.get('waiting', {})}, dropped "
        f"{stats.get('dropped', {})}; spool on disk {memory['spool_bytes'] / 2**20:.1f} MiB.")
    return "\n".join(lines)


def write(text: str) -> None:
    doc = DOC.read_text(encoding="utf-8") if DOC.exists() else f"# Performance\n\n{START}\n{END}\n"
    head, _, rest = doc.partition(START)
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{START}\n{text}\n{END}{tail}", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, a rough table")
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/performance.md")
    parser.add_argument("--outage-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.outage_child:
        outage_child(args.outage_child)
        return
    started = time.perf_counter()
    text = table(args)
    print(text)
    print(f"\n({time.perf_counter() - started:.0f} s)")
    if not args.no_write and not args.quick:
        write(text)


if __name__ == "__main__":
    main()
