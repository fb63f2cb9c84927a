"""Mixpanel outages, side by side: our library and three peer SDKs, all at their defaults.

    .venv/bin/python benchmarks/reliability.py             # every fault and library (~19 min)
    .venv/bin/python benchmarks/reliability.py --quick     # 2 s faults: a rough table in ~6 min
    .venv/bin/python benchmarks/reliability.py --faults 503,hold --libraries segment,posthog
    .venv/bin/python benchmarks/reliability.py --write     # also docs/reliability.md's table
    .venv/bin/python benchmarks/reliability.py --long --faults none --libraries ours  # 5 min

The application thread sends 500 tagged events a second, each with its own name ``E{i}``,
paced to a schedule (a call that blocks makes the next ones late; they are then sent at once,
so every library is offered the same events). One second into the run the server starts
misbehaving for 10 s in one of five ways (``--faults``):

``503``         every request answered HTTP 503
``reset``       every request read, then the connection reset (TCP RST, no answer)
``429-ra``      HTTP 429 with ``Retry-After: 2``
``429``         HTTP 429 without ``Retry-After``
``hold``        every request arriving in the window held 20 s, then stored and answered 200

and each fault is run in two shapes: (a) the app keeps running, emitting for 20 s, then shuts
its client down, and we count after a few seconds' settle; (b) the app emits for 4 s (2 000
events) and shuts down while the fault has 7 s to go; we time the shutdown and count once the
fault window has expired on the server (for ``hold``, once the held requests are done).

Libraries (``--libraries``): ``ours`` (``otel_mixpanel.configure()`` to a
``LocalMixpanel``), ``ours+spool`` (the same with ``spool_dir``; in shape (b) a second
pipeline on the same spool is started after the fault, as a restarted process would),
``segment`` (segment-analytics-python), ``posthog`` and ``mixpanel`` (mixpanel-python's
``BufferedConsumer``). The peers talk to a small fault-capable sink defined here. Every
server runs in a child process, so neither its parsing nor its memory is charged to the app.
Nothing leaves 127.0.0.1.

``--long`` adds, for ``ours`` only, a 300 s 503 outage at 500 events/s in a fresh process:
peak RSS, ``pipeline.stats()`` at the end of the outage, then recovery and the count.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import http.server
import importlib
import json
import logging
import multiprocessing
import os
import platform
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a fresh clone
    sys.path.insert(0, str(ROOT))

from opentelemetry.sdk._logs import LoggerProvider  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402

import otel_mixpanel  # noqa: E402

DOC = ROOT / "docs" / "reliability.md"
# The generated part of DOC sits between these markers; the rest is written by hand.
BEGIN, END = "<!-- fault-table -->", "<!-- /fault-table -->"
SHUTDOWN_CAP = 120.0  # a shutdown still running after this long is recorded as such
RESTART_WAIT = 20.0  # ours+spool, shape (b): how long the restarted pipeline gets
SPAWN_ATTEMPTS = 6
RECOVERY_WAIT = 300.0  # --long: after the outage, how long delivery may take at most
RECOVERY_STALL = 90.0  # --long: ... and how long without progress before giving up


# ---------------------------------------------------------------- the scenario


@dataclass(frozen=True)
class Timing:
    """The scenario's clock, in seconds from the first event."""

    rate: int = 500  # events per second
    fault_start: float = 1.0
    fault_length: float = 10.0
    tail: float = 9.0  # shape (a) emits fault_start + fault_length + tail
    emit_b: float = 4.0  # shape (b) emits this long, then shuts down
    hold: float = 20.0  # the hold fault's delay
    settle: float = 3.0  # after shutdown, before counting

    @property
    def fault_end(self) -> float:
        return self.fault_start + self.fault_length

    def emit_seconds(self, shape: str) -> float:
        return self.fault_end + self.tail if shape == "a" else self.emit_b


FULL = Timing()
QUICK = Timing(fault_length=2.0, tail=1.0, emit_b=2.0, hold=4.0, settle=2.0)


@dataclass(frozen=True)
class Fault:
    """What the server does to each request arriving in the window."""

    key: str
    label: str
    status: Optional[int] = None
    headers: Dict[str, str] = field(default_factory=dict)
    reset: bool = False
    hold: bool = False


FAULTS: Dict[str, Fault] = {
    "503": Fault("503", "503", status=503),
    "reset": Fault("reset", "TCP resets", reset=True),
    "429-ra": Fault("429-ra", "429 + Retry-After: 2", status=429, headers={"Retry-After": "2"}),
    "429": Fault("429", "429, no Retry-After", status=429),
    "hold": Fault("hold", "server holds requests 20 s, then stores them", hold=True),
}
LIBRARIES = ("ours", "ours+spool", "segment", "posthog", "mixpanel")
SHAPES = {"a": "(a) app keeps running", "b": "(b) shutdown during the fault"}


# ---------------------------------------------------------------- servers (child processes)


def _error_body(status: int) -> bytes:
    """An error body each peer can read: Segment wants ``code``/``message``, PostHog
    ``detail``, mixpanel-python ``status``/``error``."""
    text = "rate limited" if status == 429 else "service unavailable"
    return json.dumps({"status": 0, "error": text, "code": str(status), "message": text,
                       "detail": text}).encode()


def _event_names(body: bytes, headers: Any) -> List[str]:
    """The event names in one peer request: Segment and PostHog post ``{"batch": [...]}``
    as JSON, mixpanel-python posts a form whose ``data`` is a JSON (or base64 JSON) list."""
    if headers.get("Content-Encoding", "") == "gzip":
        body = gzip.decompress(body)
    text = body.decode("utf-8", "replace")
    if "application/x-www-form-urlencoded" in headers.get("Content-Type", "") or \
            text.startswith("data="):
        data = urllib.parse.parse_qs(text).get("data", [""])[0]
        if not data.lstrip().startswith(("[", "{")):
            data = base64.b64decode(data).decode("utf-8", "replace")
        parsed: Any = json.loads(data)
    else:
        parsed = json.loads(text)
    if isinstance(parsed, dict):
        parsed = parsed.get("batch", [parsed])
    if not isinstance(parsed, list):
        return []
    return [str(m["event"]) for m in parsed if isinstance(m, dict) and "event" in m]


class Sink(http.server.ThreadingHTTPServer):
    """The peers' server: stores the event names of every POST, misbehaves on request."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), SinkHandler)
        self.lock = threading.Lock()
        self.names: Set[str] = set()
        self.copies = 0
        self.requests = 0
        self.faulted = 0
        self.in_flight = 0
        self.window: Tuple[float, float, Optional[Fault], float] = (0.0, 0.0, None, 0.0)
        self.resets: Set[int] = set()

    def fault_at(self, moment: float) -> Tuple[Optional[Fault], float]:
        start, end, fault, hold = self.window
        return (fault, hold) if fault is not None and start <= moment < end else (None, 0.0)

    def shutdown_request(self, request: Any) -> None:
        # A reset connection is closed with SO_LINGER 0, without shutdown(SHUT_WR)'s FIN.
        if id(request) in self.resets:
            self.resets.discard(id(request))
            request.close()
            return
        super().shutdown_request(request)


class SinkHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: Sink

    def do_POST(self) -> None:
        arrived = time.monotonic()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        sink = self.server
        fault, hold = sink.fault_at(arrived)
        with sink.lock:
            sink.requests += 1
            sink.faulted += fault is not None and not fault.hold
        if fault is not None and fault.reset:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            sink.resets.add(id(self.connection))
            self.close_connection = True
            return
        if fault is not None and fault.status is not None:
            self.answer(fault.status, _error_body(fault.status), fault.headers)
            return
        if fault is not None and fault.hold:
            with sink.lock:
                sink.in_flight += 1
            try:
                time.sleep(max(0.0, arrived + hold - time.monotonic()))
            finally:
                with sink.lock:
                    sink.in_flight -= 1
        try:
            names = _event_names(body, self.headers)
        except ValueError:
            self.answer(400, b'{"status":0,"error":"unreadable body"}', {})
            return
        with sink.lock:
            sink.names.update(names)
            sink.copies += len(names)
        self.answer(200, b'{"status":1,"error":null}', {})

    def do_GET(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.answer(404, b'{"status":0,"error":"not here"}', {})

    def answer(self, status: int, body: bytes, headers: Dict[str, str]) -> None:
        # The client may have given up on a held request: its answer has nowhere to go.
        with contextlib.suppress(OSError):
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _local_fault_kwargs(fault: Fault, hold: float) -> Dict[str, Any]:
    """The fault as ``LocalMixpanel.fail_for`` keywords."""
    if fault.reset:
        return {"reset_connection": True}
    if fault.hold:
        return {"status": None, "delay": hold}
    return {"status": fault.status, "headers": dict(fault.headers) or None}


def _server_main(kind: str, conn: Connection) -> None:
    """A child process: a LocalMixpanel (``kind="local"``) or a Sink, answering commands."""
    logging.disable(logging.CRITICAL)
    timers: List[threading.Timer] = []
    if kind == "local":
        from otel_mixpanel.testing import LocalMixpanel  # noqa: PLC0415

        local = LocalMixpanel().start()
        conn.send((local.url, local.token))

        def counts() -> Dict[str, int]:
            unique: Any = local.unique_events
            records = unique() if callable(unique) else unique
            names = {str(r["event"]) for r in records}
            profiles = local.profiles
            answered = [getattr(q, "status", 200) for q in local.requests]
            return {"unique": len(names), "copies": len(local.events), "in_flight": -1,
                    "n": int(sum(p.get("n", 0) for p in profiles.values())),
                    "requests": len(answered),
                    "faulted": sum(1 for status in answered if status != 200)}

        def start_fault(fault: Fault, start_in: float, length: float, hold: float) -> None:
            fail_for = getattr(local, "fail_for", None)
            if fail_for is None:
                raise RuntimeError("LocalMixpanel.fail_for is missing: the helper adding "
                                   "it has not landed yet")
            kwargs = _local_fault_kwargs(fault, hold)
            timer = threading.Timer(start_in, lambda: fail_for(length, **kwargs))
            timer.start()
            timers.append(timer)

        stop: Callable[[], None] = local.stop
    else:
        sink = Sink()
        threading.Thread(target=sink.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        conn.send((f"http://127.0.0.1:{sink.server_address[1]}", "sink-key"))

        def counts() -> Dict[str, int]:
            with sink.lock:
                return {"unique": len(sink.names), "copies": sink.copies,
                        "in_flight": sink.in_flight, "n": 0, "requests": sink.requests,
                        "faulted": sink.faulted}

        def start_fault(fault: Fault, start_in: float, length: float, hold: float) -> None:
            begin = time.monotonic() + start_in
            sink.window = (begin, begin + length, fault, hold)

        def stop() -> None:
            sink.shutdown()
            sink.server_close()

    while True:
        command, argument = conn.recv()
        try:
            if command == "fault":
                start_fault(*argument)
                conn.send(True)
            elif command == "count":
                conn.send(counts())
            else:
                for timer in timers:
                    timer.cancel()
                stop()
                conn.send(True)
                return
        except Exception as error:  # reported to the parent, which raises it
            conn.send(error)


class ServerProcess:
    """A server in a child process (spawned: no threads forked), spoken to over a pipe."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        context = multiprocessing.get_context("spawn")
        # A child that cannot start (e.g. it imported otel_mixpanel while a colleague was
        # mid-edit) is retried a few times rather than costing the whole run.
        for attempt in range(1, SPAWN_ATTEMPTS + 1):
            self.conn, child = context.Pipe()
            self.process = context.Process(target=_server_main, args=(kind, child),
                                           daemon=True)
            self.process.start()
            child.close()  # only the child's copy stays open: its death ends recv()
            try:
                if not self.conn.poll(60):
                    raise EOFError("no answer in 60 s")
                self.url, self.token = self.conn.recv()
                return
            except (EOFError, OSError) as error:
                self.process.terminate()
                self.process.join(timeout=5)
                if attempt == SPAWN_ATTEMPTS:
                    raise RuntimeError(f"the {kind} server did not start: {error}") from error
                print(f"(the {kind} server did not start, attempt {attempt}: retrying)",
                      file=sys.stderr, flush=True)
                time.sleep(10)

    def ask(self, command: str, argument: Any = None) -> Any:
        self.conn.send((command, argument))
        answer = self.conn.recv()
        if isinstance(answer, Exception):
            raise answer
        return answer

    def counts(self) -> Dict[str, int]:
        return dict(self.ask("count"))

    def stop(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            self.ask("stop")
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=5)


# ---------------------------------------------------------------- the libraries


class Library:
    """One client as an application would use it: emit events, then shut it down."""

    server_kind = "sink"

    def emit(self, i: int) -> None:
        raise NotImplementedError

    def shutdown(self) -> None:
        raise NotImplementedError


class Ours(Library):
    server_kind = "local"

    def __init__(self, url: str, token: str, spool_dir: Optional[str] = None) -> None:
        self.tracer_provider = TracerProvider()
        settings: Dict[str, Any] = {} if spool_dir is None else {"spool_dir": spool_dir}
        self.pipeline = otel_mixpanel.configure(
            tracer_provider=self.tracer_provider, logger_provider=LoggerProvider(),
            token=token, api_host=url, **settings,
        )

    def emit(self, i: int) -> None:
        with self.tracer_provider.get_tracer("bench").start_as_current_span("step") as span:
            span.set_attribute("mixpanel.event", f"E{i}")
            span.set_attribute("mixpanel.distinct_id", f"u{i % 50}")
            span.set_attribute("mixpanel.people.add.n", 1)

    def shutdown(self) -> None:
        self.pipeline.shutdown()


class Segment(Library):
    def __init__(self, url: str, token: str) -> None:
        analytics = importlib.import_module("segment.analytics")
        self.client: Any = analytics.Client(token, host=url)

    def emit(self, i: int) -> None:
        self.client.track(user_id=f"u{i % 50}", event=f"E{i}", properties={"i": i})

    def shutdown(self) -> None:
        self.client.shutdown()


class PostHog(Library):
    def __init__(self, url: str, token: str) -> None:
        posthog = importlib.import_module("posthog")
        self.client: Any = posthog.Posthog(token, host=url)

    def emit(self, i: int) -> None:
        self.client.capture(f"E{i}", distinct_id=f"u{i % 50}", properties={"i": i})

    def shutdown(self) -> None:
        self.client.shutdown()


class MixpanelPython(Library):
    def __init__(self, url: str, token: str) -> None:
        mixpanel = importlib.import_module("mixpanel")
        self.consumer: Any = mixpanel.BufferedConsumer(
            events_url=f"{url}/track", people_url=f"{url}/engage",
            import_url=f"{url}/import", groups_url=f"{url}/groups",
        )
        # mixpanel-python mounts its retrying adapter (urllib3 Retry: 4 retries, 5xx and
        # Retry-After) on https:// only; mounted on http:// too, the loopback sink sees
        # what api.mixpanel.com would. No setting is changed.
        session = self.consumer._consumer._session
        session.mount("http://", session.get_adapter("https://api.mixpanel.com"))
        self.client: Any = mixpanel.Mixpanel(token, consumer=self.consumer)

    def emit(self, i: int) -> None:
        self.client.track(f"u{i % 50}", f"E{i}", {"i": i})

    def shutdown(self) -> None:
        self.consumer.flush()


def make(library: str, url: str, token: str, spool_dir: Optional[str]) -> Library:
    if library.startswith("ours"):
        return Ours(url, token, spool_dir)
    factory: Dict[str, Callable[[str, str], Library]] = {
        "segment": Segment, "posthog": PostHog, "mixpanel": MixpanelPython,
    }
    return factory[library](url, token)


# ---------------------------------------------------------------- one run


class LogCounter(logging.Handler):
    """Counts the libraries' warnings and errors, so they neither flood the terminal nor
    go unnoticed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.first: Dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if record.name not in self.first:
            with contextlib.suppress(Exception):
                self.first[record.name] = record.getMessage()[:200]


@dataclass
class Result:
    library: str
    fault: str
    shape: str
    offered: int = 0
    delivered: int = 0
    copies: int = 0
    after_shutdown: int = 0  # unique events that arrived after shutdown() returned
    profile_n: Optional[int] = None  # ours: the summed $add
    shutdown_seconds: float = 0.0
    shutdown_finished: bool = True
    max_blocked: float = 0.0
    emit_seconds: float = 0.0  # offering took this long (more than planned if calls blocked)
    exceptions: int = 0
    exception_types: Dict[str, int] = field(default_factory=dict)
    log_lines: int = 0
    requests: int = 0  # requests the server saw, and how many it faulted (not held ones)
    faulted: int = 0
    seconds: float = 0.0
    note: str = ""

    @property
    def lost(self) -> int:
        return self.offered - self.delivered


def timed_shutdown(client: Library, result: Result) -> float:
    """Call the library's own shutdown, as the app would; a helper thread only lets a
    shutdown that never returns be recorded instead of hanging the benchmark."""
    errors: List[BaseException] = []

    def run() -> None:
        try:
            client.shutdown()
        except Exception as error:
            errors.append(error)

    worker = threading.Thread(target=run, name="bench-shutdown", daemon=True)
    start = time.perf_counter()
    worker.start()
    worker.join(SHUTDOWN_CAP)
    elapsed = time.perf_counter() - start
    result.shutdown_finished = not worker.is_alive()
    for error in errors:
        result.exceptions += 1
        name = type(error).__name__
        result.exception_types[name] = result.exception_types.get(name, 0) + 1
    return elapsed


def wait_until(moment: float) -> None:
    delay = moment - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def run_one(library: str, fault: Fault, shape: str, timing: Timing) -> Result:
    """Offer the events, shut down, count: one library, one fault, one shape."""
    result = Result(library, fault.key, shape)
    counter = LogCounter()
    logging.getLogger().addHandler(counter)
    server = ServerProcess("local" if library.startswith("ours") else "sink")
    spool = tempfile.TemporaryDirectory(prefix="faults-spool-") \
        if library == "ours+spool" else None
    began = time.perf_counter()
    try:
        client = make(library, server.url, server.token, spool.name if spool else None)
        count = round(timing.rate * timing.emit_seconds(shape))
        result.offered = count
        server.ask("fault", (fault, timing.fault_start, timing.fault_length, timing.hold))
        start = time.perf_counter()
        for i in range(count):
            wait_until(start + i / timing.rate)
            before = time.perf_counter()
            try:
                client.emit(i)
            except Exception as error:
                result.exceptions += 1
                name = type(error).__name__
                result.exception_types[name] = result.exception_types.get(name, 0) + 1
            result.max_blocked = max(result.max_blocked, time.perf_counter() - before)
        result.emit_seconds = time.perf_counter() - start
        result.shutdown_seconds = timed_shutdown(client, result)
        at_shutdown = server.counts()["unique"]
        # Count once the fault window has expired on the server (and, for the hold fault,
        # once every request held in it has been answered), after a short settle.
        done = max(time.perf_counter() + timing.settle,
                   start + timing.fault_end + (timing.hold + 1.0 if fault.hold else 0.5))
        if library == "ours+spool" and shape == "b" and spool is not None:
            # The restarted process: a second pipeline on the same spool, after the fault.
            wait_until(start + timing.fault_end + 0.5)
            restarted = Ours(server.url, server.token, spool.name)
            deadline = time.perf_counter() + RESTART_WAIT
            while time.perf_counter() < deadline and server.counts()["unique"] < count:
                time.sleep(0.25)
            timed_shutdown(restarted, result)
            result.note = "counted after a restart on the spool"
        wait_until(done)
        if fault.hold and server.kind == "sink":
            # The sink knows its held requests: wait for the last one (bounded).
            deadline = time.perf_counter() + timing.hold + 5
            while server.counts()["in_flight"] > 0 and time.perf_counter() < deadline:
                time.sleep(0.25)
        final = server.counts()
        result.delivered = final["unique"]
        result.copies = final["copies"]
        result.requests, result.faulted = final["requests"], final["faulted"]
        result.after_shutdown = final["unique"] - at_shutdown
        if library.startswith("ours"):
            result.profile_n = final["n"]
    finally:
        server.stop()
        if spool is not None:
            spool.cleanup()
        logging.getLogger().removeHandler(counter)
    result.log_lines = counter.count
    result.seconds = time.perf_counter() - began
    return result


# ---------------------------------------------------------------- the 5-minute outage


def long_child(seconds: float) -> None:
    """Run in a fresh process (its peak RSS is ours alone): 500 events/s into a 503
    outage of *seconds*, then recovery; prints one JSON line."""
    logging.disable(logging.WARNING)
    timing = FULL
    server = ServerProcess("local")
    samples: List[Tuple[float, int, int]] = []

    def rss() -> Tuple[int, int]:
        """(current, peak) RSS in bytes. The peak is VmHWM: ru_maxrss would carry the
        parent's peak across fork and exec."""
        fields: Dict[str, int] = {}
        with open("/proc/self/status") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    fields[name] = int(value.split()[0]) * 1024
        return fields["VmRSS"], fields["VmHWM"]

    try:
        client = Ours(server.url, server.token)
        server.ask("fault", (FAULTS["503"], 0.0, seconds, 0.0))
        count = round(timing.rate * seconds)
        start = time.perf_counter()
        samples.append((0.0, *rss()))
        next_sample = start + 30.0
        blocked = 0.0
        exceptions = 0
        for i in range(count):
            wait_until(start + i / timing.rate)
            before = time.perf_counter()
            try:
                client.emit(i)
            except Exception:
                exceptions += 1
            blocked = max(blocked, time.perf_counter() - before)
            if before >= next_sample:
                samples.append((before - start, *rss()))
                next_sample += 30.0
        samples.append((time.perf_counter() - start, *rss()))
        stats = client.pipeline.stats()
        wait_until(start + seconds + 0.5)
        # Recovery: wait for delivery to finish, at most RECOVERY_WAIT; give up earlier only
        # after RECOVERY_STALL without progress (longer than a 60 s backoff plus jitter).
        recovery_start = time.perf_counter()
        last, last_change = -1, recovery_start
        progress: List[Tuple[float, int]] = []
        while time.perf_counter() - recovery_start < RECOVERY_WAIT:
            delivered = server.counts()["unique"]
            if delivered != last:
                last, last_change = delivered, time.perf_counter()
                progress.append((last_change - recovery_start, delivered))
            if delivered >= count or time.perf_counter() - last_change > RECOVERY_STALL:
                break
            time.sleep(0.5)
        recovery = time.perf_counter() - recovery_start
        shutdown_start = time.perf_counter()
        client.shutdown()
        shutdown = time.perf_counter() - shutdown_start
        time.sleep(2)
        final = server.counts()
        peak = rss()[1]
    finally:
        server.stop()
    print(json.dumps({
        "seconds": seconds, "offered": count, "delivered": final["unique"],
        "copies": final["copies"], "profile_n": final["n"], "samples": samples,
        "peak_rss": peak, "stats": stats, "recovery_seconds": recovery,
        "shutdown_seconds": shutdown, "max_blocked": blocked, "exceptions": exceptions,
        "progress": progress, "commit": commit(),
    }))


def run_long(seconds: float) -> Dict[str, Any]:
    """The long outage in a fresh process; a start-up failure is retried, any other
    failure is returned as ``{"error": ...}`` so that the fault tables are still written."""
    error = ""
    for _attempt in range(SPAWN_ATTEMPTS):
        started = time.perf_counter()
        try:
            result = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--long-child", str(seconds)],
                capture_output=True, text=True, check=False,
                timeout=seconds + RECOVERY_WAIT + 300,
            )
        except subprocess.TimeoutExpired:
            return {"error": "the long run timed out"}
        lines = result.stdout.strip().splitlines()
        if result.returncode == 0 and lines:
            return dict(json.loads(lines[-1]))
        error = (result.stderr.strip().splitlines() or ["no output"])[-1]
        if time.perf_counter() - started > 60:  # it ran, then failed: do not repeat it
            break
        print(f"(the long run did not start: {error}; retrying)", file=sys.stderr, flush=True)
        time.sleep(10)
    return {"error": error}


# ---------------------------------------------------------------- the table


def machine() -> str:
    return (f"{os.cpu_count()} cores (`nproc` {len(os.sched_getaffinity(0))}), "
            f"{platform.python_implementation()} {platform.python_version()}, "
            f"{platform.platform()}")


def versions() -> str:
    from importlib import metadata  # noqa: PLC0415

    found = []
    for name in ("otel-mixpanel", "segment-analytics-python", "posthog", "mixpanel",
                 "opentelemetry-sdk"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} not installed")
    return ", ".join(found)


def commit() -> str:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--oneline"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "otel_mixpanel"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (with uncommitted changes under otel_mixpanel/)" if dirty else "")


def _seconds(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _row(r: Result, shape: str) -> str:
    applied_twice = "—" if r.profile_n is None else (
        f"{max(0, r.profile_n - r.delivered)} (Σn {r.profile_n} / {r.delivered} events)")
    shutdown = _seconds(r.shutdown_seconds) + ("" if r.shutdown_finished
                                               else f" (still running at {SHUTDOWN_CAP:.0f})")
    exceptions = str(r.exceptions) + (
        " (" + ", ".join(f"{v} {k}" for k, v in sorted(r.exception_types.items())) + ")"
        if r.exception_types else "")
    cells = [FAULTS[r.fault].label, r.library, f"{r.lost:,}"]
    if shape == "b":
        cells.append(f"{r.after_shutdown:,}")
    cells += [applied_twice, shutdown, _seconds(r.max_blocked), exceptions,
              _seconds(r.emit_seconds)]
    return "| " + " | ".join(cells) + " |"


def table(results: Sequence[Result], timing: Timing) -> str:
    lines: List[str] = []
    for shape, title in SHAPES.items():
        rows = [r for r in results if r.shape == shape]
        if not rows:
            continue
        offered = rows[0].offered
        lines.append(f"**{title}**: {offered:,} events offered over "
                     f"{timing.emit_seconds(shape):.0f} s\n")
        head = ["fault", "library", "events lost"]
        if shape == "b":
            head.append("arrived after shutdown returned")
        head += ["profile $add applied twice", "shutdown s", "max app-thread block s",
                 "exceptions into the app", "offering took s"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        lines.extend(_row(r, shape) for r in rows)
        lines.append("")
    return "\n".join(lines)


def long_table(long: Dict[str, Any]) -> str:
    if "error" in long:
        return f"**Long outage**: the run failed: {long['error']}\n"
    lost = long["offered"] - long["delivered"]
    lines = [
        f"**{long['seconds']:.0f}-second outage** (ours only, `configure()` defaults): "
        f"{long['offered']:,} events "
        f"at 500/s into {long['seconds']:.0f} s of 503, then recovery.\n",
        "| seconds into the outage | RSS MiB | peak RSS MiB |",
        "|---|---|---|",
    ]
    for moment, current, peak in long["samples"]:
        lines.append(f"| {moment:.0f} | {current / 2**20:.0f} | {peak / 2**20:.0f} |")
    progress = long.get("progress") or [(0.0, 0)]
    steps = ", ".join(f"{n:,} at {t:.0f} s" for t, n in progress[:: max(1, len(progress) // 8)])
    lines += [
        "",
        f"Peak RSS of the process (VmHWM): {long['peak_rss'] / 2**20:.0f} MiB. Events lost "
        f"after recovery: {lost:,} (Σn {long['profile_n']:,} for {long['delivered']:,} events "
        f"delivered, {long['copies']:,} copies stored). Delivered after the outage ended: "
        f"{steps}; the wait ended after {long['recovery_seconds']:.0f} s (all delivered, "
        f"{RECOVERY_STALL:.0f} s without progress, or {RECOVERY_WAIT:.0f} s). Then "
        f"`pipeline.shutdown()` took {long['shutdown_seconds']:.1f} s. Longest app-thread "
        f"block {long['max_blocked']:.2f} s, {long['exceptions']} exceptions. Our code: "
        f"{long.get('commit', 'unknown')}.",
        "",
        f"`pipeline.stats()` at the end of the outage: `{json.dumps(long['stats'])}`",
        "",
    ]
    return "\n".join(lines)


INTRO = """Generated by `benchmarks/reliability.py --write`; do not edit it by hand.

The application thread sends {rate} tagged events a second, each with its own name, paced to
a schedule. {start:.0f} s into the run the server starts misbehaving for {length:.0f} s: HTTP
503 for every request; connections reset (TCP RST) without an answer; 429 with
`Retry-After: 2`; 429 without it; or every request held {hold:.0f} s and then stored. Shape (a):
the app keeps emitting for {a:.0f} s in all, then shuts its client down; shape (b): the app
emits for {b:.0f} s and shuts down while the fault has {left:.0f} s to go. Every library runs
at its default settings against a server on 127.0.0.1 in another process: ours against
`otel_mixpanel.testing.LocalMixpanel`, the peers against a sink in the benchmark that speaks
their APIs. mixpanel-python's retrying adapter, mounted by the library on `https://` only, is
also mounted on `http://` so the loopback server sees what api.mixpanel.com would.

Columns:

- **events lost**: events offered minus distinct events the server stored (counted once the
  fault window has expired, and the held requests are done, plus a few seconds' settle).
- **arrived after shutdown returned** (shape b): distinct events stored after the client's
  shutdown call returned: sent by threads the shutdown left behind, or held by the server.
  A process that exits when shutdown returns would lose what the threads had not sent.
- **profile $add applied twice** (ours only): every event also carries a profile `$add` of
  `n` = 1; the excess of Σn over the events delivered (Σn below the events delivered means
  updates were lost).
- **shutdown s**: how long the library's own shutdown call took (`pipeline.shutdown()`,
  `client.shutdown()`, `consumer.flush()`).
- **max app-thread block s**: the longest single call into the library on the app's thread.
- **exceptions into the app**: exceptions raised by those calls (the app catches them and
  goes on).
- **offering took s**: how long the app took to offer its events. Events are paced to a
  schedule; after a call that blocked, the late ones are sent at once, so every library is
  offered the same events, and a library that blocks the app shifts shape (b)'s shutdown
  later (past the end of the fault, in several of mixpanel-python's rows).

What the peers do at their defaults (read from their installed source):

- **segment-analytics-python**: one consumer thread; batches of up to 100, at least every
  0.5 s; a queue of 10 000 (a full queue drops the event with a log line). A failed batch is
  retried 10 times, waiting 0, 0.5, 1, 2, 4 … s; a `Retry-After` puts the batch back in the
  queue and pauses sending for that long. Timeout 15 s. `shutdown()` waits, without a time
  limit, until the queue is empty.
- **posthog**: one consumer thread; batches of up to 100, at least every 5 s; a queue of
  10 000. A failed batch is retried 3 times, waiting 1, 2, 4 s (`Retry-After` as a minimum),
  then dropped with a log line. Timeout 15 s. `shutdown()` drains without a time limit.
- **mixpanel-python** (`BufferedConsumer`): no thread. The `track()` call that fills the
  50-message buffer sends it, on the app's thread, through urllib3's `Retry(total=4,
  backoff_factor=0.25)` (5xx, and 429 with `Retry-After`), with no request timeout. A
  failure raises `MixpanelException` into the app and keeps the buffer, so each later
  `track()` tries again (and raises again); what is still buffered when the final `flush()`
  fails is lost.

`ours+spool` is ours with `spool_dir`; in shape (b) a second pipeline on the same spool is
started after the fault (a restarted process) and given {restart:.0f} s before counting.
"""


def document(body: str, timing: Timing, command: str,
             elapsed: Tuple[float, Optional[float]],
             head: str) -> str:
    intro = INTRO.format(
        rate=timing.rate, start=timing.fault_start, length=timing.fault_length,
        hold=timing.hold, a=timing.emit_seconds("a"), b=timing.emit_seconds("b"),
        left=timing.fault_end - timing.emit_b, restart=RESTART_WAIT,
    )
    long = "" if elapsed[1] is None else f", the long outage {elapsed[1] / 60:.1f} min"
    return (f"{intro}\nMachine: {machine()}. Versions: {versions()}. Our code at the "
            f"start of the run: {head}.\n\nCommand: `{command}` (the fault runs took "
            f"{elapsed[0] / 60:.1f} min{long}).\n\n{body}")


# ---------------------------------------------------------------- main


def _selection(raw: str, known: Sequence[str], what: str) -> List[str]:
    if raw == "none":
        return []
    chosen = [item.strip() for item in raw.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"comma-separated, of {', '.join(FAULTS)} (or none)")
    parser.add_argument("--libraries", default=",".join(LIBRARIES),
                        help=f"comma-separated, of {', '.join(LIBRARIES)} (or none)")
    parser.add_argument("--shapes", default="a,b", help="a, b or a,b")
    parser.add_argument("--quick", action="store_true",
                        help="2 s faults, 4 s hold, shorter runs: for development")
    parser.add_argument("--long", action="store_true",
                        help="add the 5-minute 503 outage for ours (about 6 more minutes)")
    parser.add_argument("--write", action="store_true", help=f"write {DOC.relative_to(ROOT)}")
    parser.add_argument("--long-child", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.long_child:
        long_child(args.long_child)
        return
    faults = _selection(args.faults, list(FAULTS), "faults")
    libraries = _selection(args.libraries, LIBRARIES, "libraries")
    shapes = _selection(args.shapes, list(SHAPES), "shapes")
    timing = QUICK if args.quick else FULL
    head = commit()
    began = time.perf_counter()
    results: List[Result] = []
    for key in faults:
        for shape in shapes:
            for library in libraries:
                result = run_one(library, FAULTS[key], shape, timing)
                results.append(result)
                print(f"[{time.perf_counter() - began:6.0f} s] {key:7} ({shape}) {library:11} "
                      f"lost {result.lost:5} of {result.offered} in {result.emit_seconds:4.1f} s, "
                      f"shutdown {result.shutdown_seconds:5.1f} s, "
                      f"block {result.max_blocked:5.2f} s, "
                      f"{result.exceptions} exceptions, {result.log_lines} log lines, "
                      f"{result.faulted}/{result.requests} requests faulted, "
                      f"run {result.seconds:.0f} s", flush=True)
    body = table(results, timing)
    fault_runs = time.perf_counter() - began
    if results:
        print(f"fault runs took {fault_runs:.0f} s", flush=True)
    if args.long:
        long = run_long(30.0 if args.quick else 300.0)
        body += "\n" + long_table(long)
    elapsed = time.perf_counter() - began
    command = "python benchmarks/reliability.py " + " ".join(sys.argv[1:])
    print()
    print(body)
    print(f"({elapsed:.0f} s)")
    if args.write:
        generated = document(body, timing, command.strip(),
                             (fault_runs, elapsed - fault_runs if args.long else None), head)
        page = DOC.read_text(encoding="utf-8")
        before, _, rest = page.partition(BEGIN)
        _, _, after = rest.partition(END)
        DOC.write_text(f"{before}{BEGIN}\n{generated.strip()}\n{END}{after}", encoding="utf-8")
        print(f"wrote the fault table in {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
