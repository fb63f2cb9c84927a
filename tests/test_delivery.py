"""Delivery against the local Mixpanel: auth, gzip, regions, batching and
reading Mixpanel's answers into per-batch results."""

from __future__ import annotations

import gzip
import json
import time
from typing import List, Mapping, Tuple

import pytest

from otel_mixpanel._batch import Batch
from otel_mixpanel._config import resolve_settings
from otel_mixpanel._delivery import Delivery
from otel_mixpanel._model import Endpoint, Event, GroupUpdate, Message, ProfileUpdate
from otel_mixpanel._responses import read_response
from otel_mixpanel._stats import Stats
from otel_mixpanel._transport import HTTPResponse, Transport
from otel_mixpanel.testing import LocalMixpanel

T0 = 1_732_280_000_000


def event(name: str = "E", i: int = 0, **extra: object) -> Event:
    return Event(name, {"time": T0 + i, "distinct_id": "u", "$insert_id": f"id-{i}", **extra})


def delivery_for(mixpanel: LocalMixpanel, **settings: object) -> Delivery:
    options: dict[str, object] = {"token": mixpanel.token, "api_host": mixpanel.url}
    options.update(settings)
    return Delivery(resolve_settings(environ={}, **options))  # type: ignore[arg-type]


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
        result = delivery_for(mixpanel).deliver(
            [event(), ProfileUpdate("u", "$set", {"a": 1})]
        )
        assert result.ok
        import_request, engage_request = mixpanel.requests
        assert import_request.headers.get("Content-Encoding") == "gzip"
        assert json.loads(gzip.decompress(import_request.body))[0]["event"] == "E"
        assert "Content-Encoding" not in engage_request.headers
        assert json.loads(engage_request.body)[0]["$set"] == {"a": 1}
        assert engage_request.query.get("verbose") == "1"
        assert import_request.query.get("strict") == "1"

    def test_compression_none(self, mixpanel: LocalMixpanel) -> None:
        """compression='none' sends plain JSON."""
        assert delivery_for(mixpanel, compression="none").deliver([event()]).ok
        (request,) = mixpanel.requests
        assert "Content-Encoding" not in request.headers
        assert json.loads(request.body)[0]["event"] == "E"

    def test_token_auth(self, mixpanel: LocalMixpanel) -> None:
        """The project token as Basic username authenticates /import."""
        assert delivery_for(mixpanel).deliver([event()]).ok
        assert len(mixpanel.events) == 1
        assert "project_id" not in mixpanel.requests[0].query

    def test_service_account_auth(self, mixpanel: LocalMixpanel) -> None:
        """A service account plus project_id authenticates /import; the token fills $token."""
        user, secret = mixpanel.service_account
        delivery = delivery_for(
            mixpanel, service_account_username=user, service_account_secret=secret,
            project_id=mixpanel.project_id,
        )
        assert delivery.deliver([event(), ProfileUpdate("u", "$set", {"a": 1})]).ok
        assert mixpanel.requests[0].query["project_id"] == mixpanel.project_id
        assert len(mixpanel.events) == 1
        assert mixpanel.profiles == {"u": {"a": 1}}

    def test_service_account_alone_drops_updates(self, mixpanel: LocalMixpanel) -> None:
        """Without a token, profile updates cannot be sent: dropped, counted, events still go."""
        user, secret = mixpanel.service_account
        delivery = Delivery(resolve_settings(
            environ={}, api_host=mixpanel.url, service_account_username=user,
            service_account_secret=secret, project_id=mixpanel.project_id,
        ))
        assert delivery.deliver([event(), ProfileUpdate("u", "$set", {"a": 1})]).ok
        assert len(mixpanel.events) == 1 and mixpanel.profile_updates == []
        assert delivery.stats.snapshot()["dropped"] == {"no_project_token": 1}

    def test_wrong_token_is_one_clear_error(
        self, mixpanel: LocalMixpanel, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A 401 names the credential and region problem and never echoes the token."""
        delivery = delivery_for(mixpanel, token="wrong-token-123")
        result = delivery.deliver([event()])
        (batch,) = result.batches
        assert not result.ok and batch.status == 401
        assert "credentials" in str(batch.error)
        assert len(mixpanel.requests) == 1  # never retried
        assert "region" in caplog.text
        assert "wrong-token-123" not in caplog.text

    @pytest.mark.parametrize(
        ("region", "host"),
        [("us", "api.mixpanel.com"), ("eu", "api-eu.mixpanel.com"), ("in", "api-in.mixpanel.com")],
    )
    def test_every_endpoint_honours_the_region(self, region: str, host: str) -> None:
        """All three endpoints go to the region's host, over https."""
        capture = Capture()
        delivery = Delivery(resolve_settings(token="t", region=region, environ={}),
                            transport=capture)
        delivery.deliver([event(), ProfileUpdate("u", "$set", {"a": 1}),
                          *_group_update()])
        urls = [call[0] for call in capture.calls]
        assert [u.split("?")[0] for u in urls] == [
            f"https://{host}/import", f"https://{host}/engage", f"https://{host}/groups",
        ]
        assert all(0 < call[3] <= 10 for call in capture.calls)  # always a finite timeout

    def test_batches_split_by_count(self, mixpanel: LocalMixpanel) -> None:
        """4500 events take three requests, all accepted by the server's 2000 limit."""
        assert delivery_for(mixpanel).deliver([event(i=i) for i in range(4500)]).ok
        sizes = [len(r.json()) for r in mixpanel.requests]
        assert sizes == [2000, 2000, 500]
        assert len(mixpanel.unique_events()) == 4500

    def test_batches_split_by_size(self, mixpanel: LocalMixpanel) -> None:
        """Large events are spread so no body passes 2 MiB uncompressed."""
        padding = {f"p{k}": "y" * 250 for k in range(30)}
        events: List[Message] = [event(i=i, **padding) for i in range(400)]
        assert delivery_for(mixpanel).deliver(events).ok
        assert len(mixpanel.requests) >= 2
        assert all(len(gzip.decompress(r.body)) <= 2 * 1024 * 1024 for r in mixpanel.requests)
        assert len(mixpanel.unique_events()) == 400


def _group_update() -> List[Message]:
    return [GroupUpdate("company", "acme", "$set", {"a": 1})]


class TestAnswers:
    def test_partial_import_failure(self, mixpanel: LocalMixpanel) -> None:
        """A 400 with failed_records: the rest counts as accepted, the named one rejected."""
        bad = Event("E", {"time": T0, "distinct_id": "u", "$insert_id": "not valid!"})
        batch = Batch(Endpoint.IMPORT)
        for message in (event(i=1), bad, event(i=2)):
            batch.add(message, json.dumps(message.payload(None)).encode())
        result = delivery_for(mixpanel)._send(batch, deadline=time.monotonic() + 5)
        assert result.status == 400 and result.error is None
        assert result.accepted == 2 and result.undelivered == ()
        assert list(result.rejected) == [1]
        assert "insert_id" in result.rejected[1]
        assert len(mixpanel.events) == 2
        assert len(mixpanel.requests) == 1  # a 400 is never retried

    def test_engage_status_zero_rejects(self, mixpanel: LocalMixpanel) -> None:
        """/engage answers 200 with status 0 for invalid input: read as rejected, not sent."""
        batch = Batch(Endpoint.ENGAGE)
        update = ProfileUpdate("u", "$set", {"a": 1})
        batch.add(update, json.dumps(update.payload("wrong-token")).encode())
        result = delivery_for(mixpanel)._send(batch, deadline=time.monotonic() + 5)
        assert result.status == 200
        assert result.accepted == 0 and len(result.rejected) == 1
        assert mixpanel.profiles == {}

    @pytest.mark.parametrize(
        ("response", "accepted", "retryable"),
        [
            (HTTPResponse(200, b"1"), 1, False),
            (HTTPResponse(200, b"0"), 0, False),
            (HTTPResponse(200, b'{"status":1,"error":null}'), 1, False),
            (HTTPResponse(200, b'{"status":0,"error":"bad"}'), 0, False),
            (HTTPResponse(429, b"{}"), 0, True),
            (HTTPResponse(503, b"oops"), 0, True),
            (HTTPResponse(0, error="ConnectionError"), 0, True),
            (HTTPResponse(400, b'{"error":"bad request"}'), 0, False),
            (HTTPResponse(403, b"{}"), 0, False),
        ],
    )
    def test_read_response(
        self, response: HTTPResponse, accepted: int, retryable: bool
    ) -> None:
        """Each kind of answer maps to accepted, rejected or a (retryable) error."""
        batch = Batch(Endpoint.ENGAGE)
        batch.add(ProfileUpdate("u", "$set", {"a": 1}), b"{}")
        result = read_response(batch, response)
        assert result.accepted == accepted
        assert result.retryable is retryable


def test_stats_count_sent(mixpanel: LocalMixpanel) -> None:
    """Accepted records are counted per kind."""
    delivery = delivery_for(mixpanel)
    delivery.deliver([event(), event(i=1), ProfileUpdate("u", "$set", {"a": 1})])
    assert delivery.stats.snapshot()["sent"] == {"events": 2, "profile_updates": 1}


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
