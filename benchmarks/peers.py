"""Side by side: the path a user takes with us and with each peer SDK, one table.

    python benchmarks/peers.py [--events N]     (benchmarks/run.py prints it first)

Every row sends the same burst (N events named ``Purchased``, 10 properties,
1 000 distinct users) as fast as the calling thread can go, to the same
counting sink in another process (so its parsing never shares our GIL), and
reports:

- the calling thread's wall time per call, and its ratio to an OpenTelemetry
  span with the same 10 attributes and a no-op exporter, measured in this run;
- end-to-end events/s: first call → the sink has counted the last event that
  arrives (it stops waiting 3 s after the count stops growing);
- how much of the burst was delivered.

Peers are benchmark-only extras (``pip install -e '.[bench]'``); a missing one
is reported as such. The sink answers each request as its SDK expects
(Mixpanel's ``/import`` and ``/engage`` answers for ours).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gzip
import http.server
import logging
import sys
import threading
import time
import zlib
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a fresh clone
    sys.path.insert(0, str(ROOT))

from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: E402

import otel_mixpanel  # noqa: E402
from benchmarks.run import (  # noqa: E402
    PROPERTIES,
    Child,
    NoopSpanExporter,
    emit_bare,
    emit_tagged,
    per_event,
    providers,
)
from otel_mixpanel._inputs import _intake  # noqa: E402

EVENT = b"Purchased"


def _counting_sink(conn: Connection) -> None:
    """HTTP/1.1 sink counting the events it receives (any SDK's body)."""
    count = [0]
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else headers, then body: 40 ms delayed ACK

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip" or body[:2] == b"\x1f\x8b":
                body = gzip.decompress(body)
            elif self.headers.get("Content-Encoding") == "deflate":
                body = zlib.decompress(body)
            events = body.count(EVENT)  # JSON or form-encoded: the name appears once an event
            with lock:
                count[0] += events
            if self.path.startswith(("/import", "/engage", "/groups")):  # Mixpanel's answers
                answer = b'{"code":200,"num_records_imported":%d,"status":"OK"}' % events
                if not self.path.startswith("/import"):
                    answer = b'{"error":null,"status":1}'
            else:
                answer = b'{"status":1}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        do_GET = do_POST

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    conn.send(f"http://127.0.0.1:{server.server_address[1]}")
    while True:
        command, _ = conn.recv()
        if command == "count":
            with lock:
                conn.send(count[0])
        elif command == "clear":
            with lock:
                count[0] = 0
            conn.send(True)
        else:
            conn.send(True)
            return


Row = Tuple[str, float, float, int, str]  # name, caller µs, events/s, delivered, note


def _arrived(sink: Child, target: int, started: float, patience: float = 3.0) -> Tuple[int, float]:
    """(events counted, seconds from *started* to the last one counted)."""
    count, last_change = sink.ask("count"), time.perf_counter()
    while count < target:
        time.sleep(0.01)
        now = sink.ask("count")
        if now != count:
            count, last_change = now, time.perf_counter()
        elif time.perf_counter() - last_change > patience:
            break
    return int(count), last_change - started


def _measure(sink: Child, n: int, name: str, call: Callable[[int], Any],
             finish: Callable[[], Any], note: str = "") -> Row:
    sink.ask("clear")
    started = time.perf_counter()
    wall, _ = per_event(call, n)
    finish()  # e.g. flush(): the SDK's own way to say "send what you hold"
    delivered, seconds = _arrived(sink, n, started)
    return name, wall, delivered / seconds if seconds > 0 else float("nan"), delivered, note


def best(rows: List[Row]) -> Row:
    """Several runs of one path: the least caller time and the most events/s
    (noise on a shared machine only adds time), the fewest delivered, and the
    note of the run that delivered fewest (its refusals, its drops)."""
    name, _, _, _, note = min(rows, key=lambda row: row[3])
    return (name, min(r[1] for r in rows), max(r[2] for r in rows), min(r[3] for r in rows),
            note)


def baseline(n: int) -> float:
    """Caller µs of an OTel span with the same 10 attributes, no-op exporter."""
    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_span_processor(BatchSpanProcessor(NoopSpanExporter()))
    tracer = provider.get_tracer("bench")
    per_event(lambda i: emit_bare(tracer, i), 2000)
    wall = per_event(lambda i: emit_bare(tracer, i), n)[0]
    provider.shutdown()
    return wall


Run = Callable[[Child, int], Row]  # one measured run of a path, set up and torn down


def ours(how: str) -> Run:
    """configure() and a tagged span (*how* = "span") or track() ("track")."""
    label = ("otel-mixpanel: configure() + a tagged span" if how == "span"
             else "otel-mixpanel: configure() + track()")

    def run(sink: Child, n: int) -> Row:
        tracer_provider, logger_provider = providers()
        pipeline = otel_mixpanel.configure(
            tracer_provider=tracer_provider, logger_provider=logger_provider,
            token="bench", api_host=sink.hello,
        )
        tracer = tracer_provider.get_tracer("bench")

        def call(i: int) -> None:
            if how == "span":
                emit_tagged(tracer, i)
            else:
                otel_mixpanel.track("Purchased", PROPERTIES, distinct_id=f"user-{i % 1000}",
                                    logger_provider=logger_provider)

        # Warm-up, not counted: as in a service that has been busy before, the
        # helper process that translates under load is running (it starts on the
        # first big batch, in about 0.2 s, and stops after a minute idle).
        per_event(call, 2000)
        pipeline.force_flush(30_000)
        helper = next((i.offload for i in list(_intake._ALL) if not i._shutdown), None)
        deadline = time.monotonic() + 10
        while helper is not None and helper.state == "starting" and time.monotonic() < deadline:
            time.sleep(0.05)
        note = f"default install; helper process {helper.state if helper else 'absent'}"
        try:
            row = _measure(sink, n, label, call, functools.partial(pipeline.force_flush, 60_000),
                           note)
            dropped = sum(pipeline.stats()["dropped"].values())
        finally:
            pipeline.shutdown(30_000)
        return (*row[:4], f"{note}; dropped {dropped} (counted)") if dropped else row

    return run


class _Refusals(logging.Handler):
    """Counts the peers' "queue is full" log lines (their only sign of a loss)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "queue is full" in record.getMessage().lower():
            self.count += 1


def mixpanel_python() -> Run:
    import mixpanel  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: PLC0415

    def run(sink: Child, n: int) -> Row:
        urls = {f"{k}_url": f"{sink.hello}/{k}" for k in ("events", "people", "import", "groups")}
        consumer = mixpanel.BufferedConsumer(50, **urls)
        client = mixpanel.Mixpanel("token", consumer=consumer)
        return _measure(sink, n, "mixpanel-python, BufferedConsumer(50)",
                        lambda i: client.track(f"user-{i % 1000}", "Purchased", PROPERTIES),
                        consumer.flush, "sends on the caller's thread every 50 events")

    return run


def queued_peer(label: str, module: str, factory: str, options: Any) -> Run:
    """Segment or PostHog: a fresh client each run (its queue starts empty)."""
    imported = __import__(module, fromlist=[factory])

    def run(sink: Child, n: int) -> Row:
        sized = {k: (n if v == "burst" else v) for k, v in options.items()}
        peer = getattr(imported, factory)("key", host=sink.hello, **sized)
        if module == "posthog":
            def send(i: int) -> Any:
                return peer.capture("Purchased", distinct_id=f"user-{i % 1000}",
                                    properties=PROPERTIES)
        else:
            def send(i: int) -> Any:
                return peer.track(user_id=f"user-{i % 1000}", event="Purchased",
                                  properties=PROPERTIES)
        refusals = _Refusals()
        logging.getLogger().addHandler(refusals)
        try:
            row = _measure(sink, n, label, send, peer.flush)
        finally:
            logging.getLogger().removeHandler(refusals)
            with contextlib.suppress(Exception):
                peer.shutdown()
        note = f"{refusals.count} refused with a log line (queue full)" if refusals.count else ""
        return (*row[:4], note)

    return run


def paths() -> List[Tuple[str, Optional[Run]]]:
    """Every row of the table: (label, its run, or None when not installed)."""
    found: List[Tuple[str, Optional[Run]]] = [
        ("otel-mixpanel: configure() + track()", ours("track")),
        ("otel-mixpanel: configure() + a tagged span", ours("span")),
    ]
    for label, make in (
        ("mixpanel-python", mixpanel_python),
        ("segment-analytics-python, defaults", functools.partial(
            queued_peer, "segment-analytics-python, defaults", "segment.analytics", "Client", {})),
        ("segment-analytics-python, queue sized for the burst", functools.partial(
            queued_peer, "segment-analytics-python, queue sized for the burst",
            "segment.analytics", "Client", {"max_queue_size": "burst"})),
        ("posthog, defaults", functools.partial(
            queued_peer, "posthog, defaults", "posthog", "Posthog", {})),
    ):
        try:
            found.append((label, make()))
        except ImportError:
            found.append((f"{label}: not installed", None))
    return found


def measure(sink: Child, n: int, runs: int) -> Tuple[float, List[Row]]:
    """The baseline and every path *runs* times, in rounds (each round runs each
    once, in turn): a machine that gets busier or quieter during the run weighs
    on every row alike, not on the rows measured last. Each: its best run."""
    table = paths()
    bases: List[float] = []
    measured: List[List[Row]] = [[] for _ in table]
    for _ in range(runs):
        bases.append(baseline(n))
        for (_, run), rows in zip(table, measured):
            if run is not None:
                rows.append(run(sink, n))
    return min(bases), [best(rows) if rows else (label, float("nan"), float("nan"), 0, "")
                        for (label, _), rows in zip(table, measured)]


def side_by_side(n: int, runs: int = 5) -> str:
    """The table, each path measured *runs* times (the best of them shown)."""
    sink = Child(_counting_sink)
    try:
        base, rows = measure(sink, n, runs)
    finally:
        sink.stop()
    lines = [
        f"**Side by side** ({n:,} `Purchased` events, 10 properties, as fast as one thread "
        "can call; the same counting sink in another process for every row; best of "
        f"{runs} runs each; caller ratio against an OTel span with the same attributes and "
        f"a no-op exporter: {base:.1f} µs)\n",
        "| path | caller µs/event | ratio to OTel span | end to end events/s | delivered | note |",
        "|---|---|---|---|---|---|",
    ]
    for name, wall, rate, delivered, note in rows:
        lines.append(f"| {name} | {wall:.1f} | {wall / base:.2f} | {rate:,.0f} | "
                     f"{delivered / n:.0%} ({delivered:,}) | {note} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5, help="runs per path, the best shown")
    args = parser.parse_args()
    print(side_by_side(args.events, args.runs))


if __name__ == "__main__":
    main()

