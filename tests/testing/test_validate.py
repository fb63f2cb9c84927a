"""Mixpanel's per-record rules, as LocalMixpanel enforces them over real HTTP."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Iterator, List

import pytest
import requests

from otel_mixpanel.testing import LocalMixpanel
from otel_mixpanel.testing._validate import DENYLISTED_DISTINCT_IDS, event_problem

Properties = Dict[str, Any]


def now_ms() -> int:
    """The current time in milliseconds."""
    return int(time.time() * 1000)


def make_event(**properties: Any) -> Dict[str, Any]:
    """A valid /import record whose properties are overridden by ``properties``."""
    base: Properties = {"time": now_ms(), "distinct_id": "u1", "$insert_id": "e-1"}
    base.update(properties)
    return {"event": "Signed Up", "properties": base}


@pytest.fixture(scope="module")
def server() -> Iterator[LocalMixpanel]:
    """One server for the module: these tests script no faults."""
    with LocalMixpanel() as mixpanel:
        yield mixpanel


@pytest.fixture
def mixpanel(server: LocalMixpanel) -> LocalMixpanel:
    """The module's server, emptied for this test."""
    server.clear()
    return server


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    """A keep-alive session shared by the module."""
    with requests.Session() as client:
        yield client


def import_strict(
    session: requests.Session,
    mixpanel: LocalMixpanel,
    records: List[Any],
    *,
    service_account: bool = False,
) -> requests.Response:
    """POST ``records`` to /import?strict=1 with the token, or the service account."""
    if service_account:
        auth = mixpanel.service_account
        query = f"strict=1&project_id={mixpanel.project_id}"
    else:
        auth = (mixpanel.token, "")
        query = "strict=1"
    return session.post(f"{mixpanel.url}/import?{query}", json=records, auth=auth, timeout=5)


def remove(name: str) -> Callable[[Dict[str, Any]], None]:
    """A mutation that deletes property ``name``."""
    return lambda record: record["properties"].pop(name)


INVALID_EVENTS: Dict[str, tuple[Callable[[Dict[str, Any]], None], str]] = {
    "missing event": (lambda record: record.pop("event"), "event"),
    "empty event": (lambda record: record.update(event=""), "event"),
    "non-string event": (lambda record: record.update(event=7), "event"),
    "properties not an object": (lambda record: record.update(properties=[]), "properties"),
    "extra top-level key": (lambda record: record.update(token="t"), "token"),
    "missing time": (remove("time"), "properties.time"),
    "time as string": (lambda r: r["properties"].update(time="1732280000"), "properties.time"),
    "time as float": (lambda r: r["properties"].update(time=1732280000.5), "properties.time"),
    "time as bool": (lambda r: r["properties"].update(time=True), "properties.time"),
    "time before 1971 (s)": (lambda r: r["properties"].update(time=31_535_999), "properties.time"),
    "time before 1971 (ms)": (
        lambda r: r["properties"].update(time=31_535_999_000),
        "properties.time",
    ),
    "time 2 h ahead (ms)": (
        lambda r: r["properties"].update(time=now_ms() + 7_200_000),
        "properties.time",
    ),
    "time 2 h ahead (s)": (
        lambda r: r["properties"].update(time=int(time.time()) + 7200),
        "properties.time",
    ),
    "missing distinct_id": (remove("distinct_id"), "properties.distinct_id"),
    "numeric distinct_id": (
        lambda r: r["properties"].update(distinct_id=42),
        "properties.distinct_id",
    ),
    "missing $insert_id": (remove("$insert_id"), "properties.$insert_id"),
    "empty $insert_id": (
        lambda r: r["properties"].update({"$insert_id": ""}),
        "properties.$insert_id",
    ),
    "37-char $insert_id": (
        lambda r: r["properties"].update({"$insert_id": "a" * 37}),
        "properties.$insert_id",
    ),
    "$insert_id with underscore": (
        lambda r: r["properties"].update({"$insert_id": "a_b"}),
        "properties.$insert_id",
    ),
    "255 properties": (
        lambda r: r["properties"].update({f"p{index}": index for index in range(252)}),
        "properties",
    ),
    "256-char string": (lambda r: r["properties"].update(note="x" * 256), "properties.note"),
    "256-char name": (lambda r: r["properties"].update({"n" * 256: 1}), "properties." + "n" * 256),
    "255-item list": (lambda r: r["properties"].update(tags=list(range(255))), "properties.tags"),
    "256-char list item": (lambda r: r["properties"].update(tags=["x" * 256]), "properties.tags"),
    "1 MB record": (
        # Every string and list is within its own limit; only the total is too big.
        lambda r: r["properties"].update({f"p{index}": ["x" * 200] * 200 for index in range(30)}),
        "",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID_EVENTS))
def test_invalid_event_is_refused_with_its_field(
    mixpanel: LocalMixpanel, session: requests.Session, case: str
) -> None:
    """Each rule refuses the record in a strict 400 naming the field; valid neighbours pass."""
    mutate, field = INVALID_EVENTS[case]
    bad = make_event(**{"$insert_id": "bad"})
    mutate(bad)
    good = make_event(**{"$insert_id": "good"})
    response = import_strict(session, mixpanel, [good, bad])
    assert response.status_code == 400, response.text
    [failed] = response.json()["failed_records"]
    assert (failed["index"], failed["field"]) == (1, field)
    assert mixpanel.events == [good]


def test_size_message_names_the_limit() -> None:
    """The 1 MB rule explains itself with the exact limit."""
    record = make_event(**{f"p{index}": ["x" * 200] * 200 for index in range(30)})
    problem = event_problem(record, service_account=False, now=time.time())
    assert problem is not None
    assert "1048576 bytes" in problem.message


@pytest.mark.parametrize("value", sorted(DENYLISTED_DISTINCT_IDS))
def test_denylisted_distinct_ids_are_refused_in_any_case(
    mixpanel: LocalMixpanel, session: requests.Session, value: str
) -> None:
    """Mixpanel's denylisted distinct_ids are refused, compared case-insensitively."""
    records = [
        make_event(distinct_id=value, **{"$insert_id": "lower"}),
        make_event(distinct_id=value.upper(), **{"$insert_id": "upper"}),
    ]
    response = import_strict(session, mixpanel, records)
    assert response.status_code == 400
    assert [failed["field"] for failed in response.json()["failed_records"]] == [
        "properties.distinct_id",
        "properties.distinct_id",
    ]
    assert mixpanel.events == []


# Callables, so that times are taken when the test runs rather than at collection.
VALID_EDGES: Dict[str, Callable[[], Properties]] = {
    "empty distinct_id": lambda: {"distinct_id": ""},
    "time in seconds": lambda: {"time": int(time.time())},
    "time 59 min ahead": lambda: {"time": now_ms() + 59 * 60 * 1000},
    "time on 1971-01-01": lambda: {"time": 31_536_000},
    "36-char $insert_id": lambda: {"$insert_id": "A-" + "9" * 34},
    "254 properties": lambda: {f"p{index}": index for index in range(251)},
    "255-char string": lambda: {"note": "é" * 255},
    "254-item list": lambda: {"tags": list(range(254))},
    "nested object": lambda: {"cart": {"items": [{"sku": "A1"}]}},
}


@pytest.mark.parametrize("case", sorted(VALID_EDGES))
def test_records_at_the_limits_are_accepted(
    mixpanel: LocalMixpanel, session: requests.Session, case: str
) -> None:
    """Records right at each limit are accepted."""
    record = make_event(**VALID_EDGES[case]())
    response = import_strict(session, mixpanel, [record])
    assert response.status_code == 200, response.text
    assert mixpanel.events == [record]


def test_merge_needs_a_service_account(mixpanel: LocalMixpanel, session: requests.Session) -> None:
    """$merge is refused with token auth and accepted with the service account."""
    merge = make_event(**{"$distinct_ids": ["a", "b"]})
    merge["event"] = "$merge"
    refused = import_strict(session, mixpanel, [merge])
    assert refused.status_code == 400
    [failed] = refused.json()["failed_records"]
    assert failed["field"] == "event"
    assert "service account" in failed["message"]
    accepted = import_strict(session, mixpanel, [merge], service_account=True)
    assert accepted.status_code == 200
    assert mixpanel.events == [merge]


def test_identity_events_follow_the_same_rules(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """$identify and $create_alias are accepted when complete, refused without $insert_id."""
    identify = make_event(**{"$identified_id": "u1", "$anon_id": "a1"})
    identify["event"] = "$identify"
    alias = make_event(alias="new-id", **{"$insert_id": "e-2"})
    alias["event"] = "$create_alias"
    incomplete = make_event(**{"$anon_id": "a2"})
    incomplete["event"] = "$identify"
    del incomplete["properties"]["$insert_id"]
    response = import_strict(session, mixpanel, [identify, alias, incomplete])
    assert response.status_code == 400
    assert [failed["index"] for failed in response.json()["failed_records"]] == [2]
    assert mixpanel.events == [identify, alias]


# Profile and group updates

TOKEN = "local-token"
USER = {"$token": TOKEN, "$distinct_id": "u1"}
GROUP = {"$token": TOKEN, "$group_key": "company", "$group_id": "acme"}

INVALID_UPDATES: Dict[str, tuple[str, Any, str]] = {
    "wrong token": ("/engage", {**USER, "$token": "other", "$set": {"a": 1}}, "invalid token"),
    "missing token": ("/engage", {"$distinct_id": "u1", "$set": {"a": 1}}, "invalid token"),
    "missing distinct_id": ("/engage", {"$token": TOKEN, "$set": {"a": 1}}, "$distinct_id"),
    "empty distinct_id": ("/engage", {**USER, "$distinct_id": "", "$set": {}}, "$distinct_id"),
    "missing group_key": ("/groups", {"$token": TOKEN, "$group_id": "a", "$set": {}}, "$group_key"),
    "missing group_id": ("/groups", {"$token": TOKEN, "$group_key": "k", "$set": {}}, "$group_id"),
    "no operation": ("/engage", {**USER, "$ip": "0"}, "exactly one operation"),
    "two operations": ("/engage", {**USER, "$set": {}, "$unset": []}, "exactly one operation"),
    "unknown key": ("/engage", {**USER, "$set": {}, "$bogus": 1}, "$bogus"),
    "$set not an object": ("/engage", {**USER, "$set": ["a"]}, "'$set' must be"),
    "$set_once not an object": ("/groups", {**GROUP, "$set_once": 1}, "'$set_once' must be"),
    "$add not a number": ("/engage", {**USER, "$add": {"n": "1"}}, "'$add' value"),
    "$add a boolean": ("/engage", {**USER, "$add": {"n": True}}, "'$add' value"),
    "$append not an object": ("/engage", {**USER, "$append": "x"}, "'$append' must be"),
    "$union not lists": ("/groups", {**GROUP, "$union": {"tags": "a"}}, "'$union' value"),
    "$remove not an object": ("/engage", {**USER, "$remove": ["a"]}, "'$remove' must be"),
    "$unset not names": ("/engage", {**USER, "$unset": "a"}, "'$unset' must be"),
    "$unset with a number": ("/engage", {**USER, "$unset": ["a", 1]}, "'$unset' must be"),
    "$delete with a value": ("/groups", {**GROUP, "$delete": "yes"}, "'$delete' must be"),
    "$ip not a string": ("/engage", {**USER, "$set": {}, "$ip": 0}, "'$ip'"),
    "$ignore_time not a bool": ("/engage", {**USER, "$set": {}, "$ignore_time": 1}, "$ignore_time"),
    "$time not a number": ("/engage", {**USER, "$set": {}, "$time": "now"}, "'$time'"),
    "1 MB update": ("/engage", {**USER, "$set": {"big": ["x" * 200] * 6000}}, "1048576 bytes"),
    "not an object": ("/engage", ["a"], "JSON object"),
}


@pytest.mark.parametrize("case", sorted(INVALID_UPDATES))
def test_invalid_update_is_listed_by_strict(
    mixpanel: LocalMixpanel, session: requests.Session, case: str
) -> None:
    """Each update rule refuses the object, with a message naming what is wrong."""
    path, update, expected_in_message = INVALID_UPDATES[case]
    response = session.post(f"{mixpanel.url}{path}?verbose=1&strict=1", json=[update], timeout=5)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == 0
    assert body["num_records_imported"] == 0
    [failed] = body["failed_records"]
    assert failed["index"] == 0
    assert expected_in_message in failed["message"]
    assert mixpanel.profile_updates == mixpanel.group_updates == []


@pytest.mark.parametrize(
    ("path", "update"),
    [
        ("/engage", {**USER, "$delete": None, "$ignore_alias": True}),
        ("/engage", {**USER, "$delete": ""}),
        ("/engage", {**USER, "$set": {"a": 1}, "$ip": "0", "$ignore_time": True, "$time": 1.5}),
        ("/engage", {**USER, "$append": {"$transactions": {"$amount": 9.99, "sku": "A1"}}}),
        ("/groups", {**GROUP, "$add": {"seats": -2.5}}),
        ("/groups", {**GROUP, "$union": {"tags": []}}),
    ],
    ids=["delete-null", "delete-empty", "modifiers", "revenue", "group-add", "empty-union"],
)
def test_valid_updates_are_accepted(
    mixpanel: LocalMixpanel, session: requests.Session, path: str, update: Dict[str, Any]
) -> None:
    """Updates with every allowed modifier and value form are accepted."""
    response = session.post(f"{mixpanel.url}{path}?verbose=1&strict=1", json=[update], timeout=5)
    assert response.json() == {"status": 1, "error": None}
    accepted = mixpanel.profile_updates if path == "/engage" else mixpanel.group_updates
    assert accepted == [update]
