"""Retry and backoff in the sending queue: Mixpanel's schedule, Retry-After, one
probe per backoff step while Mixpanel fails, recovery, shutdown, and how each
kind of answer is settled (413 splits, partial answers, lost answers).

Answers come from the local Mixpanel over real HTTP; only the timing tests
script a transport, to read the time of each attempt."""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any, Iterator, List, Mapping, Optional, Sequence

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_mixpanel import MixpanelSpanExporter, RetryPolicy
from otel_mixpanel._config import Settings, resolve_settings
from otel_mixpanel._model import Endpoint, Event, Message, ProfileUpdate
from otel_mixpanel._queue import Client, SendingQueue
from otel_mixpanel._queue._batch import Batch
from otel_mixpanel._queue._responses import read_response
from otel_mixpanel._queue._retry import retry_after
from otel_mixpanel._queue._sending import PROBE_RECORDS
from otel_mixpanel._queue._transport import HTTPResponse, Transport
from otel_mixpanel._stats import Stats
from otel_mixpanel.testing import LocalMixpanel
from tests.conftest import SENDER
from tests.helpers import FAST, emit, until

T0 = 1_732_280_000_000




class Script(Transport):
    """Answers from a script and notes when each request came and what it carried."""

    def __init__(self, *replies: HTTPResponse, default: Optional[HTTPResponse] = None) -> None:
        self.replies = list(replies)
        self.default = default
        self.calls: List[List[bytes]] = []
        self.times: List[float] = []
        self.timeouts: List[float] = []

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
             ) -> HTTPResponse:
        self.times.append(time.monotonic())
        if headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.calls.append([json.dumps(r, separators=(",", ":")).encode()
                           for r in json.loads(body)])
        self.timeouts.append(timeout)
        reply = self.replies.pop(0) if self.replies else self.default
        assert reply is not None, "unscripted request"
        return reply


def ok() -> HTTPResponse:
    return HTTPResponse(200, b'{"code":200,"status":"OK"}')


def status(code: int, headers: Optional[Mapping[str, str]] = None) -> HTTPResponse:
    return HTTPResponse(code, b'{"error":"scripted"}', dict(headers or {}))


def events(count: int, start: int = 0) -> List[Message]:
    return [Event("E", {"time": T0 + i, "distinct_id": "u", "$insert_id": f"id-{i}"})
            for i in range(start, start + count)]


def settings_for(mixpanel: Optional[LocalMixpanel] = None, **options: Any) -> Settings:
    options.setdefault("token", mixpanel.token if mixpanel else "t")
    options.setdefault("api_host", mixpanel.url if mixpanel else "http://127.0.0.1:1")
    return resolve_settings(environ={}, **options)


@contextlib.contextmanager
def sending_queue(settings: Settings, *, transport: Optional[Transport] = None,
                  policy: RetryPolicy = FAST) -> Iterator[SendingQueue]:
    """A sending queue, closed (within half a second) when the block ends."""
    queue = SendingQueue(settings, transport=transport, retry_policy=policy)
    try:
        yield queue
    finally:
        queue.close(0.5)


def sizes(mixpanel: LocalMixpanel) -> List[int]:
    """Records per request, in the order answered."""
    return [len(request.json()) for request in mixpanel.requests]


class TestBackoff:
    def test_mixpanel_schedule(self) -> None:
        """2 s doubling to 60 s, each plus 1-5 s of jitter."""
        policy = RetryPolicy()
        bases = [2, 4, 8, 16, 32, 60, 60, 60]
        assert [policy.backoff(i, rand=lambda low, high: low) for i in range(8)] == [
            base + 1 for base in bases
        ]
        assert [policy.backoff(i, rand=lambda low, high: high) for i in range(8)] == [
            base + 5 for base in bases
        ]
        for i, base in enumerate(bases):
            assert base + 1 <= policy.backoff(i) <= base + 5
        assert RetryPolicy(jitter=(0, 0)).backoff(3) == 16

    def test_the_sender_waits_the_policy_and_resumes_at_recovery(self) -> None:
        """Between failed attempts the sender waits the policy's delays; each
        failed step sends one probe record; the first answer resumes full
        batches at once. Every attempt has the finite request timeout."""
        script = Script(*[status(503)] * 4, default=ok())
        policy = RetryPolicy(initial=0.1, maximum=0.4, jitter=(0, 0))
        with sending_queue(settings_for(timeout=2.0), transport=script, policy=policy) as queue:
            queue.submit(events(3))
            assert queue.flush(10)
            stats = queue.stats.snapshot()
        assert [len(call) for call in script.calls] == [3, 1, 1, 1, 1, 2]
        gaps = [later - earlier for earlier, later in zip(script.times, script.times[1:])]
        for gap, delay in zip(gaps, [0.1, 0.2, 0.4, 0.4]):
            assert delay * 0.9 <= gap < delay + 1.0
        assert gaps[4] < 0.1  # recovered: the rest goes without a backoff step
        assert all(0 < timeout <= 2.0 for timeout in script.timeouts)
        assert sorted(r for call in script.calls[4:] for r in call) == sorted(script.calls[0])
        assert stats["sent"] == {"events": 3} and stats["dropped"] == {}
        assert stats["retried"] == {"events": 3 + 1 + 1 + 1}

    @pytest.mark.parametrize("code", [408, 429, 500, 502, 503, 504])
    def test_retryable_statuses(self, mixpanel: LocalMixpanel, code: int) -> None:
        """Each transient status is retried, and the record arrives once."""
        mixpanel.fail_next(1, status=code)
        with sending_queue(settings_for(mixpanel)) as queue:
            queue.submit(events(1))
            assert queue.flush(5)
            stats = queue.stats.snapshot()
        assert [r.status for r in mixpanel.requests] == [code, 200]
        assert len(mixpanel.events) == 1
        assert stats["retried"] == {"events": 1} and stats["dropped"] == {}

    def test_unreachable_then_up(self) -> None:
        """Connection refused is retried until Mixpanel listens; nothing is lost."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        settings = settings_for(api_host=f"http://127.0.0.1:{port}", token="local-token")
        with sending_queue(settings) as queue:
            queue.submit(events(5))
            assert until(lambda: queue.failing)
            with LocalMixpanel(port=port) as mixpanel:
                assert queue.flush(10)
                assert len(mixpanel.unique_events()) == 5 == len(mixpanel.events)
            assert queue.stats.snapshot()["dropped"] == {}

    def test_dropped_connection_resends_events(self, mixpanel: LocalMixpanel) -> None:
        """A connection closed before the answer is retried; events go again."""
        mixpanel.fail_next(1, drop_connection=True)
        with sending_queue(settings_for(mixpanel)) as queue:
            queue.submit(events(2))
            assert queue.flush(5)
        assert [r.status for r in mixpanel.requests] == [0, 200, 200]
        assert sizes(mixpanel) == [2, PROBE_RECORDS, 1]  # a probe first, then the rest
        assert len(mixpanel.events) == 2

    def test_retry_after_seconds(self, mixpanel: LocalMixpanel) -> None:
        """A Retry-After header replaces the computed backoff (here 10 ms)."""
        mixpanel.fail_next(1, status=429, headers={"Retry-After": "1"})
        with sending_queue(settings_for(mixpanel)) as queue:
            started = time.monotonic()
            queue.submit(events(1))
            assert queue.flush(5)
            elapsed = time.monotonic() - started
        assert 0.95 <= elapsed < 4
        assert len(mixpanel.requests) == 2 and len(mixpanel.events) == 1

    def test_retry_after_http_date(self) -> None:
        """The HTTP-date form of Retry-After is understood."""
        now = datetime(2026, 11, 23, 12, 0, 0, tzinfo=timezone.utc)
        header = {"Retry-After": format_datetime(now + timedelta(seconds=30), usegmt=True)}
        assert retry_after(header, now=now.timestamp()) == pytest.approx(30.0)
        assert retry_after({"retry-after": "soon"}) is None
        assert retry_after({}) is None

    def test_400_is_not_retried(self, mixpanel: LocalMixpanel) -> None:
        """A 400 without per-record answers drops the batch at once, counted."""
        mixpanel.fail_next(1, status=400)
        with sending_queue(settings_for(mixpanel)) as queue:
            queue.submit(events(2))
            assert queue.flush(5)
            stats = queue.stats.snapshot()
        assert len(mixpanel.requests) == 1
        assert stats["dropped"] == {"refused_by_mixpanel": 2} and stats["retried"] == {}
        assert stats["waiting"]["records"] == 0

    @pytest.mark.parametrize("code", [401, 403])
    def test_refused_credentials_wait_and_say_why(
        self, mixpanel: LocalMixpanel, caplog: pytest.LogCaptureFixture, code: int
    ) -> None:
        """401/403 keep the records (a token or region can be fixed), log why at
        every backoff step, and deliver once Mixpanel accepts the credentials."""
        caplog.set_level(logging.WARNING, logger="otel_mixpanel")
        mixpanel.fail_next(3, status=code)
        with sending_queue(settings_for(mixpanel)) as queue:
            queue.submit(events(4))
            assert queue.flush(5)
            stats = queue.stats.snapshot()
        assert [r.status for r in mixpanel.requests] == [code] * 3 + [200, 200]
        assert len(mixpanel.unique_events()) == 4 == len(mixpanel.events)
        assert stats["dropped"] == {}
        why = [r for r in caplog.records if "refused the credentials" in r.getMessage()]
        assert len(why) == 3
        assert all("region" in r.getMessage() for r in why)
        assert mixpanel.token not in caplog.text


class TestWhileFailing:
    def test_each_backoff_step_sends_one_probe(self, mixpanel: LocalMixpanel) -> None:
        """While Mixpanel fails, each step sends one record, not the queue; the
        first accepted probe resumes full batches; nothing is sent twice."""
        mixpanel.fail_next(4, status=503)
        with sending_queue(settings_for(mixpanel)) as queue:
            queue.submit(events(50))
            assert queue.flush(5)
            stats = queue.stats.snapshot()
        assert PROBE_RECORDS == 1
        assert sizes(mixpanel) == [50, 1, 1, 1, 1, 49]
        assert len(mixpanel.events) == 50 == len(mixpanel.unique_events())
        assert stats["retried"] == {"events": 50 + 3} and stats["dropped"] == {}

    def test_wait_returns_at_once_while_failing(self, mixpanel: LocalMixpanel) -> None:
        """wait() returns True once Mixpanel answered for its records; while Mixpanel
        fails it returns False at once, far within the timeout, the records staying
        queued; flush() waits through the outage."""
        policy = RetryPolicy(initial=0.5, maximum=0.5, jitter=(0, 0))
        with sending_queue(settings_for(mixpanel, timeout=5.0), policy=policy) as queue:
            ticket = queue.submit(events(3))
            assert queue.wait(ticket, 5)
            assert len(mixpanel.events) == 3  # answered means at Mixpanel, before wait returns
            mixpanel.fail_next(3, status=503)
            started = time.monotonic()
            assert not queue.wait(queue.submit(events(3, start=3)), 5)
            assert not queue.wait(queue.submit(events(3, start=6)), 5)
            assert time.monotonic() - started < 0.4  # one failed attempt, no backoff
            assert queue.failing and queue.waiting()[0] == 6
            assert queue.flush(10)
            assert queue.waiting() == (0, 0)
            assert queue.stats.snapshot()["dropped"] == {}
        assert len(mixpanel.unique_events()) == 9 == len(mixpanel.events)

    def test_outage_longer_than_the_timeout_drops_nothing(self, mixpanel: LocalMixpanel) -> None:
        """An outage longer than the exporter's timeout: export() returns SUCCESS
        at once, nothing is dropped, and everything arrives after recovery.
        Export returns FAILURE only after shutdown."""
        spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(spans))
        emit(provider, 5)
        provider.shutdown()
        exporter = MixpanelSpanExporter(
            token=mixpanel.token, api_host=mixpanel.url, timeout=0.3,
            retry_policy=RetryPolicy(initial=0.05, maximum=0.1, jitter=(0, 0)),
        )
        try:
            mixpanel.fail_next(12, status=503)  # about a second: over three timeouts
            started = time.monotonic()
            assert exporter.export(spans.get_finished_spans()) is SpanExportResult.SUCCESS
            assert time.monotonic() - started < 0.3 + 0.5
            assert exporter.stats()["waiting"]["records"] >= 9
            assert exporter.force_flush(10_000)
            stats = exporter.stats()
        finally:
            exporter.shutdown()
        assert stats["dropped"] == {}
        assert stats["sent"] == {"events": 5, "profile_updates": 5}
        assert stats["waiting"] == {"records": 0, "bytes": 0}
        assert len(mixpanel.unique_events()) == 5
        assert mixpanel.profiles["u"] == {f"E{i}": 1 for i in range(5)}
        assert len(mixpanel.profile_updates) == 5  # each $add applied once
        after = exporter.export(spans.get_finished_spans())
        assert after is SpanExportResult.FAILURE
        assert exporter.stats()["dropped"] == {"exporter_shut_down": 5}

    def test_memory_bound_evicts_oldest_and_counts(self, mixpanel: LocalMixpanel) -> None:
        """Past queue_max_bytes the oldest waiting records go (sending_queue_full);
        every record is either delivered once or counted."""
        mixpanel.fail_next(60, status=503)
        with sending_queue(settings_for(mixpanel, queue_max_bytes=4096)) as queue:
            queue.submit(events(1))
            assert until(lambda: queue.failing)  # from now on only probes are in flight
            for i in range(1, 200):
                queue.submit(events(1, start=i))
            assert queue.waiting()[1] <= 4096
            assert queue.flush(10)
            stats = queue.stats.snapshot()
        evicted = stats["dropped"]["sending_queue_full"]
        delivered = [int(e["properties"]["$insert_id"][3:]) for e in mixpanel.events]
        assert evicted > 0 and set(stats["dropped"]) == {"sending_queue_full"}
        assert len(delivered) == len(set(delivered)) == 200 - evicted
        # The newest waited; of the older, at most the one a probe held on to.
        newest = sorted(delivered)[1:]
        assert newest == list(range(200 - len(newest), 200))

    def test_shutdown_interrupts_backoff(self, caplog: pytest.LogCaptureFixture) -> None:
        """close() makes one attempt at once (Mixpanel may be back after a long
        outage), then does not wait out a backoff longer than its budget: it
        returns, counts what waits, and says so in one line before returning."""
        caplog.set_level(logging.INFO, logger="otel_mixpanel")
        script = Script(default=status(503))
        queue = SendingQueue(settings_for(timeout=5), transport=script,
                             retry_policy=RetryPolicy(initial=300, maximum=300, jitter=(0, 0)))
        try:
            queue.submit(events(1))
            assert until(lambda: queue.failing)
            started = time.monotonic()
            assert queue.close(5) is False
            assert time.monotonic() - started < 2
        finally:
            queue.close(0)
        assert len(script.calls) == 2  # the failure, then shutdown's one attempt
        assert queue.stats.snapshot()["dropped"] == {"undelivered_at_shutdown": 1}
        totals = [r.getMessage() for r in caplog.records if "shut down" in r.getMessage()]
        assert totals == [
            "Mixpanel exporter shut down: 0 records sent; "
            "dropped since start: undelivered_at_shutdown 1"
        ]

    def test_shutdown_keeps_delivering_within_its_budget(
        self, mixpanel: LocalMixpanel, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A short outage at shutdown: close() rides it out and loses nothing."""
        caplog.set_level(logging.INFO, logger="otel_mixpanel")
        mixpanel.fail_next(5, status=503)
        queue = SendingQueue(settings_for(mixpanel), retry_policy=FAST)
        try:
            queue.submit(events(10))
            assert queue.close(5) is True
        finally:
            queue.close(0)
        assert len(mixpanel.unique_events()) == 10
        assert queue.stats.snapshot()["dropped"] == {}
        assert "Mixpanel exporter shut down: 10 records sent, none lost" in caplog.text
        queue.submit(events(1))  # after close: refused, counted
        assert queue.stats.snapshot()["dropped"] == {"exporter_shut_down": 1}

    def test_a_request_answered_after_close_is_counted_once(
        self, mixpanel: LocalMixpanel
    ) -> None:
        """A request on the wire when the budget ends: its records are counted
        once, as sent or as lost, never both."""
        mixpanel.fail_next(1, status=None, delay=1.0)  # accepted, answered after the budget
        before = set(threading.enumerate())
        queue = SendingQueue(settings_for(mixpanel), retry_policy=FAST)
        try:
            queue.submit(events(1))
            assert mixpanel.wait_for(lambda m: m.pending_faults == 0)
        finally:
            queue.close(0.1)
        assert mixpanel.wait_for(lambda m: len(m.events) == 1)
        for thread in set(threading.enumerate()) - before:
            if thread.name == SENDER:
                thread.join(3)  # the answer has been read and settled
        stats = queue.stats.snapshot()
        assert sum(stats["sent"].values()) + sum(stats["dropped"].values()) == 1


class TestPartialAnswers:
    def test_413_splits_until_it_fits(self) -> None:
        """Halves are sent until each is accepted; every record arrives once."""
        with LocalMixpanel(max_records=3) as mixpanel:
            with sending_queue(settings_for(mixpanel)) as queue:
                queue.submit(events(10))
                assert queue.flush(5)
                stats = queue.stats.snapshot()
            assert sizes(mixpanel) == [10, 5, 2, 2, 2, 2, 2]
            assert len(mixpanel.events) == 10 == len(mixpanel.unique_events())
        assert stats["dropped"] == {} and stats["retried"] == {}

    def test_413_accepted_half_is_never_resent(self, mixpanel: LocalMixpanel) -> None:
        """One half accepted, the other failing: only the failing half is retried,
        and it arrives after recovery."""
        mixpanel.fail_next(1, status=413)
        mixpanel.fail_next(1, status=None)  # the first half: handled normally
        mixpanel.fail_next(2, status=503)
        with sending_queue(settings_for(mixpanel)) as queue:
            queue.submit(events(4))
            assert queue.flush(5)
        assert sizes(mixpanel) == [4, 2, 2, 1, 1, 1]
        resent = [e["properties"]["$insert_id"] for r in mixpanel.requests[2:] for e in r.json()]
        assert set(resent) == {"id-2", "id-3"}
        assert len(mixpanel.events) == 4 == len(mixpanel.unique_events())

    def test_one_record_too_large_is_dropped(self) -> None:
        """A single record Mixpanel finds too large cannot be split: dropped, counted."""
        with LocalMixpanel(max_bytes=300) as mixpanel:
            stats = Stats()
            client = Client(settings_for(mixpanel, compression="none"))
            try:
                big = Event("E", {"time": T0, "distinct_id": "u", "$insert_id": "x",
                                  "pad": "p" * 400})
                small = events(2)
                records = [json.dumps(m.payload(None)).encode() for m in [big, *small]]
                split = client.attempt(Endpoint.IMPORT, records, 5, stats)
                assert split.too_large and split.remaining == (0, 1, 2) and not split.retry
                alone = client.attempt(Endpoint.IMPORT, records[:1], 5, stats)
                assert alone.remaining == () and alone.status == 413
            finally:
                client.close()
        assert stats.snapshot()["dropped"] == {"refused_by_mixpanel": 1}

    @pytest.mark.parametrize("key", ["insert_id", "$insert_id"])
    def test_failed_records_by_insert_id(self, key: str) -> None:
        """An entry without an index is matched by $insert_id (either spelling)."""
        batch = Batch(Endpoint.IMPORT)
        for message in events(3):
            batch.add(message, json.dumps(message.payload(None)).encode())
        body = json.dumps({"failed_records": [{key: "id-2", "message": "x"}]}).encode()
        answer = read_response(batch, HTTPResponse(400, body))
        assert answer.rejected == {2: "x"} and answer.accepted == 2

    def test_engage_resends_only_what_was_not_accepted(self, mixpanel: LocalMixpanel) -> None:
        """A 503 accepted nothing, so the updates stay; then Mixpanel refuses one
        update by name: only it is dropped, and nothing accepted is sent again."""
        mixpanel.fail_next(1, status=503)
        mixpanel.refuse_records(
            lambda update: "bad value" if "n0" in update.get("$add", {}) else None
        )
        updates: List[Message] = [ProfileUpdate("u", "$add", {f"n{i}": 1}) for i in range(3)]
        with sending_queue(settings_for(mixpanel)) as queue:
            queue.submit(updates)
            assert queue.flush(5)
            stats = queue.stats.snapshot()
        assert sizes(mixpanel) == [3, 1, 2]
        assert mixpanel.profiles == {"u": {"n1": 1, "n2": 1}}
        assert len(mixpanel.profile_updates) == 2
        assert stats["dropped"] == {"rejected_by_mixpanel": 1}
        assert stats["sent"] == {"profile_updates": 2}

    @pytest.mark.parametrize("lost", ["read_timeout", "dropped_connection"])
    def test_lost_answer_never_resends_non_idempotent_updates(
        self, mixpanel: LocalMixpanel, lost: str
    ) -> None:
        """After the request was sent and its answer lost, it may have been applied:
        $add/$append are not sent again (counted outcome_unknown), $set is."""
        if lost == "read_timeout":  # applied, but answered after the client gave up
            mixpanel.fail_next(1, status=None, delay=1.0)
        else:
            mixpanel.fail_next(1, drop_connection=True)
        updates: Sequence[Message] = [
            ProfileUpdate("u", "$add", {"logins": 1}),
            ProfileUpdate("u", "$set", {"plan": "pro"}),
            ProfileUpdate("u", "$append", {"$transactions": {"$amount": 1}}),
        ]
        with sending_queue(settings_for(mixpanel, timeout=0.3)) as queue:
            queue.submit(list(updates))
            assert queue.flush(5)
            stats = queue.stats.snapshot()
        assert stats["dropped"] == {"outcome_unknown": 2}
        if lost == "read_timeout":
            assert mixpanel.wait_for(lambda m: len(m.profile_updates) == 4)
            assert mixpanel.profiles["u"]["logins"] == 1  # applied once, never twice
            assert mixpanel.profiles["u"]["$transactions"] == [{"$amount": 1}]
        else:
            assert "logins" not in mixpanel.profiles["u"]  # at most once: here not at all
        resends = [r.json() for r in mixpanel.requests if r.status == 200 and len(r.json()) == 1]
        assert [update[0]["$set"] for update in resends] == [{"plan": "pro"}]
        assert mixpanel.profiles["u"]["plan"] == "pro"

    def test_read_timeout_resends_events(self, mixpanel: LocalMixpanel) -> None:
        """Events are resent after a lost answer: their $insert_id lets Mixpanel dedupe."""
        mixpanel.fail_next(1, status=None, delay=1.0)
        with sending_queue(settings_for(mixpanel, timeout=0.3)) as queue:
            queue.submit(events(2))
            assert queue.flush(5)
            assert queue.stats.snapshot()["dropped"] == {}
        assert mixpanel.wait_for(lambda m: len(m.events) == 4)
        first, *resent = sorted(mixpanel.requests, key=lambda r: -len(r.json()))
        assert len(first.json()) == 2 and [len(r.json()) for r in resent] == [1, 1]
        assert sorted((e for r in resent for e in r.json()), key=json.dumps) == sorted(
            first.json(), key=json.dumps)
        assert len(mixpanel.unique_events()) == 2
