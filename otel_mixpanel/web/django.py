"""Django: the request's identity bound for everything the request does.

Add the middleware after Django's ``AuthenticationMiddleware``::

    MIDDLEWARE = [
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "otel_mixpanel.web.django.MixpanelMiddleware",
    ]
    # Optional, the options of otel_mixpanel.web.RequestIdentity:
    OTEL_MIXPANEL_IDENTITY = {"trusted_proxies": ["10.0.0.0/8"]}

The user is, in order: what the ``identify`` option returns, the
authenticated ``request.user`` (its primary key). Works in sync and async
stacks; a streaming response keeps the identity while it streams.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Callable, Iterable, Iterator, Optional

from otel_mixpanel.web._identity import RequestIdentity

__all__ = ["MixpanelMiddleware"]


class MixpanelMiddleware:
    """Django middleware binding each request's identity (see the module docs)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        from django.conf import settings  # noqa: PLC0415

        self.get_response = get_response
        self.identity = RequestIdentity(**getattr(settings, "OTEL_MIXPANEL_IDENTITY", {}))
        self._async = asyncio.iscoroutinefunction(get_response)
        if self._async:  # Django awaits the middleware itself then
            from asgiref.sync import markcoroutinefunction  # noqa: PLC0415

            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self._async:
            return self._acall(request)
        with self._bind(request):
            response = self.get_response(request)
        if getattr(response, "streaming", False) and not response.is_async:
            response.streaming_content = self._stream(request, response.streaming_content)
        return response

    async def _acall(self, request: Any) -> Any:
        with self._bind(request):
            response = await self.get_response(request)
        if getattr(response, "streaming", False) and response.is_async:
            response.streaming_content = self._astream(request, response.streaming_content)
        return response

    def _bind(self, request: Any) -> Any:
        return self.identity.bind(
            request, cookies=request.COOKIES, peer=request.META.get("REMOTE_ADDR"),
            forwarded_for=request.META.get("HTTP_X_FORWARDED_FOR"), user=_user(request),
        )

    def _stream(self, request: Any, chunks: Iterable[bytes]) -> Iterator[bytes]:
        # The body is produced after the view returned: bound again while it streams.
        with self._bind(request):
            yield from chunks

    async def _astream(self, request: Any, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        with self._bind(request):
            async for chunk in chunks:
                yield chunk


def _user(request: Any) -> Optional[str]:
    user = getattr(request, "user", None)  # set by AuthenticationMiddleware
    try:
        if user is not None and user.is_authenticated:
            return str(user.pk)
    except Exception:  # a lazy user whose backend fails: no user, the request goes on
        return None
    return None
