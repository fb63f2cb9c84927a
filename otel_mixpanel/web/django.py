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

from typing import Any, AsyncIterator, Callable, ContextManager, Dict, Iterable, Iterator, Optional

from otel_mixpanel.web._identity import RequestIdentity

__all__ = ["MixpanelMiddleware"]


class MixpanelMiddleware:
    """Django middleware binding each request's identity (see the module docs)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        from asgiref.sync import iscoroutinefunction, markcoroutinefunction  # noqa: PLC0415
        from django.conf import settings  # noqa: PLC0415

        self.get_response = get_response
        self.identity = RequestIdentity(**getattr(settings, "OTEL_MIXPANEL_IDENTITY", {}))
        self._async = iscoroutinefunction(get_response)
        if self._async:  # Django awaits the middleware itself then
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self._async:
            return self._acall(request)
        with self._bind(request, _user(request)) as ids:
            response = self.get_response(request)
        if getattr(response, "streaming", False) and not response.is_async:
            response.streaming_content = self._stream(ids, response.streaming_content)
        return response

    async def _acall(self, request: Any) -> Any:
        # request.user queries the database, which Django refuses on the event
        # loop (SynchronousOnlyOperation): resolved in a thread.
        from asgiref.sync import sync_to_async  # noqa: PLC0415

        user = await sync_to_async(_user)(request)
        with self._bind(request, user) as ids:
            response = await self.get_response(request)
        if getattr(response, "streaming", False) and response.is_async:
            response.streaming_content = self._astream(ids, response.streaming_content)
        return response

    def _bind(self, request: Any, user: Optional[str]) -> ContextManager[Dict[str, str]]:
        return self.identity.bind(
            request, cookies=request.COOKIES, peer=request.META.get("REMOTE_ADDR"),
            forwarded_for=request.META.get("HTTP_X_FORWARDED_FOR"), user=user,
        )

    def _stream(self, ids: Dict[str, str], chunks: Iterable[bytes]) -> Iterator[bytes]:
        # The body is produced after the view returned: the ids resolved for the
        # request are bound again while it streams (identify is not called twice).
        with self.identity.rebind(ids):
            yield from chunks

    async def _astream(
        self, ids: Dict[str, str], chunks: AsyncIterator[bytes]
    ) -> AsyncIterator[bytes]:
        with self.identity.rebind(ids):
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
