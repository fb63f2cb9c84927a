"""Delivery against the local Mixpanel: auth, gzip, regions, batching, and
reading Mixpanel's answers record by record."""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
from typing import Any, Iterator, List, Mapping, Optional, Tuple

import pytest

from otel_mixpanel._config import Settings, resolve_settings
from otel_mixpanel._model import Endpoint, Event, GroupUpdate, Message, ProfileUpdate
from otel_mixpanel._queue import Client, SendingQueue
from otel_mixpanel._queue._batch import Batch
from otel_mixpanel._queue._client import loggable
from otel_mixpanel._queue._responses import read_response
from otel_mixpanel._queue._transport import HTTPResponse, Transport
from otel_mixpanel._stats import Stats
from otel_mixpanel.testing import LocalMixpanel
from tests.helpers import FAST

T0 = 1_732_280_000_000




def event(name: str = "E", i: int = 0, **extra: object) -> Event:
    return Event(name, {"time": T0 + i, "distinct_id": "u", "$insert_id": f"id-{i}", **extra})


def settings_for(mixpanel: LocalMixpanel, **options: Any) -> Settings:
    options.setdefault("token", mixpanel.token)
    options.setdefault("api_host", mixpanel.url)
    return resolve_settings(environ={}, **options)


@contextlib.contextmanager
def sending_queue(settings: Settings, transport: Optional[Transport] = None
                  ) -> Iterator[SendingQueue]:
    """A sending queue, closed (within half a second) when the block ends."""
    queue = SendingQueue(settings, transport=transport, retry_policy=FAST)
    try:
        yield queue
    finally:
        queue.close(0.5)


def deliver(settings: Settings, messages: List[Message],
            transport: Optional[Transport] = None) -> SendingQueue:
    """Queue *messages*, wait until Mixpanel answered for all, close; the closed queue."""
    with sending_queue(settings, transport) as queue:
        queue.submit(messages)
        assert queue.flush(10)
    return queue


class Capture(Transport):
    """Records requests and answers 200; for checks that need no server (real hosts)."""

    def __init__(self) -> None:
        self.calls: List[Tuple[str, Mapping[str, str], bytes, float]] = []

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
             ) -> HTTPResponse:
        self.calls.append((url, headers, body, timeout))
        return HTTPResponse(200, b'{"status":1}')


class TestRequests:
    def test_gzip_by_default_on_import_only(self, mixpanel: LocalMixpanel) -> None:
        """/import bodies are gzipped; /engage bodies never are."""
        deliver(settings_for(mixpanel), [event(), ProfileUpdate("u", "$set", {"a": 1})])
        import_request, engage_request = mixpanel.requests
        assert import_request.headers.get("Content-Encoding") == "gzip"
        assert json.loads(gzip.decompress(import_request.body))[0]["event"] == "E"
        assert "Content-Encoding" not in engage_request.headers
        assert json.loads(engage_request.body)[0]["$set"] == {"a": 1}
        assert engage_request.query.get("verbose") == "1"
        assert import_request.query.get("strict") == "1"

    def test_compression_none(self, mixpanel: LocalMixpanel) -> None:
        """compression='none' sends plain JSON."""
        deliver(settings_for(mixpanel, compression="none"), [event()])
        (request,) = mixpanel.requests
        assert "Content-Encoding" not in request.headers
        assert json.loads(request.body)[0]["event"] == "E"

    def test_token_auth(self, mixpanel: LocalMixpanel) -> None:
        """The project token as Basic username authenticates /import."""
        deliver(settings_for(mixpanel), [event()])
        assert len(mixpanel.events) == 1
        assert "project_id" not in mixpanel.requests[0].query

    def test_service_account_auth(self, mixpanel: LocalMixpanel) -> None:
        """A service account plus project_id authenticates /import; the token fills $token."""
        user, secret = mixpanel.service_account
        settings = settings_for(
            mixpanel, service_account_username=user, service_account_secret=secret,
            project_id=mixpanel.project_id,
        )
        queue = deliver(settings, [event(), ProfileUpdate("u", "$set", {"a": 1})])
        assert mixpanel.requests[0].query["project_id"] == mixpanel.project_id
        assert len(mixpanel.events) == 1
        assert mixpanel.profiles == {"u": {"a": 1}}
        assert queue.stats.snapshot()["dropped"] == {}

    def test_service_account_alone_drops_updates(self, mixpanel: LocalMixpanel) -> None:
        """Without a token, profile updates cannot be sent: dropped, counted, events still go."""
        user, secret = mixpanel.service_account
        settings = resolve_settings(
            environ={}, api_host=mixpanel.url, service_account_username=user,
            service_account_secret=secret, project_id=mixpanel.project_id,
        )
        queue = deliver(settings, [event(), ProfileUpdate("u", "$set", {"a": 1})])
        assert len(mixpanel.events) == 1 and mixpanel.profile_updates == []
        assert queue.stats.snapshot()["dropped"] == {"no_project_token": 1}

    def test_wrong_token_is_one_clear_error(
        self, mixpanel: LocalMixpanel, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A 401 names the credential and region problem and never echoes the
        token; the records wait (retried, not dropped) and what waits is counted
        at shutdown."""
        caplog.set_level(logging.WARNING, logger="otel_mixpanel")
        queue = SendingQueue(settings_for(mixpanel, token="wrong-token-123"), retry_policy=FAST)
        try:
            ticket = queue.submit([event()])
            assert not queue.wait(ticket, 5)  # returns at once: Mixpanel refuses
            assert mixpanel.wait_for(lambda m: len(m.requests) >= 3)
            assert queue.stats.snapshot()["dropped"] == {}
            assert queue.waiting()[0] == 1
        finally:
            assert queue.close(0.1) is False
        assert {r.status for r in mixpanel.requests} == {401}
        assert queue.stats.snapshot()["dropped"] == {"undelivered_at_shutdown": 1}
        failed = [r.getMessage() for r in caplog.records if "attempt" in r.getMessage()]
        assert failed and all("refused the credentials (401" in line for line in failed)
        assert "region" in caplog.text
        assert "wrong-token-123" not in caplog.text

    @pytest.mark.parametrize(
        ("region", "host"),
        [("us", "api.mixpanel.com"), ("eu", "api-eu.mixpanel.com"), ("in", "api-in.mixpanel.com")],
    )
    def test_every_endpoint_honours_the_region(self, region: str, host: str) -> None:
        """All three endpoints go to the region's host, over https."""
        capture = Capture()
        deliver(resolve_settings(token="t", region=region, environ={}),
                [event(), ProfileUpdate("u", "$set", {"a": 1}), *_group_update()], capture)
        urls = [call[0] for call in capture.calls]
        assert [u.split("?")[0] for u in urls] == [
            f"https://{host}/import", f"https://{host}/engage", f"https://{host}/groups",
        ]
        assert all(0 < call[3] <= 10 for call in capture.calls)  # always a finite timeout

    def test_batches_split_by_count(self, mixpanel: LocalMixpanel) -> None:
        """4500 events take three requests, all accepted by the server's 2000 limit."""
        deliver(settings_for(mixpanel), [event(i=i) for i in range(4500)])
        sizes = [len(r.json()) for r in mixpanel.requests]
        assert sizes == [2000, 2000, 500]
        assert len(mixpanel.unique_events()) == 4500

    def test_batches_split_by_size(self, mixpanel: LocalMixpanel) -> None:
        """Large events are spread so no body passes 2 MiB uncompressed."""
        padding = {f"p{k}": "y" * 250 for k in range(30)}
        deliver(settings_for(mixpanel), [event(i=i, **padding) for i in range(400)])
        assert len(mixpanel.requests) >= 2
        assert all(len(gzip.decompress(r.body)) <= 2 * 1024 * 1024 for r in mixpanel.requests)
        assert len(mixpanel.unique_events()) == 400

    def test_queued_batches_are_merged_up_to_the_limits(self, mixpanel: LocalMixpanel) -> None:
        """Batches waiting behind one another leave together, oldest first, within
        Mixpanel's limits; the endpoints keep their order of submission."""
        mixpanel.fail_next(1, status=None, delay=0.3)  # hold the first request
        with sending_queue(settings_for(mixpanel)) as queue:
            queue.submit([event(i=0)])
            assert mixpanel.wait_for(lambda m: m.pending_faults == 0)
            for i in range(1, 6):
                queue.submit([event(i=i)])
            queue.submit([ProfileUpdate("u", "$set", {"a": 1})])
            queue.submit([event(i=6)])
            assert queue.flush(5)
        bodies = [r.json() for r in mixpanel.requests]
        paths = [r.path for r in mixpanel.requests]
        assert [len(b) for b in bodies] == [1, 5, 1, 1]
        assert paths == ["/import", "/import", "/engage", "/import"]
        merged = [e["properties"]["$insert_id"] for e in bodies[1]]
        assert merged == [f"id-{i}" for i in range(1, 6)]


def _group_update() -> List[Message]:
    return [GroupUpdate("company", "acme", "$set", {"a": 1})]


def _encoded(messages: List[Message], token: Optional[str] = None) -> List[bytes]:
    return [json.dumps(m.payload(token), separators=(",", ":")).encode() for m in messages]


class TestAnswers:
    def test_partial_import_failure(self, mixpanel: LocalMixpanel) -> None:
        """A 400 with failed_records: the rest counts as accepted, the named one rejected."""
        bad = Event("E", {"time": T0, "distinct_id": "u", "$insert_id": "not valid!"})
        stats = Stats()
        client = Client(settings_for(mixpanel))
        try:
            outcome = client.attempt(
                Endpoint.IMPORT, _encoded([event(i=1), bad, event(i=2)]), 5, stats
            )
        finally:
            client.close()
        assert outcome.status == 400 and outcome.error is None
        assert outcome.remaining == () and not outcome.retry
        assert stats.snapshot()["sent"] == {"events": 2}
        assert stats.snapshot()["dropped"] == {"rejected_by_mixpanel": 1}
        assert len(mixpanel.events) == 2
        assert len(mixpanel.requests) == 1  # a 400 is never retried

    def test_engage_status_zero_rejects(
        self, mixpanel: LocalMixpanel, caplog: pytest.LogCaptureFixture
    ) -> None:
        """/engage answers 200 with status 0 for invalid input: read as rejected, not
        sent, and the log line gives Mixpanel's reason, not just "record"."""
        caplog.set_level(logging.WARNING)
        stats = Stats()
        client = Client(settings_for(mixpanel))
        try:
            update = ProfileUpdate("u", "$set", {"a": 1})
            outcome = client.attempt(Endpoint.ENGAGE, _encoded([update], "wrong-token"), 5, stats)
        finally:
            client.close()
        assert outcome.status == 200 and outcome.remaining == ()
        assert stats.snapshot()["sent"] == {}
        assert stats.snapshot()["dropped"] == {"rejected_by_mixpanel": 1}
        assert mixpanel.profiles == {}
        (line,) = [m for m in caplog.messages if "rejected_by_mixpanel" in m]
        assert "token" in line.split("(", 1)[1]


    @pytest.mark.parametrize(
        ("response", "accepted", "retryable", "credentials"),
        [
            (HTTPResponse(200, b"1"), 1, False, False),
            (HTTPResponse(200, b"0"), 0, False, False),
            (HTTPResponse(200, b'{"status":1,"error":null}'), 1, False, False),
            (HTTPResponse(200, b'{"status":0,"error":"bad"}'), 0, False, False),
            (HTTPResponse(429, b"{}"), 0, True, False),
            (HTTPResponse(503, b"oops"), 0, True, False),
            (HTTPResponse(0, error="ConnectionError"), 0, True, False),
            (HTTPResponse(400, b'{"error":"bad request"}'), 0, False, False),
            (HTTPResponse(401, b"{}"), 0, False, True),
            (HTTPResponse(403, b"{}"), 0, False, True),
        ],
    )
    def test_read_response(
        self, response: HTTPResponse, accepted: int, retryable: bool, credentials: bool
    ) -> None:
        """Each kind of answer maps to accepted, rejected, a retryable error or
        refused credentials."""
        batch = Batch(Endpoint.ENGAGE)
        batch.add(ProfileUpdate("u", "$set", {"a": 1}), b"{}")
        result = read_response(batch, response)
        assert result.accepted == accepted
        assert result.retryable is retryable
        assert result.refused_credentials is credentials

    @pytest.mark.parametrize("code", [401, 403, 429, 503])
    def test_records_wait_on_retryable_answers(self, mixpanel: LocalMixpanel, code: int) -> None:
        """Retryable and credential answers keep every record, nothing counted lost."""
        mixpanel.fail_next(1, status=code)
        stats = Stats()
        client = Client(settings_for(mixpanel))
        try:
            outcome = client.attempt(Endpoint.IMPORT, _encoded([event(i=i) for i in range(3)]),
                                     5, stats)
        finally:
            client.close()
        assert outcome.retry and outcome.remaining == (0, 1, 2) and outcome.status == code
        assert stats.snapshot()["dropped"] == {} and stats.snapshot()["sent"] == {}


def test_stats_count_sent(mixpanel: LocalMixpanel) -> None:
    """Accepted records are counted per kind; nothing waits afterwards."""
    queue = deliver(settings_for(mixpanel),
                    [event(), event(i=1), ProfileUpdate("u", "$set", {"a": 1})])
    snapshot = queue.stats.snapshot()
    assert snapshot["sent"] == {"events": 2, "profile_updates": 1}
    assert snapshot["waiting"] == {"records": 0, "bytes": 0}
    assert set(snapshot) == {"sent", "retried", "dropped", "adjusted", "waiting"}


def test_stats_log_once_per_reason() -> None:
    """A flood of the same drop logs one line, but counts every record."""
    logged: List[str] = []

    class Sink:
        def warning(self, message: str, *args: object) -> None:
            logged.append(message % args)

    stats = Stats(Sink(), clock=lambda: 0.0)  # type: ignore[arg-type]
    for _ in range(1000):
        stats.dropped("non_finite_number", detail="x")
    assert stats.snapshot()["dropped"] == {"non_finite_number": 1000}
    assert len(logged) == 1


@pytest.mark.parametrize(
    ("reason", "logged"),
    [
        ("properties.time: 'x' is not a valid timestamp", "properties.time"),
        ("invalid token", "invalid token"),
        ("'$set' must be an object, got 'alice@example.com'", "… must be an object, got …"),
        ("", "no reason given"),
    ],
)
def test_a_reason_is_logged_without_what_it_quotes(reason: str, logged: str) -> None:
    assert loggable(reason) == logged
