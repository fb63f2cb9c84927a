"""ASGI (Starlette, FastAPI, any ASGI app): the request's identity bound for
everything the request does, streaming responses and background tasks included.

::

    from otel_mixpanel.web.asgi import MixpanelMiddleware

    app = FastAPI()
    app.add_middleware(MixpanelMiddleware, trusted_proxies=["10.0.0.0/8"])
    # or, for any ASGI application: app = MixpanelMiddleware(app)

The identity stays bound while the response streams and while Starlette's
background tasks run. It is pure ASGI: it covers WebSockets too and adds no task
or stream per request. Put it inside OpenTelemetry's server instrumentation
(``add_middleware`` does): outside, the request's telemetry is still tagged,
but the ids it puts in baggage do not reach downstream services. *identify*
gets a Starlette ``Request`` (for a WebSocket, its ``HTTPConnection``) when
Starlette is installed, else the ASGI scope. The user is, in order: what
*identify* returns, an authenticated ``scope["user"]`` (Starlette's
``AuthenticationMiddleware``, its ``identity``).
"""

from __future__ import annotations

from http.cookies import CookieError, SimpleCookie
from typing import Any, Awaitable, Callable, Dict, MutableMapping, Optional

from otel_mixpanel.web._identity import RequestIdentity

__all__ = ["MixpanelMiddleware"]

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


class MixpanelMiddleware:
    """Pure ASGI middleware binding each HTTP and WebSocket request's identity."""

    def __init__(self, app: ASGIApp, /, **options: Any) -> None:
        self.app = app
        self.identity = RequestIdentity(**options)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        client = scope.get("client")
        request = _request(scope) if self.identity.identify is not None else scope
        with self.identity.bind(
            request, cookies=_cookies(headers.get("cookie", "")),
            peer=client[0] if client else None,
            forwarded_for=headers.get("x-forwarded-for"), user=_user(scope),
        ):
            await self.app(scope, receive, send)


def _headers(scope: Scope) -> Dict[str, str]:
    found: Dict[str, str] = {}
    for name, value in scope.get("headers") or ():
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        # Cookies split over several headers (HTTP/2) rejoin as one Cookie header would.
        separator = "; " if key == "cookie" else ", "
        found[key] = f"{found[key]}{separator}{text}" if key in found else text
    return found


def _cookies(header: str) -> Dict[str, str]:
    cookies: Dict[str, str] = {}
    for part in header.split(";"):  # one bad cookie must not hide the others
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(part)
        except CookieError:
            continue
        cookies.update({name: morsel.value for name, morsel in jar.items()})
    return cookies


def _request(scope: Scope) -> Any:
    try:
        from starlette.requests import HTTPConnection, Request  # noqa: PLC0415
    except ImportError:
        return scope
    # A Request is for HTTP only; a WebSocket gets the HTTPConnection (headers, cookies, user).
    return Request(scope) if scope["type"] == "http" else HTTPConnection(scope)


def _user(scope: Scope) -> Optional[str]:
    user = scope.get("user")  # Starlette's AuthenticationMiddleware
    try:
        if user is not None and user.is_authenticated:
            return str(getattr(user, "identity", None) or user.display_name)
    except Exception:
        return None
    return None
