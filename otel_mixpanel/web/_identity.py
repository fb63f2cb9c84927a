"""Who a web request is for, whatever the framework: the part every middleware shares.

A framework adapter (``otel_mixpanel.web.flask``, ``.django``, ``.asgi``) reads
the request's cookies, peer address, ``X-Forwarded-For`` header and
authenticated user, and :meth:`RequestIdentity.bind` turns them into the
identity bound for everything the request does.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Optional, Sequence, Union
from urllib.parse import unquote

from otel_mixpanel._exceptions import ConfigurationError
from otel_mixpanel._inputs._track import people_set
from otel_mixpanel._stats import Stats
from otel_mixpanel.identity import bind_identity

__all__ = ["RequestIdentity", "cookie_name"]

_logger = logging.getLogger("otel_mixpanel.web")
_Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Identify = Callable[[Any], Any]


def cookie_name(token: str) -> str:
    """The cookie mixpanel-browser keeps the visitor's ids in, for project *token*."""
    return f"mp_{token}_mixpanel"


@dataclass
class RequestIdentity:
    """How a middleware finds the identity of a request.

    *identify* is called with the framework's request and returns ``None``,
    a user id, or a mapping with any of ``user_id``, ``distinct_id``,
    ``device_id`` and ``properties`` (``$set`` on the user's profile, once per
    request: return them when they change). Without it, or when it returns
    no user, the framework's authenticated user is used (Django's
    ``request.user``, Flask-Login's ``current_user``, ASGI ``scope["user"]``).
    The device id comes from mixpanel-browser's cookie (named after *token*,
    by default ``OTEL_EXPORTER_MIXPANEL_TOKEN``; its user id is not trusted,
    since a browser can claim any; a malformed cookie is ignored and counted).
    The client IP is sent for geolocation unless ``ip=False``: the peer, or the
    ``X-Forwarded-For`` entry just before the first proxy that is not in
    *trusted_proxies* (addresses or networks). ``propagate`` puts the ids in
    W3C baggage, so background jobs the request starts carry them too. The
    ``mixpanel.*`` baggage a request arrives with is ignored (and not passed
    on): any client can send a baggage header. Set ``trust_baggage=True`` only
    for a service that no client reaches directly, behind one that binds.

    Example::

        RequestIdentity(identify=lambda request: request.headers.get("X-User"),
                        trusted_proxies=["10.0.0.0/8"])
    """

    identify: Optional[Identify] = None
    token: Optional[str] = None
    ip: bool = True
    trusted_proxies: Sequence[str] = ()
    cookie: bool = True
    propagate: bool = True
    trust_baggage: bool = False
    _networks: List[_Network] = field(init=False, repr=False)
    _stats: Stats = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.identify is not None and not callable(self.identify):
            raise ConfigurationError(f"identify must be callable, not {self.identify!r}")
        if isinstance(self.trusted_proxies, str):
            raise ConfigurationError("trusted_proxies is a list of addresses or networks")
        try:
            self._networks = [ipaddress.ip_network(p, strict=False) for p in self.trusted_proxies]
        except ValueError as error:
            raise ConfigurationError(f"trusted_proxies: {error}") from error
        self._stats = Stats(_logger)

    def stats(self) -> Dict[str, Any]:
        """What was ignored, by reason (``malformed_mixpanel_cookie``, ``identify_failed``)."""
        return self._stats.snapshot()

    @contextlib.contextmanager
    def bind(
        self,
        request: Any,
        *,
        cookies: Mapping[str, str],
        peer: Optional[str],
        forwarded_for: Optional[str] = None,
        user: Any = None,
    ) -> Iterator[Dict[str, str]]:
        """Bind the request's identity for the block; yields the ids, which
        :meth:`rebind` binds again (a body streamed after the handler returned).
        *user* is the framework's authenticated user id, if any. Never raises
        for a bad request."""
        ids = self._from_callback(request)
        if "user_id" not in ids and "distinct_id" not in ids and user is not None:
            ids["user_id"] = str(user)
        properties = ids.pop("properties", None)
        if self.cookie:
            for name, value in self._from_cookie(cookies).items():
                ids.setdefault(name, value)
        if self.ip:
            address = self.client_ip(peer, forwarded_for)
            if address is not None:
                ids["ip"] = address
        with self.rebind(ids):
            if properties:
                people_set(ids.get("user_id") or ids.get("distinct_id") or "", properties)
            yield ids

    def rebind(self, ids: Mapping[str, str]) -> ContextManager[None]:
        """Bind ids that :meth:`bind` resolved, again."""
        return bind_identity(
            distinct_id=ids.get("distinct_id"), user_id=ids.get("user_id"),
            device_id=ids.get("device_id"), ip=ids.get("ip"),
            propagate=self.propagate, trust_baggage=self.trust_baggage,
        )

    def client_ip(self, peer: Optional[str], forwarded_for: Optional[str]) -> Optional[str]:
        """The client's address: *peer*, unless *peer* is a trusted proxy; then
        the ``X-Forwarded-For`` entries from the right, past trusted proxies."""
        chain = [peer] if peer else []
        if forwarded_for and self._networks:
            chain = [a.strip() for a in forwarded_for.split(",") if a.strip()] + chain
        for address in reversed(chain):
            if not self._trusted(address):
                return address if _is_address(address) else None
        return None

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)

    def _from_callback(self, request: Any) -> Dict[str, Any]:
        if self.identify is None:
            return {}
        try:
            found = self.identify(request)
        except Exception as error:  # the request goes on without a user
            self._stats.dropped("identify_failed", detail=type(error).__name__)
            return {}
        if found is None:
            return {}
        if not isinstance(found, Mapping):
            return {"user_id": str(found)}
        names = ("user_id", "distinct_id", "device_id")
        ids: Dict[str, Any] = {k: str(found[k]) for k in names if found.get(k)}
        if isinstance(found.get("properties"), Mapping):
            ids["properties"] = dict(found["properties"])
        return ids

    def _from_cookie(self, cookies: Mapping[str, str]) -> Dict[str, str]:
        token = self.token or os.environ.get("OTEL_EXPORTER_MIXPANEL_TOKEN")
        raw = cookies.get(cookie_name(token)) if token else None
        if not raw:
            return {}
        try:
            data = json.loads(unquote(raw))
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except ValueError as error:
            self._stats.dropped("malformed_mixpanel_cookie", detail=str(error)[:80])
            return {}
        ids: Dict[str, str] = {}
        device = data.get("$device_id")
        distinct = data.get("distinct_id")
        if isinstance(device, str) and device:
            ids["device_id"] = device
        elif isinstance(distinct, str) and distinct.startswith("$device:"):
            ids["device_id"] = distinct[len("$device:"):]
        # Only the device id: the browser could claim any $user_id, so the user
        # comes from the server's own authentication.
        return ids


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
