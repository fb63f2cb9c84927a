"""RequestIdentity, the part of every web middleware that decides who a request
is for: callback, authenticated user, Mixpanel's cookie, client IP."""

from __future__ import annotations

import json
from typing import Any, Dict, Optional
from urllib.parse import quote

import pytest

from otel_mixpanel import ConfigurationError
from otel_mixpanel.identity import current_identity
from otel_mixpanel.web import RequestIdentity, cookie_name

TOKEN = "abc123"


def mixpanel_cookie(**data: Any) -> Dict[str, str]:
    return {cookie_name(TOKEN): quote(json.dumps(data))}


def bound(
    identity: RequestIdentity, request: Any = None, *, cookies: Optional[Dict[str, str]] = None,
    peer: Optional[str] = "203.0.113.7", forwarded_for: Optional[str] = None, user: Any = None,
) -> Dict[str, str]:
    with identity.bind(request, cookies=cookies or {}, peer=peer,
                       forwarded_for=forwarded_for, user=user):
        return current_identity()


def test_the_callback_wins_over_the_authenticated_user() -> None:
    identity = RequestIdentity(identify=lambda request: request["user"], token=TOKEN)
    assert bound(identity, {"user": "u1"}, user="auth-7")["mixpanel.user_id"] == "u1"
    assert bound(identity, {"user": None}, user="auth-7")["mixpanel.user_id"] == "auth-7"
    mapping = RequestIdentity(identify=lambda r: {"distinct_id": "d1", "device_id": "dev"})
    ids = bound(mapping, user="auth-7")
    assert (ids["mixpanel.distinct_id"], ids["mixpanel.device_id"]) == ("d1", "dev")
    assert "mixpanel.user_id" not in ids


def test_a_failing_callback_is_counted_and_the_request_goes_on() -> None:
    identity = RequestIdentity(identify=lambda request: 1 / 0)
    assert bound(identity, user="auth-7")["mixpanel.user_id"] == "auth-7"
    assert identity.stats()["dropped"] == {"identify_failed": 1}


def test_the_device_id_comes_from_mixpanels_cookie_and_never_its_user() -> None:
    identity = RequestIdentity(token=TOKEN)
    ids = bound(identity, cookies=mixpanel_cookie(
        distinct_id="$device:d-1", **{"$device_id": "d-1", "$user_id": "claimed"}))
    assert ids["mixpanel.device_id"] == "d-1"
    assert "mixpanel.user_id" not in ids  # a browser can claim any user
    legacy = bound(identity, cookies=mixpanel_cookie(distinct_id="$device:d-2"))
    assert legacy["mixpanel.device_id"] == "d-2"
    assert "mixpanel.device_id" not in bound(RequestIdentity(token="other"),
                                             cookies=mixpanel_cookie(**{"$device_id": "d"}))


@pytest.mark.parametrize("raw", ["%7Bnot json", "%5B1%5D", "%"])
def test_a_malformed_cookie_is_ignored_and_counted(raw: str) -> None:
    identity = RequestIdentity(token=TOKEN)
    ids = bound(identity, cookies={cookie_name(TOKEN): raw}, user="u1")
    assert ids["mixpanel.user_id"] == "u1"
    assert "mixpanel.device_id" not in ids
    assert identity.stats()["dropped"] == {"malformed_mixpanel_cookie": 1}


def test_the_token_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_MIXPANEL_TOKEN", TOKEN)
    ids = bound(RequestIdentity(), cookies=mixpanel_cookie(**{"$device_id": "d-9"}))
    assert ids["mixpanel.device_id"] == "d-9"


def test_the_client_ip_is_the_peer_unless_the_peer_is_a_trusted_proxy() -> None:
    plain = RequestIdentity()
    assert bound(plain, forwarded_for="198.51.100.1")["mixpanel.ip"] == "203.0.113.7"
    proxied = RequestIdentity(trusted_proxies=["10.0.0.0/8", "192.0.2.1"])
    chain = "198.51.100.1, 203.0.113.9, 192.0.2.1"
    assert bound(proxied, peer="10.1.2.3", forwarded_for=chain)["mixpanel.ip"] == "203.0.113.9"
    assert bound(proxied, peer="203.0.113.7", forwarded_for=chain)["mixpanel.ip"] == "203.0.113.7"
    assert "mixpanel.ip" not in bound(proxied, peer="10.1.2.3", forwarded_for="garbage")
    assert "mixpanel.ip" not in bound(RequestIdentity(ip=False))


def test_the_ip_is_bound_but_never_propagated_as_baggage() -> None:
    from opentelemetry import baggage  # noqa: PLC0415

    identity = RequestIdentity()
    with identity.bind(None, cookies={}, peer="203.0.113.7", user="u1"):
        entries = baggage.get_all()
        assert entries.get("mixpanel.user_id") == "u1"
        assert "mixpanel.ip" not in entries
        assert current_identity()["mixpanel.ip"] == "203.0.113.7"
    assert current_identity() == {}


@pytest.mark.parametrize("options", [
    {"identify": "not callable"}, {"trusted_proxies": "10.0.0.0/8"},
    {"trusted_proxies": ["not an address"]},
])
def test_bad_options_are_refused(options: Dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        RequestIdentity(**options)


def test_a_clients_baggage_cannot_choose_the_user() -> None:
    """Any client can send ``baggage: mixpanel.user_id=victim``: at the edge it is
    ignored and taken out of the context (so it is not propagated either),
    unless the service is told to trust it."""
    from opentelemetry import baggage, context  # noqa: PLC0415

    forged = context.attach(baggage.set_baggage(
        "mixpanel.user_id", "victim", context=baggage.set_baggage("mixpanel.device_id", "d-x")))
    try:
        with RequestIdentity().bind(None, cookies={}, peer=None):
            assert current_identity() == {}
            assert baggage.get_all() == {}
        with RequestIdentity(trust_baggage=True).bind(None, cookies={}, peer=None):
            assert current_identity() == {"mixpanel.user_id": "victim", "mixpanel.device_id": "d-x"}
        assert current_identity()["mixpanel.user_id"] == "victim"  # no edge: an internal hop
    finally:
        context.detach(forged)
