"""The gateway's OTLP/HTTP endpoints, as a plain ASGI application (served by uvicorn).

``POST /v1/traces`` and ``/v1/logs`` take protobuf or JSON, gzip or not, with
a Content-Length or chunked; the answers follow the OTLP specification: 200
with a (partial-success) response, 429/503 with ``Retry-After`` when the
sending queue has no room (senders keep the data and retry), 400 only for a
body that can never be accepted. ``GET /health``, ``/ready`` and ``/status``
are for the operator.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from typing import Any, Awaitable, Callable, Dict, List, MutableMapping, Optional, Tuple

__all__ = ["OTLPApp"]

Scope = MutableMapping[str, Any]
Send = Callable[[Dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[Dict[str, Any]]]
PROTOBUF = "application/x-protobuf"
JSON = "application/json"


class TooLarge(Exception):
    """The body, decompressed, is past the limit."""


class OTLPApp:
    """ASGI application in front of a :class:`~otel_mixpanel.gateway.Gateway`."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self._slots: Optional[asyncio.Semaphore] = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope.get("path", ""), scope.get("method", "GET")
        if method == "GET" and path in ("/health", "/ready", "/status"):
            await self._operator(path, send)
        elif path in ("/v1/traces", "/v1/logs"):
            if method != "POST":
                await _answer(send, 405, b"POST only", "text/plain")
                return
            await self._export(scope, receive, send, path == "/v1/traces")
        else:
            await _answer(send, 404, b"not found", "text/plain")

    async def _operator(self, path: str, send: Send) -> None:
        if path == "/health":
            await _answer(send, 200, b"ok", "text/plain")
        elif path == "/ready":
            ready = self.gateway.room() > 0
            await _answer(send, 200 if ready else 503, b"ready" if ready else b"queue full",
                          "text/plain")
        else:
            body = json.dumps(self.gateway.status()).encode()
            await _answer(send, 200, body, JSON)

    async def _export(self, scope: Scope, receive: Receive, send: Send, traces: bool) -> None:
        headers = _headers(scope)
        settings = self.gateway.settings
        if settings.ingest_token is not None and (
            headers.get("authorization") != f"Bearer {settings.ingest_token}"
        ):
            self.gateway.refused("unauthenticated")
            await _answer(send, 401, b"missing or wrong bearer token", "text/plain")
            return
        kind = headers.get("content-type", PROTOBUF).split(";")[0].strip().lower()
        if kind not in (PROTOBUF, JSON):
            self.gateway.refused("unsupported_media_type", kind[:100])
            await _answer(send, 415, b"protobuf or JSON", "text/plain")
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(settings.max_concurrent_requests)
        if self._slots.locked():  # busy: the sender keeps the data and retries
            self.gateway.refused()
            await self._busy(send, "too many concurrent requests")
            return
        async with self._slots:
            try:
                body = await _read(receive, headers.get("content-encoding", ""),
                                   settings.max_request_bytes)
            except TooLarge:
                self.gateway.refused("too_large")
                await _answer(send, 413, b"request too large", "text/plain")
                return
            except (zlib.error, ValueError):
                self.gateway.refused("bad_request", "bad gzip body")
                await _answer(send, 400, b"bad gzip body", "text/plain")
                return
            if not self.gateway.fits(len(body)):
                await self._busy(send, "the sending queue is full")
                return
            loop = asyncio.get_running_loop()
            outcome = await loop.run_in_executor(
                None, self.gateway.ingest, body, kind == JSON, traces)
        if outcome.error is not None:
            await _answer(send, 400, outcome.error.encode(), "text/plain")
            return
        await _answer(send, 200, outcome.response(kind == JSON, traces), kind)

    async def _busy(self, send: Send, why: str) -> None:
        retry = str(self.gateway.settings.retry_after)
        await _answer(send, 503, why.encode(), "text/plain", [(b"retry-after", retry.encode())])


async def _read(receive: Receive, encoding: str, limit: int) -> bytes:
    """The request body, ungzipped, refused past *limit* bytes either way."""
    gzip = "gzip" in encoding.lower()
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzip else None
    parts: List[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        if inflate is not None and chunk:
            chunk = inflate.decompress(chunk, limit + 1 - size)
            if inflate.unconsumed_tail:  # more output than the limit allows
                raise TooLarge
        size += len(chunk)
        if size > limit:
            raise TooLarge
        parts.append(chunk)
        if not message.get("more_body", False):
            break
    if inflate is not None and not inflate.eof:
        raise ValueError("truncated gzip body")
    return b"".join(parts)


def _headers(scope: Scope) -> Dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


async def _answer(
    send: Send, status: int, body: bytes, kind: str,
    extra: Optional[List[Tuple[bytes, bytes]]] = None,
) -> None:
    headers = [(b"content-type", kind.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status,
                "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
