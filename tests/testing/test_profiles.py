"""How accepted profile and group updates fold into LocalMixpanel's profiles."""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional

import pytest
import requests

from otel_mixpanel.testing import LocalMixpanel
from otel_mixpanel.testing._profiles import apply_update

Update = Dict[str, Any]


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


def send(
    session: requests.Session, mixpanel: LocalMixpanel, path: str, updates: List[Update]
) -> None:
    """POST ``updates`` (each completed with the token) and require full acceptance."""
    payload = [{"$token": mixpanel.token, **update} for update in updates]
    response = session.post(f"{mixpanel.url}{path}?verbose=1&strict=1", json=payload, timeout=5)
    assert response.json() == {"status": 1, "error": None}, response.text


def user(operation: str, value: object, distinct_id: str = "u1") -> Update:
    """One /engage update for ``distinct_id``."""
    return {"$distinct_id": distinct_id, operation: value}


# The operations, one by one, as pure functions


@pytest.mark.parametrize(
    ("current", "update", "expected"),
    [
        (None, {"$set": {"plan": "pro"}}, {"plan": "pro"}),
        ({"plan": "free", "n": 1}, {"$set": {"plan": "pro"}}, {"plan": "pro", "n": 1}),
        ({"first": "a"}, {"$set_once": {"first": "b", "other": 1}}, {"first": "a", "other": 1}),
        (None, {"$add": {"logins": 2}}, {"logins": 2}),
        ({"logins": 2}, {"$add": {"logins": -3.5}}, {"logins": -1.5}),
        ({"logins": "many"}, {"$add": {"logins": 1}}, {"logins": "many"}),
        (None, {"$append": {"tags": "a"}}, {"tags": ["a"]}),
        ({"tags": ["a"]}, {"$append": {"tags": ["b"]}}, {"tags": ["a", ["b"]]}),
        ({"tags": "a"}, {"$append": {"tags": "b"}}, {"tags": "a"}),
        ({"tags": ["a", "b"]}, {"$union": {"tags": ["b", "c", "c"]}}, {"tags": ["a", "b", "c"]}),
        (None, {"$union": {"tags": ["x"]}}, {"tags": ["x"]}),
        ({"tags": ["a", "b", "a"]}, {"$remove": {"tags": "a"}}, {"tags": ["b"]}),
        ({"tags": ["a"]}, {"$remove": {"tags": "z", "missing": 1}}, {"tags": ["a"]}),
        ({"a": 1, "b": 2}, {"$unset": ["a", "missing"]}, {"b": 2}),
        ({"a": 1}, {"$delete": ""}, None),
        (None, {"$delete": None}, None),
        (None, {"$unset": ["a"]}, None),
        (None, {"$remove": {"tags": "a"}}, None),
    ],
    ids=[
        "set-creates",
        "set-overwrites",
        "set_once-only-missing",
        "add-missing-is-zero",
        "add-negative-float",
        "add-leaves-non-number",
        "append-missing-makes-list",
        "append-a-list-as-one-item",
        "append-leaves-non-list",
        "union-without-duplicates",
        "union-creates",
        "remove-every-occurrence",
        "remove-absent-value",
        "unset",
        "delete",
        "delete-missing",
        "unset-missing-profile",
        "remove-missing-profile",
    ],
)
def test_apply_update(
    current: Optional[Dict[str, Any]], update: Update, expected: Optional[Dict[str, Any]]
) -> None:
    """Each operation changes the properties as Mixpanel documents."""
    before = None if current is None else dict(current)
    assert apply_update(current, update) == expected
    assert current == before  # the input is never modified


def test_apply_update_does_not_share_values_with_the_update() -> None:
    """Lists taken from an update are copied, so later changes to it do not leak in."""
    update: Update = {"$set": {"tags": ["a"]}}
    properties = apply_update(None, update)
    update["$set"]["tags"].append("b")
    assert properties == {"tags": ["a"]}


# The same operations, through the server


def test_profile_operations_apply_in_order(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """Every operation sent to /engage is applied, in arrival order, per distinct_id."""
    send(
        session,
        mixpanel,
        "/engage",
        [
            user("$set", {"plan": "free", "$email": "a@example.com"}),
            user("$set_once", {"plan": "ignored", "first_seen": "2026-01-01"}),
            user("$add", {"logins": 1}),
            user("$add", {"logins": 2}),
            user("$append", {"$transactions": {"$amount": 9.99, "sku": "A1"}}),
            user("$union", {"tags": ["a", "b"]}),
            user("$union", {"tags": ["b", "c"]}),
            user("$remove", {"tags": "a"}),
            user("$unset", ["$email"]),
            user("$set", {"plan": "pro"}),
            user("$set", {"plan": "other"}, distinct_id="u2"),
        ],
    )
    assert mixpanel.profiles == {
        "u1": {
            "plan": "pro",
            "first_seen": "2026-01-01",
            "logins": 3,
            "$transactions": [{"$amount": 9.99, "sku": "A1"}],
            "tags": ["b", "c"],
        },
        "u2": {"plan": "other"},
    }
    assert len(mixpanel.profile_updates) == 11


def test_delete_removes_the_profile(mixpanel: LocalMixpanel, session: requests.Session) -> None:
    """$delete removes the profile; a later $set starts a new one from nothing."""
    send(session, mixpanel, "/engage", [user("$set", {"a": 1}), user("$delete", "")])
    assert mixpanel.profiles == {}
    send(session, mixpanel, "/engage", [user("$set", {"b": 2})])
    assert mixpanel.profiles == {"u1": {"b": 2}}


def test_group_operations_apply_per_group(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """/groups updates fold into groups keyed by (group_key, group_id)."""
    acme = {"$group_key": "company", "$group_id": "acme"}
    initech = {"$group_key": "company", "$group_id": "initech"}
    send(
        session,
        mixpanel,
        "/groups",
        [
            {**acme, "$set": {"tier": "gold"}},
            {**acme, "$union": {"regions": ["eu", "us"]}},
            {**acme, "$remove": {"regions": "us"}},
            {**acme, "$set_once": {"tier": "silver", "since": 2020}},
            {**initech, "$set": {"tier": "bronze"}},
            {**initech, "$delete": None},
        ],
    )
    assert mixpanel.groups == {
        ("company", "acme"): {"tier": "gold", "regions": ["eu"], "since": 2020}
    }
    assert len(mixpanel.group_updates) == 6
    assert mixpanel.profiles == {}


def test_profiles_accessor_returns_copies(
    mixpanel: LocalMixpanel, session: requests.Session
) -> None:
    """Changing a returned profile leaves the server's profile as it was."""
    send(session, mixpanel, "/engage", [user("$union", {"tags": ["a"]})])
    mixpanel.profiles["u1"]["tags"].append("b")
    assert mixpanel.profiles == {"u1": {"tags": ["a"]}}
