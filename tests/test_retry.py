"""Retry, backoff, deadline, 413 split and partial answers, on a scripted
transport with a fake clock (the same behaviours run over real HTTP in
test_reliability.py)."""

from __future__ import annotations

import gzip
import json
import threading
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Callable, List, Mapping, Optional, Sequence, Union

import pytest

from otel_mixpanel import RetryPolicy
from otel_mixpanel._config import resolve_settings
from otel_mixpanel._delivery import Delivery
from otel_mixpanel._model import Event, Message, ProfileUpdate
from otel_mixpanel._retry import retry_after
from otel_mixpanel._transport import HTTPResponse, Transport

T0 = 1_732_280_000_000
Reply = Union[HTTPResponse, Callable[[List[bytes]], HTTPResponse]]


class FakeClock:
    """Monotonic time that only moves when delivery sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: List[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, delay: float) -> bool:
        self.sleeps.append(delay)
        self.now += delay
        return False


class Script(Transport):
    """Answers from a script; records every request's records."""

    def __init__(self, *replies: Reply, default: Optional[Reply] = None) -> None:
        self.replies = list(replies)
        self.default = default
        self.calls: List[List[bytes]] = []
        self.timeouts: List[float] = []

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
             ) -> HTTPResponse:
        if headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        records = [json.dumps(r, separators=(",", ":")).encode() for r in json.loads(body)]
        self.calls.append(records)
        self.timeouts.append(timeout)
        reply = self.replies.pop(0) if self.replies else self.default
        assert reply is not None, "unscripted request"
        return reply(records) if callable(reply) else reply


def ok(body: bytes = b'{"code":200,"status":"OK"}') -> HTTPResponse:
    return HTTPResponse(200, body)


def status(code: int, headers: Optional[Mapping[str, str]] = None) -> HTTPResponse:
    return HTTPResponse(code, b'{"error":"scripted"}', dict(headers or {}))


def events(count: int) -> List[Message]:
    return [Event("E", {"time": T0, "distinct_id": "u", "$insert_id": f"id-{i}"})
            for i in range(count)]


def delivery(transport: Transport, clock: FakeClock, timeout: float = 1000.0,
             policy: Optional[RetryPolicy] = None) -> Delivery:
    settings = resolve_settings(token="t", api_host="http://127.0.0.1:1", timeout=timeout,
                                environ={})
    return Delivery(settings, transport=transport, clock=clock, sleep=clock.sleep,
                    retry_policy=policy or RetryPolicy())


class TestBackoff:
    def test_mixpanel_schedule(self) -> None:
        """2 s doubling to 60 s, each plus 1-5 s jitter, then success."""
        clock = FakeClock()
        script = Script(*[status(503)] * 7, ok())
        result = delivery(script, clock).deliver(events(3))
        assert result.ok
        bases = [2, 4, 8, 16, 32, 60, 60]
        assert len(clock.sleeps) == len(bases)
        for slept, base in zip(clock.sleeps, bases):
            assert base + 1 <= slept <= base + 5
        assert len(script.calls) == 8

    @pytest.mark.parametrize("code", [408, 429, 500, 502, 503, 504])
    def test_retryable_statuses(self, code: int) -> None:
        """Each transient status is retried."""
        clock = FakeClock()
        script = Script(status(code), ok())
        assert delivery(script, clock).deliver(events(1)).ok
        assert len(script.calls) == 2

    def test_connection_errors_are_retried(self) -> None:
        """A refused or reset connection is retried."""
        clock = FakeClock()
        script = Script(HTTPResponse(0, error="ConnectionError"), ok())
        assert delivery(script, clock).deliver(events(1)).ok

    def test_retry_after_seconds(self) -> None:
        """A Retry-After header replaces the computed backoff."""
        clock = FakeClock()
        script = Script(status(429, {"Retry-After": "7"}), ok())
        delivery(script, clock).deliver(events(1))
        assert clock.sleeps == [7.0]

    def test_retry_after_http_date(self) -> None:
        """The HTTP-date form of Retry-After is understood."""
        now = datetime(2026, 11, 23, 12, 0, 0, tzinfo=timezone.utc)
        header = {"Retry-After": format_datetime(now + timedelta(seconds=30), usegmt=True)}
        assert retry_after(header, now=now.timestamp()) == pytest.approx(30.0)
        assert retry_after({"retry-after": "soon"}) is None
        assert retry_after({}) is None

    def test_gives_up_at_the_deadline(self) -> None:
        """No sleep runs past the export deadline; what is left is undelivered."""
        clock = FakeClock()
        script = Script(default=status(503))
        result = delivery(script, clock, timeout=10.0).deliver(events(2))
        assert not result.ok
        assert clock.now < 10.0
        assert result.batches[0].undelivered == (0, 1)
        assert all(t <= 10.0 for t in script.timeouts)  # every attempt has a finite timeout

    @pytest.mark.parametrize("code", [400, 401, 403])
    def test_not_retried(self, code: int) -> None:
        """400, 401 and 403 fail at once."""
        clock = FakeClock()
        script = Script(default=status(code))
        result = delivery(script, clock).deliver(events(1))
        assert len(script.calls) == 1 and clock.sleeps == []
        assert result.batches[0].error is not None

    def test_outage_pause_skips_the_network(self) -> None:
        """After an export gives up, the next ones within the pause send nothing."""
        clock = FakeClock()
        script = Script(default=status(503))
        policy = RetryPolicy(initial=1, maximum=1, jitter=(0, 0), outage_pause=30)
        sender = delivery(script, clock, timeout=3.0, policy=policy)
        sender.deliver(events(1))
        calls = len(script.calls)
        assert not sender.deliver(events(1)).ok
        assert len(script.calls) == calls
        clock.now += 31
        script.default = ok()
        assert sender.deliver(events(1)).ok


class TestPartialAnswers:
    def test_413_splits_until_it_fits(self) -> None:
        """Halves are sent until each is accepted; every record arrives once."""
        clock = FakeClock()

        def limited(records: List[bytes]) -> HTTPResponse:
            return status(413) if len(records) > 3 else ok()

        script = Script(default=limited)
        result = delivery(script, clock).deliver(events(10))
        assert result.ok and result.batches[0].accepted == 10
        accepted = [r for call in script.calls if len(call) <= 3 for r in call]
        assert sorted(accepted) == sorted(set(accepted)) and len(accepted) == 10

    def test_413_half_accepted_is_never_resent(self) -> None:
        """When one half is accepted and the other keeps failing, only the failing
        half is retried and left undelivered."""
        clock = FakeClock()
        sent_ok: List[bytes] = []

        def reply(records: List[bytes]) -> HTTPResponse:
            if len(records) == 4:
                return status(413)
            if b"id-0" in records[0]:
                sent_ok.extend(records)
                return ok()
            return status(503)

        script = Script(default=reply)
        result = delivery(script, clock, timeout=20.0).deliver(events(4))
        assert result.batches[0].accepted == 2
        assert result.batches[0].undelivered == (2, 3)
        assert len(sent_ok) == 2  # the accepted half went exactly once

    def test_import_failed_records(self) -> None:
        """400 with failed_records: named records dropped, the rest accepted, no retry."""
        clock = FakeClock()
        body = json.dumps({"code": 400, "failed_records": [
            {"index": 1, "insert_id": "id-1", "field": "properties.time", "message": "bad"},
        ]}).encode()
        script = Script(HTTPResponse(400, body))
        result = delivery(script, clock).deliver(events(3))
        (batch,) = result.batches
        assert batch.accepted == 2 and batch.rejected == {1: "properties.time: bad"}
        assert len(script.calls) == 1 and result.ok

    def test_failed_records_by_insert_id(self) -> None:
        """An entry without an index is matched by $insert_id (either spelling)."""
        clock = FakeClock()
        body = json.dumps({"failed_records": [{"$insert_id": "id-2", "message": "x"}]}).encode()
        result = delivery(Script(HTTPResponse(400, body)), clock).deliver(events(3))
        assert result.batches[0].rejected == {2: "x"}

    def test_engage_resends_only_what_was_not_accepted(self) -> None:
        """A 503 accepted nothing, so all are resent; then a status-0 partial answer
        drops only the named update; nothing accepted is ever resent."""
        clock = FakeClock()
        partial = json.dumps({"status": 0, "error": "x", "failed_records": [
            {"index": 0, "message": "bad value"}]}).encode()
        script = Script(status(503), HTTPResponse(200, partial))
        updates: List[Message] = [ProfileUpdate("u", "$add", {f"n{i}": 1}) for i in range(3)]
        result = delivery(script, clock).deliver(updates)
        (batch,) = result.batches
        assert batch.accepted == 2 and list(batch.rejected) == [0]
        assert len(script.calls) == 2 and len(script.calls[1]) == 3

    def test_read_timeout_never_resends_non_idempotent_updates(self) -> None:
        """After a timeout the request may have been applied: $add/$append are not
        sent again (counted), $set is."""
        clock = FakeClock()
        script = Script(HTTPResponse(0, error="ReadTimeout", maybe_delivered=True), ok(b"1"))
        updates: Sequence[Message] = [
            ProfileUpdate("u", "$add", {"logins": 1}),
            ProfileUpdate("u", "$set", {"plan": "pro"}),
            ProfileUpdate("u", "$append", {"$transactions": {"$amount": 1}}),
        ]
        sender = delivery(script, clock)
        result = sender.deliver(list(updates))
        (batch,) = result.batches
        assert batch.unknown == (0, 2)
        assert [json.loads(r) for r in script.calls[1]] == [json.loads(script.calls[0][1])]
        assert sender.stats.snapshot()["dropped"]["outcome_unknown"] == 2

    def test_read_timeout_resends_events(self) -> None:
        """Events are resent after a timeout: their $insert_id lets Mixpanel dedupe."""
        clock = FakeClock()
        script = Script(HTTPResponse(0, error="ReadTimeout", maybe_delivered=True), ok())
        assert delivery(script, clock).deliver(events(2)).ok
        assert script.calls[0] == script.calls[1]


def test_shutdown_interrupts_backoff() -> None:
    """A real thread in a long backoff returns as soon as delivery is closed."""
    script = Script(default=status(503))
    settings = resolve_settings(token="t", api_host="http://127.0.0.1:1", timeout=600,
                                environ={})
    sender = Delivery(settings, transport=script,
                      retry_policy=RetryPolicy(initial=300, maximum=300, jitter=(0, 0)))
    results = []
    worker = threading.Thread(target=lambda: results.append(sender.deliver(events(1))))
    worker.start()
    for _ in range(500):
        if script.calls:
            break
        threading.Event().wait(0.01)
    sender.close()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert results and results[0].batches[0].undelivered == (0,)
    assert len(script.calls) == 1
