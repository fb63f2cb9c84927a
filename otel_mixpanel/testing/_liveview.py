"""The live view: a web page on a :class:`LocalMixpanel` showing what it receives, as it arrives.

:func:`attach_live_view` adds four GET pages to the server:

* ``/``: the page (``static/liveview.html``), which loads
* ``/live/app.js`` and ``/live/app.css``, and polls
* ``/live/state``: what was received, as JSON; ``?events=N&rejected=M`` returns only the events
  and rejections after the first ``N`` and ``M`` the page already has, so that a long session
  does not resend everything twice a second. Profiles and groups come whole: they are the
  state after every update, and are few.

The page is plain HTML, CSS and JavaScript shipped in the package, so it works offline. It
treats everything received as untrusted text (``textContent``, never ``innerHTML``), and the
pages send a Content-Security-Policy that forbids inline and foreign scripts as a second line of
defence. Requests whose ``Host`` header is not a loopback name are refused, so that a web site
cannot read the data through DNS rebinding. Example::

    from otel_mixpanel.testing import LocalMixpanel
    from otel_mixpanel.testing._liveview import attach_live_view

    with LocalMixpanel(port=8080) as mixpanel:
        attach_live_view(mixpanel)
        print(f"open {mixpanel.url}/")
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Callable, Dict, Optional
from urllib.parse import urlsplit

from ._http import Reply
from ._server import LocalMixpanel
from ._wire import Headers

__all__ = ["attach_live_view", "live_state"]

_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_ASSETS = {
    "/": ("liveview.html", "text/html; charset=utf-8"),
    "/live/app.js": ("liveview.js", "text/javascript; charset=utf-8"),
    "/live/app.css": ("liveview.css", "text/css; charset=utf-8"),
}
_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("static").joinpath(name).read_bytes()


def _from_loopback_name(headers: Headers) -> bool:
    """Whether the request names this machine in ``Host`` (no DNS rebinding)."""
    host = headers.get("Host")
    if host is None:
        return True  # HTTP/1.0 clients send none; they cannot be a rebinding browser
    hostname = urlsplit(f"//{host}").hostname or ""
    return hostname in _LOOPBACK_NAMES or hostname.startswith("127.")


def _count(query: Dict[str, str], name: str) -> int:
    raw = query.get(name, "0")
    return int(raw) if raw.isdigit() else 0


def live_state(mixpanel: LocalMixpanel, *, events_after: int = 0, rejected_after: int = 0) -> Any:
    """What ``GET /live/state`` answers: new events and rejections, profiles, groups.

    ``events_from`` is where the returned ``events`` start; it is 0 when ``events_after`` is
    past the end (the server was cleared), telling the page to start over. Example::

        state = live_state(mixpanel, events_after=10)
        assert state["events_total"] == len(mixpanel.events)
    """
    # One lock for a consistent snapshot; the accessors copy, so this is only a reading order.
    with mixpanel._lock:
        events = mixpanel.events
        rejected = mixpanel.rejected
        profiles = mixpanel.profiles
        groups = mixpanel.groups
    events_from = events_after if events_after <= len(events) else 0
    rejected_from = rejected_after if rejected_after <= len(rejected) else 0
    return {
        "events_total": len(events),
        "events_from": events_from,
        "events": events[events_from:],
        "rejected_total": len(rejected),
        "rejected_from": rejected_from,
        "rejected": [
            {"endpoint": item.endpoint, "index": item.index, "reason": item.reason,
             "record": item.record}
            for item in rejected[rejected_from:]
        ],
        "profiles": [
            {"distinct_id": key, "properties": value} for key, value in sorted(profiles.items())
        ],
        "groups": [
            {"group_key": key, "group_id": group_id, "properties": value}
            for (key, group_id), value in sorted(groups.items())
        ],
    }


def attach_live_view(mixpanel: LocalMixpanel) -> None:
    """Serve the live view at ``GET /`` of *mixpanel* (see the module documentation).

    Safe to call before or after :meth:`LocalMixpanel.start`. Example::

        with LocalMixpanel() as mixpanel:
            attach_live_view(mixpanel)
            html = requests.get(mixpanel.url + "/").text
    """

    def forbidden() -> Reply:
        return Reply(403, "live view: requests must name a loopback host", _SECURITY_HEADERS)

    def asset_page(name: str, content_type: str) -> Callable[[Dict[str, str], Headers], Reply]:
        body = _asset(name)  # read once: the package's files do not change while serving

        def page(query: Dict[str, str], headers: Headers) -> Reply:
            if not _from_loopback_name(headers):
                return forbidden()
            return Reply(200, body, {**_SECURITY_HEADERS, "Content-Type": content_type})

        return page

    def state_page(query: Dict[str, str], headers: Headers) -> Reply:
        if not _from_loopback_name(headers):
            return forbidden()
        state = live_state(
            mixpanel,
            events_after=_count(query, "events"),
            rejected_after=_count(query, "rejected"),
        )
        # Reply would encode compactly too, but without our security headers' Content-Type.
        body = json.dumps(state, separators=(",", ":"), default=_jsonable).encode("utf-8")
        return Reply(
            200, body, {**_SECURITY_HEADERS, "Content-Type": "application/json; charset=utf-8"}
        )

    for path, (name, content_type) in _ASSETS.items():
        mixpanel._pages[path] = asset_page(name, content_type)
    mixpanel._pages["/live/state"] = state_page


def _jsonable(value: object) -> Optional[str]:
    """Accepted records are parsed JSON; anything else is shown by its ``repr``, not fatal."""
    return repr(value)
