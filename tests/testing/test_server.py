"""LocalMixpanel over real HTTP: authentication, bodies, limits, answers, faults, lifecycle."""

from __future__ import annotations

import gzip
import json
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
import requests
import yaml
from jsonschema import Draft7Validator

from otel_mixpanel.testing import LocalMixpanel, ReceivedRequest, Rejection

# Mixpanel's own contract, vendored with its MIT notice (data/README.md).
OPENAPI_PATH = Path(__file__).parent / "data" / "ingestion.openapi.yaml"


def now_ms() -> int:
    """The current time in milliseconds, as the exporter sends it."""
    return int(time.time() * 1000)


def make_event(
    name: str = "Signed Up", distinct_id: str = "u1", insert_id: str = "e-1", **extra: object
) -> Dict[str, Any]:
    """A valid /import record."""
    properties: Dict[str, Any] = {
        "time": now_ms(),
        "distinct_id": distinct_id,
        "$insert_id": insert_id,
    }
    properties.update(extra)
    return {"event": name, "properties": properties}


@pytest.fixture
def mixpanel() -> Iterator[LocalMixpanel]:
    """A fresh server per test, always stopped."""
    with LocalMixpanel() as server:
        yield server


@pytest.fixture
def session() -> Iterator[requests.Session]:
    """A keep-alive client session, always closed."""
    with requests.Session() as client:
        yield client


def post_import(
    session: requests.Session,
    mixpanel: LocalMixpanel,
    records: object,
    *,
    auth: Optional[tuple[str, str]] = None,
    query: str = "strict=1",
    timeout: float = 5.0,
    **kwargs: Any,
) -> requests.Response:
    """POST ``records`` as JSON to /import with the token (or ``auth``)."""
    if "data" not in kwargs:
        kwargs["json"] = records
    return session.post(
        f"{mixpanel.url}/import?{query}",
        auth=auth or (mixpanel.token, ""),
        timeout=timeout,
        **kwargs,
    )


def post_engage(
    session: requests.Session,
    mixpanel: LocalMixpanel,
    updates: object,
    *,
    query: str = "verbose=1",
    path: str = "/engage",
    **kwargs: Any,
) -> requests.Response:
    """POST ``updates`` as JSON to /engage (or ``path``)."""
    if "data" not in kwargs:
        kwargs["json"] = updates
    return session.post(f"{mixpanel.url}{path}?{query}", timeout=5, **kwargs)


# Authentication


def test_token_auth_with_empty_password_is_accepted(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """The project token as username and an empty password authenticate /import."""
    response = post_import(session, mixpanel, [make_event()])
    assert response.status_code == 200
    assert response.json() == {"code": 200, "num_records_imported": 1, "status": "OK"}
    assert len(mixpanel.events) == 1


def test_service_account_with_project_id_is_accepted(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """A service account authenticates /import together with ?project_id=."""
    response = post_import(
        session,
        mixpanel,
        [make_event()],
        auth=mixpanel.service_account,
        query=f"strict=1&project_id={mixpanel.project_id}",
    )
    assert response.status_code == 200
    assert len(mixpanel.events) == 1


@pytest.mark.parametrize(
    "auth",
    [("wrong-token", ""), ("local-token", "not-empty"), ("local-sa", "wrong-secret"), None],
    ids=["wrong-token", "token-with-password", "wrong-secret", "no-credentials"],
)
def test_bad_credentials_get_401(
    mixpanel: LocalMixpanel, session: requests.Session, auth: Optional[tuple[str, str]]
) -> None:
    """Wrong or missing credentials are answered 401 with Mixpanel's body; nothing accepted."""
    url = f"{mixpanel.url}/import?strict=1&project_id=1"
    response = session.post(url, json=[make_event()], auth=auth, timeout=5)
    assert response.status_code == 401
    assert response.json() == {
        "code": 401,
        "error": "Invalid credentials",
        "status": "Unauthorized",
    }
    assert mixpanel.events == []


def test_service_account_without_project_id_gets_400(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """A service account without ?project_id= is a 400 whose error names project_id."""
    response = post_import(session, mixpanel, [make_event()], auth=mixpanel.service_account)
    assert response.status_code == 400
    assert "project_id" in response.json()["error"]
    assert mixpanel.events == []


def test_service_account_with_wrong_project_id_gets_401(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """A service account with another project's id is a 401 naming that project_id."""
    response = post_import(
        session, mixpanel, [make_event()], auth=mixpanel.service_account, query="project_id=2"
    )
    assert response.status_code == 401
    assert "project_id" in response.json()["error"]
    assert mixpanel.events == []


# /import bodies and limits


def test_gzip_body_is_decompressed(mixpanel: LocalMixpanel, session: requests.Session) -> None:
    """Content-Encoding: gzip is accepted on /import; the raw body is kept as sent."""
    body = gzip.compress(json.dumps([make_event()]).encode())
    response = post_import(
        session,
        mixpanel,
        None,
        data=body,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert response.status_code == 200
    assert mixpanel.events == [mixpanel.requests[0].json()[0]]
    assert mixpanel.requests[0].body == body
    assert mixpanel.requests[0].headers["content-encoding"] == "gzip"


def test_ndjson_body_is_accepted(mixpanel: LocalMixpanel, session: requests.Session) -> None:
    """application/x-ndjson carries one record per line."""
    records = [make_event(insert_id="a"), make_event(insert_id="b")]
    body = "\n".join(json.dumps(record) for record in records) + "\n"
    response = post_import(
        session, mixpanel, None, data=body, headers={"Content-Type": "application/x-ndjson"}
    )
    assert response.status_code == 200
    assert response.json()["num_records_imported"] == 2
    assert mixpanel.events == records


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"not gzip", {"Content-Encoding": "gzip"}),
        (b"[{", {}),
        (b'{"event": "x"}', {}),
        (b"[]", {}),
    ],
    ids=["bad-gzip", "bad-json", "not-an-array", "empty"],
)
def test_malformed_import_body_gets_400(
    mixpanel: LocalMixpanel, session: requests.Session, body: bytes, headers: Dict[str, str]
) -> None:
    """A body that is not a non-empty JSON array of records is a 400 with an error."""
    response = post_import(session, mixpanel, None, data=body, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]
    assert mixpanel.events == []


def test_too_many_records_get_413() -> None:
    """More than max_records records is a 413 naming the limit; nothing is accepted."""
    with LocalMixpanel(max_records=3) as mixpanel, requests.Session() as session:
        records = [make_event(insert_id=f"e-{index}") for index in range(4)]
        response = post_import(session, mixpanel, records)
        assert response.status_code == 413
        assert response.json() == {
            "code": 413,
            "error": "request exceeds max limit of 3 records",
            "status": "Request Entity Too Large",
        }
        assert post_import(session, mixpanel, records[:3]).status_code == 200
        assert len(mixpanel.events) == 3


def test_too_many_bytes_get_413_measured_uncompressed() -> None:
    """More than max_bytes of uncompressed JSON is a 413, even when the gzip body is small."""
    with LocalMixpanel(max_bytes=2000) as mixpanel, requests.Session() as session:
        records = [make_event(insert_id=f"e-{index}", note="x" * 200) for index in range(10)]
        raw = json.dumps(records).encode()
        compressed = gzip.compress(raw)
        assert len(raw) > 2000 > len(compressed)
        response = post_import(
            session, mixpanel, None, data=compressed, headers={"Content-Encoding": "gzip"}
        )
        assert response.status_code == 413
        assert response.json() == {
            "code": 413,
            "error": "request exceeds max limit of 2000 bytes",
            "status": "Request Entity Too Large",
        }
        assert mixpanel.events == []


def test_strict_partial_failure_is_400_and_keeps_valid_records(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """With strict=1, invalid records are listed in a 400, and the valid ones are accepted."""
    bad = make_event(insert_id="bad-1")
    bad["properties"]["time"] = "yesterday"
    good = make_event(insert_id="good-1")
    response = post_import(session, mixpanel, [bad, good])
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == 400
    assert body["error"] == "some data points in the request failed validation"
    assert body["status"] == "Bad Request"
    assert body["num_records_imported"] == 1
    [failed] = body["failed_records"]
    assert failed["index"] == 0
    assert failed["insert_id"] == "bad-1"
    assert failed["field"] == "properties.time"
    assert failed["message"]
    assert mixpanel.events == [good]
    assert mixpanel.rejected == [Rejection("/import", 0, bad, failed["message"])]


def test_without_strict_invalid_records_are_skipped_silently(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """Without strict=1 the answer is 200; invalid records are only visible in `rejected`."""
    bad = make_event(distinct_id="anonymous")
    good = make_event(insert_id="good-1")
    response = post_import(session, mixpanel, [bad, good], query="")
    assert response.status_code == 200
    assert response.json() == {"code": 200, "num_records_imported": 1, "status": "OK"}
    assert mixpanel.events == [good]
    assert [rejection.record for rejection in mixpanel.rejected] == [bad]


def test_unique_events_drop_duplicates_by_mixpanel_key(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """Resent events (same event, distinct_id, time, $insert_id) count once; the first wins."""
    first = make_event(insert_id="same", note="first")
    resent = json.loads(json.dumps(first))
    resent["properties"]["note"] = "second"
    later = json.loads(json.dumps(first))
    later["properties"]["time"] += 1
    other = make_event(name="Paid", insert_id="same")
    assert post_import(session, mixpanel, [first, resent]).status_code == 200
    assert post_import(session, mixpanel, [later, other]).status_code == 200
    assert len(mixpanel.events) == 4
    assert mixpanel.unique_events() == [first, later, other]
    assert mixpanel.events_named("Signed Up") == [first, later]
    assert mixpanel.events_named("Nothing") == []


def test_accessors_return_copies(mixpanel: LocalMixpanel, session: requests.Session) -> None:
    """Mutating what an accessor returned does not change the server's state."""
    post_import(session, mixpanel, [make_event()])
    mixpanel.events[0]["properties"]["distinct_id"] = "changed"
    mixpanel.unique_events()[0]["event"] = "changed"
    assert mixpanel.events == mixpanel.unique_events()
    assert mixpanel.events[0]["properties"]["distinct_id"] == "u1"
    assert mixpanel.events[0]["event"] == "Signed Up"


# /engage and /groups answers


def test_engage_refuses_gzip(mixpanel: LocalMixpanel, session: requests.Session) -> None:
    """/engage does not take gzip: 400 with Mixpanel's body, nothing applied."""
    update = {"$token": mixpanel.token, "$distinct_id": "u1", "$set": {"plan": "pro"}}
    response = post_engage(
        session,
        mixpanel,
        None,
        data=gzip.compress(json.dumps([update]).encode()),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json() == {"status": 0, "error": "gzip is not supported on this endpoint"}
    assert mixpanel.profile_updates == []
    assert mixpanel.profiles == {}


@pytest.mark.parametrize(
    ("query", "expected"),
    [("verbose=1", {"status": 1, "error": None}), ("", 1)],
    ids=["verbose", "plain"],
)
@pytest.mark.parametrize("path", ["/engage", "/groups"])
def test_update_endpoints_answer_success(
    mixpanel: LocalMixpanel, session: requests.Session, query: str, expected: object, path: str
) -> None:
    """All-valid updates: 200 and {"status":1,"error":null} with verbose=1, else plain 1."""
    identity = (
        {"$distinct_id": "u1"} if path == "/engage" else {"$group_key": "company", "$group_id": "a"}
    )
    update = {"$token": mixpanel.token, **identity, "$set": {"plan": "pro"}}
    response = post_engage(session, mixpanel, [update], query=query, path=path)
    assert response.status_code == 200
    assert response.json() == expected
    accepted = mixpanel.profile_updates if path == "/engage" else mixpanel.group_updates
    assert accepted == [update]


@pytest.mark.parametrize(
    ("query", "expected"),
    [("verbose=1", {"status": 0, "error": "invalid token"}), ("", 0)],
    ids=["verbose", "plain"],
)
def test_update_batch_without_strict_is_refused_whole(
    mixpanel: LocalMixpanel, session: requests.Session, query: str, expected: object
) -> None:
    """Without strict=1 one invalid update refuses the whole batch, still with HTTP 200."""
    good = {"$token": mixpanel.token, "$distinct_id": "u1", "$set": {"plan": "pro"}}
    bad = {"$token": "other", "$distinct_id": "u2", "$set": {"plan": "pro"}}
    response = post_engage(session, mixpanel, [good, bad], query=query)
    assert response.status_code == 200
    assert response.json() == expected
    assert mixpanel.profile_updates == []
    assert mixpanel.profiles == {}
    assert [(item.index, item.record) for item in mixpanel.rejected] == [(0, good), (1, bad)]
    assert mixpanel.rejected[1].reason == "invalid token"


def test_update_batch_with_strict_applies_valid_updates(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """With strict=1 the valid updates are applied and the invalid ones listed by index."""
    good = {"$token": mixpanel.token, "$distinct_id": "u1", "$set": {"plan": "pro"}}
    bad = {"$token": mixpanel.token, "$distinct_id": "u2", "$add": {"logins": "one"}}
    response = post_engage(session, mixpanel, [bad, good], query="verbose=1&strict=1")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == 0
    assert body["error"] == "some data points in the request failed validation"
    assert body["num_records_imported"] == 1
    assert [failed["index"] for failed in body["failed_records"]] == [0]
    assert "$add" in body["failed_records"][0]["message"]
    assert mixpanel.profile_updates == [good]
    assert mixpanel.profiles == {"u1": {"plan": "pro"}}


def test_form_encoded_updates_are_accepted(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """The official SDK's form (data=<json>&verbose=1 in the body) works like a JSON body."""
    update = {"$token": mixpanel.token, "$distinct_id": "u1", "$set": {"plan": "pro"}}
    response = session.post(
        f"{mixpanel.url}/engage",
        data={"data": json.dumps([update]), "verbose": "1", "ip": "0"},
        timeout=5,
    )
    assert response.status_code == 200
    assert response.json() == {"status": 1, "error": None}
    assert mixpanel.profiles == {"u1": {"plan": "pro"}}
    assert mixpanel.requests[0].json() == [update]


@pytest.mark.parametrize(
    ("query", "expected"),
    [("verbose=1", {"status": 0, "error": "invalid request body: "}), ("", 0)],
    ids=["verbose", "plain"],
)
def test_malformed_update_body_is_status_0_with_http_200(
    mixpanel: LocalMixpanel, session: requests.Session, query: str, expected: object
) -> None:
    """A body that is not JSON is refused with HTTP 200 and status 0, as Mixpanel does."""
    response = post_engage(session, mixpanel, None, data=b"[{", query=query)
    assert response.status_code == 200
    body = response.json()
    if isinstance(body, dict):
        # The error goes on to quote the JSON decoder; only its start is ours.
        body["error"] = body["error"][: len("invalid request body: ")]
    assert body == expected
    assert mixpanel.profile_updates == []


def test_too_many_updates_get_413() -> None:
    """More than max_records updates in one request is a 413; nothing is applied."""
    with LocalMixpanel(max_records=2) as mixpanel, requests.Session() as session:
        updates = [
            {"$token": mixpanel.token, "$distinct_id": f"u{index}", "$set": {"n": index}}
            for index in range(3)
        ]
        response = post_engage(session, mixpanel, updates)
        assert response.status_code == 413
        assert response.json()["error"] == "request exceeds max limit of 2 records"
        assert mixpanel.profiles == {}


@pytest.mark.parametrize(("method", "path"), [("GET", "/import"), ("POST", "/track")])
def test_unknown_routes_get_404(
    mixpanel: LocalMixpanel, session: requests.Session, method: str, path: str
) -> None:
    """Only POST /import, /engage and /groups exist; everything else is a 404."""
    response = session.request(method, f"{mixpanel.url}{path}", json=[], timeout=5)
    assert response.status_code == 404
    assert response.json()["code"] == 404
    assert mixpanel.requests[0].status == 404


def test_requests_are_recorded_with_their_answers(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """Each request is kept with method, path, query, headers, raw body, status and answer."""
    event = make_event()
    response = post_import(session, mixpanel, [event], query="strict=1&project_id=1")
    [request] = mixpanel.requests
    assert isinstance(request, ReceivedRequest)
    assert (request.method, request.path) == ("POST", "/import")
    assert request.query == {"strict": "1", "project_id": "1"}
    assert request.headers["Authorization"].startswith("Basic ")
    assert request.headers.get("content-type") == "application/json"
    assert request.status == 200
    assert request.response == response.json()
    assert request.json() == [event]


def test_keep_alive_connection_is_reused(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """Answers carry Content-Length over HTTP/1.1, so one session reuses one connection."""
    first = post_import(session, mixpanel, [make_event(insert_id="a")])
    second = post_import(session, mixpanel, [make_event(insert_id="b")])
    assert first.raw.version == 11
    assert int(first.headers["Content-Length"]) == len(first.content)
    assert second.status_code == 200
    adapter = session.get_adapter(mixpanel.url)
    assert isinstance(adapter, requests.adapters.HTTPAdapter)
    pools = adapter.poolmanager.pools
    # urllib3's pool container refuses plain iteration; keys() is its way.
    assert sum(pools[key].num_connections for key in pools.keys()) == 1  # noqa: SIM118


def test_env_points_the_library_at_the_server(mixpanel: LocalMixpanel) -> None:
    """env() names the token and URL, and the service account only when asked."""
    assert mixpanel.env() == {
        "OTEL_EXPORTER_MIXPANEL_TOKEN": "local-token",
        "OTEL_EXPORTER_MIXPANEL_API_HOST": mixpanel.url,
    }
    assert mixpanel.env(service_account=True) == {
        "OTEL_EXPORTER_MIXPANEL_TOKEN": "local-token",
        "OTEL_EXPORTER_MIXPANEL_API_HOST": mixpanel.url,
        "OTEL_EXPORTER_MIXPANEL_PROJECT_ID": "1",
        "OTEL_EXPORTER_MIXPANEL_SERVICE_ACCOUNT_USERNAME": "local-sa",
        "OTEL_EXPORTER_MIXPANEL_SERVICE_ACCOUNT_SECRET": "local-secret",
    }
    assert mixpanel.url.startswith("http://127.0.0.1:")


def test_clear_forgets_received_data_but_keeps_faults(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """clear() empties events, updates, profiles, requests and rejections, not faults."""
    post_import(session, mixpanel, [make_event(), make_event(distinct_id="null")])
    post_engage(
        session, mixpanel, [{"$token": mixpanel.token, "$distinct_id": "u1", "$set": {"a": 1}}]
    )
    mixpanel.fail_next(status=500)
    mixpanel.clear()
    assert (mixpanel.events, mixpanel.profile_updates, mixpanel.profiles) == ([], [], {})
    assert (mixpanel.requests, mixpanel.rejected) == ([], [])
    assert post_import(session, mixpanel, [make_event()]).status_code == 500


# Faults


def test_fault_answers_status_with_mixpanel_default_body(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """A 429 fault answers Mixpanel's rate-limit body; its records are not accepted."""
    mixpanel.fail_next(status=429)
    response = post_import(session, mixpanel, [make_event()])
    assert response.status_code == 429
    assert response.json() == {
        "code": 429,
        "error": "Project exceeded rate limits. Please retry the request with exponential backoff.",
        "status": "Too Many Requests",
    }
    assert mixpanel.events == []
    assert mixpanel.requests[0].status == 429
    assert post_import(session, mixpanel, [make_event()]).status_code == 200


def test_fault_sends_custom_body_and_headers(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """A fault may carry its own body (text is sent as is) and headers such as Retry-After."""
    mixpanel.fail_next(status=503, headers={"Retry-After": "1"})
    mixpanel.fail_next(status=502, body="<html>Bad Gateway</html>")
    first = post_import(session, mixpanel, [make_event()])
    second = post_import(session, mixpanel, [make_event()])
    assert first.status_code == 503
    assert first.headers["Retry-After"] == "1"
    assert first.json()["code"] == 503
    assert second.status_code == 502
    assert second.text == "<html>Bad Gateway</html>"
    assert mixpanel.events == []


def test_faults_apply_in_order_and_count(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """Faults queue up: `count` requests get each, in the order they were scripted."""
    mixpanel.fail_next(2, status=503)
    mixpanel.fail_next(status=429)
    statuses = [post_import(session, mixpanel, [make_event()]).status_code for _ in range(4)]
    assert statuses == [503, 503, 429, 200]
    assert mixpanel.pending_faults == 0
    assert len(mixpanel.events) == 1


def test_endpoint_fault_only_hits_that_endpoint(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """A fault for "/engage" leaves /import requests alone until an /engage request comes."""
    mixpanel.fail_next(status=500, endpoint="/engage")
    update = {"$token": mixpanel.token, "$distinct_id": "u1", "$set": {"a": 1}}
    assert post_import(session, mixpanel, [make_event()]).status_code == 200
    assert post_engage(session, mixpanel, [update]).status_code == 500
    assert post_engage(session, mixpanel, [update]).status_code == 200
    assert len(mixpanel.profile_updates) == 1


def test_drop_connection_fault_is_a_connection_error(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """drop_connection closes the socket unanswered: the client sees a connection error."""
    mixpanel.fail_next(drop_connection=True)
    with pytest.raises(requests.ConnectionError):
        post_import(session, mixpanel, [make_event()])
    assert mixpanel.events == []
    [dropped] = mixpanel.requests
    assert (dropped.status, dropped.response) == (0, None)
    assert post_import(session, mixpanel, [make_event()]).status_code == 200


def test_delay_fault_with_status_times_out_a_client(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """A delayed fault holds the answer back long enough for a short client timeout to fire."""
    mixpanel.fail_next(status=503, delay=0.5)
    with pytest.raises(requests.Timeout):
        post_import(session, mixpanel, [make_event()], timeout=0.1)
    assert mixpanel.wait_for(lambda m: len(m.requests) == 1, timeout=3)
    assert mixpanel.requests[0].status == 503
    assert mixpanel.events == []


def test_slow_but_normal_fault_is_handled_after_the_delay(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """status=None with a delay answers normally, late, and accepts the records."""
    mixpanel.fail_next(status=None, delay=0.3)
    started = time.monotonic()
    response = post_import(session, mixpanel, [make_event()])
    assert time.monotonic() - started >= 0.29
    assert response.status_code == 200
    assert len(mixpanel.events) == 1


def test_latency_slows_every_request(mixpanel: LocalMixpanel, session: requests.Session) -> None:
    """`latency` is added before every answer."""
    mixpanel.latency = 0.1
    started = time.monotonic()
    for index in range(3):
        post_import(session, mixpanel, [make_event(insert_id=f"e-{index}")])
    assert time.monotonic() - started >= 0.29
    assert len(mixpanel.events) == 3


# Fault windows


def _import_until_not(
    session: requests.Session, mixpanel: LocalMixpanel, status: int, *, within: float = 3.0
) -> int:
    """POST to /import every 50 ms until the answer is not ``status``; the answer it gets."""
    deadline = time.monotonic() + within
    while True:
        answered = post_import(session, mixpanel, [make_event()]).status_code
        if answered != status or time.monotonic() > deadline:
            return answered
        time.sleep(0.05)


def test_fail_for_answers_503_until_the_window_ends(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """Every request in the window gets the fault; after it, requests are handled again."""
    started = time.monotonic()
    mixpanel.fail_for(0.3, status=503)
    first = post_import(session, mixpanel, [make_event()])
    assert first.status_code == 503
    assert first.json()["code"] == 503
    assert _import_until_not(session, mixpanel, 503) == 200
    assert time.monotonic() - started >= 0.29
    statuses = [request.status for request in mixpanel.requests]
    assert statuses[-1] == 200
    assert set(statuses[:-1]) == {503}
    assert len(mixpanel.events) == 1
    assert mixpanel.pending_faults == 0  # windows are not counted


def test_fail_for_passes_retry_after_through(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """A window's status, headers and Mixpanel's default body reach the client as scripted."""
    mixpanel.fail_for(2, status=429, headers={"Retry-After": "1"})
    response = post_import(session, mixpanel, [make_event()])
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert response.json()["error"].startswith("Project exceeded rate limits")
    assert mixpanel.events == []


def test_fail_for_reset_connection_is_a_connection_error(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """reset_connection reads the request, then resets the connection: a ConnectionError."""
    mixpanel.fail_for(2, reset_connection=True)
    with pytest.raises(requests.ConnectionError) as raised:
        post_import(session, mixpanel, [make_event()])
    assert "ConnectionResetError" in repr(raised.value)  # an RST, not a FIN
    [reset] = mixpanel.requests
    assert (reset.status, reset.response) == (0, None)
    assert reset.json()[0]["event"] == "Signed Up"  # the request was read before the reset
    assert mixpanel.events == []
    mixpanel.clear_faults()
    assert post_import(session, mixpanel, [make_event()]).status_code == 200


def test_fail_for_without_status_holds_then_stores(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """status=None with a delay holds each request, then stores it; a request held inside the
    window completes its delay even when the window ends first."""
    mixpanel.fail_for(0.3, status=None, delay=0.4)
    started = time.monotonic()
    response = post_import(session, mixpanel, [make_event()])
    assert time.monotonic() - started >= 0.39
    assert response.status_code == 200
    assert len(mixpanel.events) == 1
    started = time.monotonic()
    assert post_import(session, mixpanel, [make_event(insert_id="e-2")]).status_code == 200
    assert time.monotonic() - started < 0.35  # the window is over: no delay
    assert len(mixpanel.events) == 2


def test_fail_for_endpoint_only_hits_that_endpoint(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """A window for "engage" (any spelling of the path) leaves /import alone."""
    mixpanel.fail_for(2, status=500, endpoint="engage/")
    update = {"$token": mixpanel.token, "$distinct_id": "u1", "$set": {"a": 1}}
    assert post_import(session, mixpanel, [make_event()]).status_code == 200
    assert post_engage(session, mixpanel, [update]).status_code == 500
    assert post_engage(session, mixpanel, [update]).status_code == 500
    assert len(mixpanel.events) == 1
    assert mixpanel.profile_updates == []


def test_counted_faults_take_precedence_over_a_window(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """fail_next faults are used up first; the window then applies to what is left of it."""
    mixpanel.fail_for(2, status=503)
    mixpanel.fail_next(status=429)
    assert mixpanel.pending_faults == 1
    statuses = [post_import(session, mixpanel, [make_event()]).status_code for _ in range(2)]
    assert statuses == [429, 503]
    assert mixpanel.pending_faults == 0


def test_clear_faults_forgets_counted_faults_and_windows(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """clear_faults() ends every scripted fault at once; clear() keeps them."""
    mixpanel.fail_next(2, status=429)
    mixpanel.fail_for(30, status=503)
    mixpanel.clear()
    assert post_import(session, mixpanel, [make_event()]).status_code == 429
    mixpanel.clear_faults()
    assert mixpanel.pending_faults == 0
    assert post_import(session, mixpanel, [make_event()]).status_code == 200
    assert len(mixpanel.events) == 1


def test_fail_for_refuses_nonsense(mixpanel: LocalMixpanel) -> None:
    """Negative durations and delays, or both ways of hanging up at once, are errors."""
    with pytest.raises(ValueError):
        mixpanel.fail_for(-1)
    with pytest.raises(ValueError):
        mixpanel.fail_for(1, delay=-1)
    with pytest.raises(ValueError):
        mixpanel.fail_for(1, drop_connection=True, reset_connection=True)
    with pytest.raises(ValueError):
        mixpanel.fail_next(-1)
    assert mixpanel.pending_faults == 0


# Waiting and lifecycle


def test_wait_for_wakes_on_a_request_from_another_thread(mixpanel: LocalMixpanel) -> None:
    """wait_for returns True as soon as a request makes the predicate hold."""

    def send_later() -> None:
        time.sleep(0.2)
        with requests.Session() as client:
            post_import(client, mixpanel, [make_event()])

    sender = threading.Thread(target=send_later)
    sender.start()
    try:
        started = time.monotonic()
        assert mixpanel.wait_for(lambda m: len(m.events_named("Signed Up")) == 1, timeout=5)
        assert time.monotonic() - started < 4
    finally:
        sender.join()


def test_wait_for_returns_false_after_timeout(mixpanel: LocalMixpanel) -> None:
    """wait_for gives up after the timeout and returns the predicate's last result."""
    started = time.monotonic()
    assert not mixpanel.wait_for(lambda m: bool(m.events), timeout=0.3)
    assert 0.29 <= time.monotonic() - started < 2


def test_stop_leaves_no_threads_behind() -> None:
    """After stop(), no server or connection thread is left, even with open keep-alives."""
    before = set(threading.enumerate())
    mixpanel = LocalMixpanel().start()
    session = requests.Session()
    try:
        post_import(session, mixpanel, [make_event()])
        mixpanel.fail_next(status=503, delay=30)
        outcomes: List[object] = []

        def send_slow_request() -> None:
            try:
                outcomes.append(requests.post(mixpanel.url + "/import", json=[], timeout=10))
            except requests.RequestException as error:
                outcomes.append(error)

        slow = threading.Thread(target=send_slow_request)
        slow.start()
        assert mixpanel.wait_for(lambda m: m.pending_faults == 0, timeout=5)
        started = time.monotonic()
        mixpanel.stop()
        assert time.monotonic() - started < 5
        slow.join(timeout=5)
        # Stopping answers the delayed request at once rather than after 30 s.
        assert len(outcomes) == 1
    finally:
        session.close()
        mixpanel.stop()
    assert set(threading.enumerate()) <= before


def test_stop_is_idempotent_and_url_needs_start() -> None:
    """stop() twice is harmless; url before start() raises; start() twice keeps one server."""
    mixpanel = LocalMixpanel()
    with pytest.raises(RuntimeError):
        _ = mixpanel.url
    assert mixpanel.start() is mixpanel
    url = mixpanel.url
    assert mixpanel.start().url == url
    mixpanel.stop()
    mixpanel.stop()
    with pytest.raises(requests.ConnectionError):
        requests.post(url + "/import", json=[], timeout=2)


# Mixpanel's own request schemas


def _openapi() -> Dict[str, Any]:
    with OPENAPI_PATH.open(encoding="utf-8") as file:
        document: Dict[str, Any] = yaml.safe_load(file)
    return document


def _as_json_schema(schema: Any) -> Any:
    """OpenAPI 3.0's `nullable: true` is not JSON Schema: spell it as a "null" type."""
    if isinstance(schema, dict):
        converted = {key: _as_json_schema(value) for key, value in schema.items()}
        if converted.pop("nullable", False) and "type" in converted:
            converted["type"] = [converted["type"], "null"]
        return converted
    if isinstance(schema, list):
        return [_as_json_schema(item) for item in schema]
    return schema


def _request_schema(document: Dict[str, Any], path: str) -> Dict[str, Any]:
    body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    schema: Dict[str, Any] = _as_json_schema(body["schema"])
    schema["components"] = document.get("components", {})
    return schema


# Mistakes in Mixpanel's schemas: the operation they require is not the one they describe.
SCHEMA_ERRATA = {"/groups#group-union": "$unset", "/groups#group-delete": "$set"}


def _schema_errors(document: Dict[str, Any], path: str, payload: List[Any]) -> List[str]:
    schema = _request_schema(document, path)
    wrong_requirement = SCHEMA_ERRATA.get(path)
    if wrong_requirement is not None:
        required = schema["items"]["required"]
        assert wrong_requirement in required, f"{path} was fixed: drop it from SCHEMA_ERRATA"
        required.remove(wrong_requirement)
    return [error.message for error in Draft7Validator(schema).iter_errors(payload)]


def test_accepted_payloads_match_mixpanels_request_schemas(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """Every payload the server accepts also satisfies Mixpanel's own OpenAPI request schema."""
    document = _openapi()
    token = mixpanel.token
    user = {"$token": token, "$distinct_id": "u1", "$ip": "0"}
    group = {"$token": token, "$group_key": "company", "$group_id": "acme"}
    identity = {"$insert_id": "i-1", "time": now_ms(), "distinct_id": "u1"}
    cases: List[tuple[str, str, List[Any]]] = [
        ("/import", "/import", [make_event(plan="pro")]),
        (
            "/import",
            "/import",
            [{"event": "$identify", "properties": {**identity, "$anon_id": "a1"}}],
        ),
        ("/engage", "/engage#profile-set", [{**user, "$set": {"plan": "pro"}}]),
        ("/engage", "/engage#profile-set-once", [{**user, "$set_once": {"first": "x"}}]),
        ("/engage", "/engage#profile-numerical-add", [{**user, "$add": {"logins": 1}}]),
        ("/engage", "/engage#profile-union", [{**user, "$union": {"tags": ["a", 1]}}]),
        (
            "/engage",
            "/engage#profile-list-append",
            [{**user, "$append": {"$transactions": {"$amount": 9.99}}}],
        ),
        ("/engage", "/engage#profile-list-remove", [{**user, "$remove": {"tags": "a"}}]),
        ("/engage", "/engage#profile-unset", [{**user, "$unset": ["tags"]}]),
        ("/engage", "/engage#profile-delete", [{**user, "$delete": None}]),
        ("/groups", "/groups#group-set", [{**group, "$set": {"tier": "gold"}}]),
        ("/groups", "/groups#group-set-once", [{**group, "$set_once": {"since": 2020}}]),
        ("/groups", "/groups#group-union", [{**group, "$union": {"tags": ["a"]}}]),
        ("/groups", "/groups#group-remove-from-list", [{**group, "$remove": {"tags": "a"}}]),
        ("/groups", "/groups#group-unset", [{**group, "$unset": ["tags"]}]),
        ("/groups", "/groups#group-delete", [{**group, "$delete": ""}]),
    ]
    for endpoint, schema_path, payload in cases:
        if endpoint == "/import":
            response = post_import(session, mixpanel, payload)
            assert response.json()["code"] == 200, response.text
        else:
            response = post_engage(session, mixpanel, payload, path=endpoint, query="verbose=1")
            assert response.json() == {"status": 1, "error": None}, (schema_path, response.text)
        assert _schema_errors(document, schema_path, payload) == [], schema_path


def test_refuse_records_partial_import_and_engage() -> None:
    """A scripted rule refuses matching records; the rest of the request is accepted."""
    with LocalMixpanel() as server:
        server.refuse_records(
            lambda record: "blocked" if "blocked" in str(record) else None
        )
        events = [
            {"event": name, "properties": {"time": 1_732_280_000_000, "distinct_id": "u",
                                           "$insert_id": f"id-{i}"}}
            for i, name in enumerate(["ok", "blocked", "ok2"])
        ]
        response = requests.post(
            f"{server.url}/import?strict=1", data=gzip.compress(json.dumps(events).encode()),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            auth=(server.token, ""), timeout=5,
        )
        assert response.status_code == 400
        assert [f["index"] for f in response.json()["failed_records"]] == [1]
        assert [e["event"] for e in server.events] == ["ok", "ok2"]
        updates = [{"$token": server.token, "$distinct_id": "u", "$set": {"a": v}}
                   for v in ("x", "blocked")]
        answer = requests.post(f"{server.url}/engage?verbose=1&strict=1", json=updates, timeout=5)
        assert answer.json()["failed_records"] == [{"index": 1, "message": "blocked"}]
        assert server.profiles["u"] == {"a": "x"}
        server.refuse_records(None)
        assert requests.post(f"{server.url}/engage?verbose=1", json=updates[1:],
                             timeout=5).json() == {"status": 1, "error": None}
