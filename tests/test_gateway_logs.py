"""The gateway's structured logs: ``otel-mixpanel gateway --log-format json``
as an operator runs it (one JSON object per stderr line, from listening to
drained), rate-limited refusal lines whose counts add up, and a library that
never configures logging when embedded."""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
import requests
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from otel_mixpanel.gateway import Gateway, GatewaySettings
from otel_mixpanel.gateway._logs import (
    REFUSAL_LOG_INTERVAL,
    JSONFormatter,
    Refusals,
    TextFormatter,
)
from otel_mixpanel.testing import LocalMixpanel
from tests.helpers import FAST, finished_spans, until

TAGS = {"mixpanel.event": "Signed Up", "mixpanel.user_id": "u1"}
COMMAND = [sys.executable, "-m", "otel_mixpanel.cli", "gateway", "--port", "0"]
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class Running:
    """The command in a subprocess, its stderr lines collected by a thread."""

    def __init__(self, flags: List[str], environ: Dict[str, str]) -> None:
        self.process = subprocess.Popen([*COMMAND, *flags], env=environ, text=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.lines: List[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def records(self) -> List[Dict[str, Any]]:
        """Every line so far, parsed: each must be one JSON object."""
        return [json.loads(line) for line in list(self.lines)]

    def wait_for(self, predicate: Callable[[Dict[str, Any]], bool],
                 timeout: float = 20) -> Dict[str, Any]:
        found: List[Dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [r for r in self.records() if predicate(r)]
            return bool(found) or self.process.poll() is not None

        until(seen, timeout=timeout)
        assert found, "no such record; stderr so far:\n" + "\n".join(self.lines)
        return found[0]

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, then the exit status once stderr is read to its end."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self._reader.join(timeout=10)
        if self.process.stderr is not None:
            self.process.stderr.close()


@pytest.fixture
def environ(mixpanel: LocalMixpanel) -> Dict[str, str]:
    """The command's environment: the local Mixpanel's credentials, no other OTel setting."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    clean.update(mixpanel.env())
    return clean


@pytest.fixture
def run(environ: Dict[str, str]) -> Iterator[Callable[..., Running]]:
    started: List[Running] = []

    def start(*flags: str, **extra: str) -> Running:
        running = Running(list(flags), {**environ, **extra})
        started.append(running)
        return running

    yield start
    for running in started:
        running.kill()


def post(url: str, body: bytes, **headers: str) -> int:
    return requests.post(f"{url}/v1/traces", data=body, timeout=10, headers={
        "Content-Type": "application/x-protobuf", **headers}).status_code


def refusals(records: List[Dict[str, Any]], reason: str) -> List[Dict[str, Any]]:
    return [r for r in records if r.get("event") == "refused" and r["reason"] == reason]


def test_json_lines_from_listening_to_drained(
    mixpanel: LocalMixpanel, run: Callable[..., Running]
) -> None:
    """Every stderr line is a JSON object; listening carries the URLs, refusals
    their counts, SIGTERM gives stopping then drained with the final counters."""
    import grpc  # noqa: PLC0415
    from opentelemetry.proto.collector.trace.v1 import (  # noqa: PLC0415
        trace_service_pb2_grpc,
    )

    gateway = run("--log-format", "json", "--grpc-port", "0", "--ingest-token", "s3cret")
    http = gateway.wait_for(lambda r: r.get("event") == "listening" and r["protocol"] == "http")
    grpc_url = gateway.wait_for(lambda r: r.get("event") == "listening"
                                and r["protocol"] == "grpc")["url"]
    url = http["url"]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url) and url in http["message"]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", grpc_url)

    body = encode_spans(finished_spans(TAGS)).SerializeToString()
    token = {"Authorization": "Bearer s3cret"}
    assert [post(url, body) for _ in range(3)] == [401] * 3
    first = gateway.wait_for(lambda r: r.get("event") == "refused")
    assert (first["reason"], first["count"], first["total"], first["level"]) == (
        "unauthenticated", 1, 1, "WARNING")
    with grpc.insecure_channel(grpc_url.split("://")[1]) as channel, pytest.raises(
            grpc.RpcError) as refused:
        trace_service_pb2_grpc.TraceServiceStub(channel).Export(  # type: ignore[no-untyped-call]
            encode_spans(finished_spans(TAGS)), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    bomb = gzip.compress(b"\0" * (16 * 1024 * 1024 + 1))
    assert post(url, bomb, **{"Content-Encoding": "gzip"}, **token) == 413
    assert post(url, b"{}", **{"Content-Type": "text/plain"}, **token) == 415
    assert post(url, b"\xff not protobuf", **token) == 400
    assert post(url, body, **token) == 200
    gateway.wait_for(lambda r: r.get("reason") == "bad_request")

    assert gateway.terminate() == 0
    records = gateway.records()  # each line parsed: the whole stderr is JSON lines
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
        assert RFC3339_UTC.match(record["time"]), record
        datetime.fromisoformat(record["time"].replace("Z", "+00:00"))
    events = [r.get("event") for r in records if r["logger"] == "otel_mixpanel.gateway"]
    assert events.index("stopping") < events.index("drained") == len(events) - 1
    drained = next(r for r in records if r.get("event") == "drained")
    assert drained["delivered_all"] is True and drained["level"] == "INFO"
    stats = drained["stats"]
    assert stats["sent"] == {"events": 1} and stats["waiting"]["records"] == 0
    assert stats["refused"] == {"unauthenticated": 4, "too_large": 1,
                                "unsupported_media_type": 1, "bad_request": 1}
    for reason, total in stats["refused"].items():  # held-back counts came out at shutdown
        lines = refusals(records, reason)
        assert sum(r["count"] for r in lines) == total, lines
        assert lines[-1]["total"] == total
    assert refusals(records, "unsupported_media_type")[0]["detail"] == "text/plain"
    assert [e["event"] for e in mixpanel.events] == ["Signed Up"]


def test_uvicorn_goes_through_the_same_formatter_and_the_flag_beats_the_environment(
    run: Callable[..., Running],
) -> None:
    """At debug, uvicorn's own lines (startup, one per request) are JSON too;
    the flag wins over its variable, the variable over the default."""
    gateway = run("--log-format", "json", OTEL_EXPORTER_MIXPANEL_GATEWAY_LOG_FORMAT="text",
                  OTEL_EXPORTER_MIXPANEL_GATEWAY_LOG_LEVEL="debug")
    url = gateway.wait_for(lambda r: r.get("event") == "listening")["url"]
    assert requests.get(f"{url}/health", timeout=10).status_code == 200
    access = gateway.wait_for(lambda r: r["logger"] == "uvicorn.access")
    assert (access["event"], access["method"], access["path"], access["status"]) == (
        "request", "GET", "/health", 200)
    assert gateway.terminate() == 0
    records = gateway.records()
    assert any(r["logger"] == "uvicorn.error" for r in records)
    assert "color_message" not in json.dumps(records)


def test_text_is_for_people(run: Callable[..., Running]) -> None:
    gateway = run(OTEL_EXPORTER_MIXPANEL_GATEWAY_LOG_LEVEL="INFO")
    assert until(lambda: any("OTLP/HTTP on" in line for line in gateway.lines), timeout=20), \
        gateway.lines
    line = next(line for line in gateway.lines if "OTLP/HTTP on" in line)
    match = re.fullmatch(r"\S+Z INFO otel_mixpanel\.gateway: OTLP/HTTP on "
                         r"(http://127\.0\.0\.1:\d+)/v1/traces and \1/v1/logs", line)
    assert match, line
    assert post(match.group(1), b"{}", **{"Content-Type": "text/plain"}) == 415
    assert gateway.terminate() == 0
    text = "\n".join(gateway.lines)
    assert "WARNING otel_mixpanel.gateway: refused 1 request: content type" in text
    assert "INFO otel_mixpanel.gateway: stopping" in text
    assert "INFO otel_mixpanel.gateway: drained: everything delivered" in text
    assert not text.lstrip().startswith("{")


@pytest.mark.parametrize(("flags", "variables", "says"), [
    (["--log-format", "xml"], {}, "argument --log-format: invalid choice: 'xml'"),
    ([], {"OTEL_EXPORTER_MIXPANEL_GATEWAY_LOG_FORMAT": "xml"},
     "OTEL_EXPORTER_MIXPANEL_GATEWAY_LOG_FORMAT must be one of text, json, not 'xml'"),
    (["--log-level", "loud"], {}, "argument --log-level: invalid choice: 'loud'"),
    ([], {"OTEL_EXPORTER_MIXPANEL_GATEWAY_LOG_LEVEL": "loud"},
     "OTEL_EXPORTER_MIXPANEL_GATEWAY_LOG_LEVEL must be one of debug, info, warning, error"),
])
def test_an_unknown_log_format_or_level_is_an_error(
    environ: Dict[str, str], flags: List[str], variables: Dict[str, str], says: str,
) -> None:
    result = subprocess.run([*COMMAND, *flags], env={**environ, **variables},
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "listening" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_refusal_to_start_is_a_json_record_too(environ: Dict[str, str]) -> None:
    result = subprocess.run([*COMMAND, "--log-format", "json", "--host", "0.0.0.0"],
                            env=environ, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert [(r["event"], r["level"]) for r in records] == [("failed", "ERROR")]
    assert "--ingest-token" in records[0]["message"]


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Timers:
    """Timers that fire when the test says."""

    def __init__(self) -> None:
        self.waiting: List[Tuple[float, Callable[[], None]]] = []

    def __call__(self, delay: float, function: Callable[[], None]) -> Timers:
        self.waiting.append((delay, function))
        return self

    def fire(self) -> None:
        waiting, self.waiting = self.waiting, []
        for _, function in waiting:
            function()

    def cancel(self) -> None:
        self.waiting = []


def refusal_log(interval: float = REFUSAL_LOG_INTERVAL) -> Tuple[
        Refusals, Clock, Timers, List[logging.LogRecord]]:
    logger = logging.getLogger("tests.refusals")
    logger.propagate = False
    logger.handlers = []
    handler = Collect()
    logger.addHandler(handler)
    written = handler.records
    clock, timers = Clock(), Timers()
    return Refusals(logger, interval=interval, clock=clock, timer=timers), clock, timers, written


def test_refusals_are_one_line_per_reason_per_interval_and_the_counts_add_up() -> None:
    log, clock, timers, written = refusal_log()
    for _ in range(1000):  # 20 a second for 50 s, and 3 of another reason
        log.note("busy")
        clock.now += 0.05
    for _ in range(3):
        log.note("unauthenticated")
    log.flush()
    busy = [r for r in written if vars(r)["reason"] == "busy"]
    assert 5 <= len(busy) <= 6 + 1  # the first at once, one per 10 s, the rest at shutdown
    assert sum(vars(r)["count"] for r in busy) == 1000
    assert vars(busy[-1])["total"] == 1000
    assert [vars(r)["count"] for r in written if vars(r)["reason"] == "unauthenticated"
            ] == [1, 2]
    assert log.totals() == {"busy": 1000, "unauthenticated": 3}
    assert all(r.levelno == logging.WARNING and vars(r)["event"] == "refused" for r in written)
    assert timers.waiting == []  # flush stopped them


def test_a_burst_then_silence_is_reported_by_the_timer() -> None:
    log, clock, timers, written = refusal_log()
    log.note("too_large")
    for _ in range(4):
        clock.now += 1
        log.note("too_large")
    assert [vars(r)["count"] for r in written] == [1]
    assert [delay for delay, _ in timers.waiting] == [9.0]  # one timer, to the interval's end
    clock.now += 9
    timers.fire()
    assert [(vars(r)["count"], vars(r)["total"]) for r in written] == [(1, 1), (4, 5)]
    assert written[-1].getMessage().startswith("refused 4 more requests (5 since start): body")
    timers.fire()
    log.flush()
    assert len(written) == 2  # nothing held back, nothing written twice


def test_a_line_written_by_a_refusal_makes_the_timer_set_before_it_moot() -> None:
    log, clock, timers, written = refusal_log()
    log.note("busy")
    clock.now += 1
    log.note("busy")
    (_, stale), = timers.waiting
    clock.now += 10
    log.note("busy")  # the interval is over: this refusal writes the line
    assert [vars(r)["count"] for r in written] == [1, 2]
    stale()  # the timer thread was already on its way: it must not write a third line
    assert [vars(r)["count"] for r in written] == [1, 2]


def test_a_busy_gateway_writes_few_lines_whose_counts_match_its_stats(
    mixpanel: LocalMixpanel, caplog: pytest.LogCaptureFixture,
) -> None:
    """An overloaded gateway (no room in its queue) refusing 60 requests writes
    a line or two, not 60; their counts add up to the refusals in its stats."""
    caplog.set_level(logging.INFO, logger="otel_mixpanel.gateway")
    served = Gateway(GatewaySettings(port=0), token=mixpanel.token, api_host=mixpanel.url,
                     queue_max_bytes=1, retry_policy=FAST)
    url = served.start()
    began = time.monotonic()
    try:
        body = encode_spans(finished_spans(TAGS)).SerializeToString()
        with requests.Session() as session:
            answers = [session.post(f"{url}/v1/traces", data=body, timeout=10,
                                    headers={"Content-Type": "application/x-protobuf"}
                                    ).status_code for _ in range(60)]
        assert answers == [503] * 60
    finally:
        served.stop(timeout_millis=0)
    # The first at once, one per interval begun, the held-back rest at stop.
    bound = 2 + (time.monotonic() - began) // REFUSAL_LOG_INTERVAL
    records = [r for r in caplog.records if r.name == "otel_mixpanel.gateway"]
    busy = [r for r in records if vars(r).get("event") == "refused"]
    assert 1 <= len(busy) <= bound, [r.getMessage() for r in busy]
    assert sum(vars(r)["count"] for r in busy) == 60
    assert served.stats.snapshot()["dropped"] == {"gateway_refused_busy": 60}
    assert served.status()["refused"] == {"busy": 60}
    drained = [r for r in records if vars(r).get("event") == "drained"]
    assert vars(drained[0])["stats"]["refused"] == {"busy": 60}
    assert [vars(r).get("event") for r in records][:1] == ["listening"]


def test_embedded_the_gateway_configures_no_logging(mixpanel: LocalMixpanel) -> None:
    """Only the command sets up handlers: an application that embeds the
    gateway keeps its own logging (uvicorn's loggers included) as it was."""
    names = ["", "uvicorn", "uvicorn.error", "uvicorn.access", "otel_mixpanel.gateway"]

    def state() -> List[Tuple[Any, ...]]:
        return [(tuple(logging.getLogger(n).handlers), logging.getLogger(n).level,
                 logging.getLogger(n).propagate) for n in names]

    before = state()
    served = Gateway(GatewaySettings(port=0), token=mixpanel.token, api_host=mixpanel.url)
    url = served.start()
    try:
        assert requests.get(f"{url}/health", timeout=10).status_code == 200
        assert state() == before
    finally:
        served.stop()
    assert state() == before


def test_the_formatters() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("otel_mixpanel.gateway", logging.ERROR, __file__, 1,
                                   "failed: %s", ("x",), sys.exc_info())
    record.event, record.when = "crash", datetime(2020, 1, 1)  # not JSON: written as text
    line = JSONFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert (entry["level"], entry["logger"], entry["message"], entry["event"]) == (
        "ERROR", "otel_mixpanel.gateway", "failed: x", "crash")
    assert entry["when"] == "2020-01-01 00:00:00"
    assert "ValueError: boom" in entry["exception"] and RFC3339_UTC.match(entry["time"])
    text = TextFormatter().format(record)
    assert re.match(r"\S+Z ERROR otel_mixpanel\.gateway: failed: x\nTraceback", text)
