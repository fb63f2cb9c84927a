"""A FastAPI shop: identity bound once per request, tagged spans and a structlog line.

Run it::

    python examples/fastapi_app.py

It serves the app with uvicorn on 127.0.0.1, plays two users signing up and
buying, and prints what Mixpanel received (a local Mixpanel unless
``OTEL_EXPORTER_MIXPANEL_TOKEN`` is set). Needs ``fastapi``, ``uvicorn`` and
``opentelemetry-instrumentation-fastapi``.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import Any, Awaitable, Callable, Dict, Optional

import requests
import structlog
import uvicorn
from fastapi import FastAPI, Request, Response
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

import otel_mixpanel
from otel_mixpanel import bind_identity
from otel_mixpanel.structlog import MixpanelProcessor
from otel_mixpanel.testing import LocalMixpanel

log = structlog.get_logger("shop")


def create_app() -> FastAPI:
    """The application: a middleware binds the user, endpoints tag their span."""
    app = FastAPI()

    @app.middleware("http")
    async def bind_user(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        user_id = request.headers.get("x-user-id")
        if not user_id:
            return await call_next(request)
        with bind_identity(user_id=user_id):
            return await call_next(request)

    @app.post("/signup")
    async def signup(body: Dict[str, Any]) -> Dict[str, bool]:
        span = trace.get_current_span()
        span.set_attribute("mixpanel.event", "Signed Up")
        span.set_attribute("mixpanel.properties.plan", body["plan"])
        span.set_attribute("mixpanel.people.set.plan", body["plan"])
        log.info("welcome email queued", mixpanel_event="Welcome Email Queued")
        return {"ok": True}

    @app.post("/purchase")
    async def purchase(body: Dict[str, Any]) -> Dict[str, bool]:
        span = trace.get_current_span()
        span.set_attribute("mixpanel.event", "Purchased")
        span.set_attribute("mixpanel.properties.sku", body["sku"])
        span.set_attribute("mixpanel.properties.amount", body["amount"])
        span.set_attribute("mixpanel.people.add.purchases", 1)
        span.set_attribute("mixpanel.people.track_charge", body["amount"])
        return {"ok": True}

    # Instrument after the routes and middleware exist, so the server span
    # encloses the identity middleware.
    FastAPIInstrumentor.instrument_app(app)
    return app


def configure_structlog() -> None:
    """The application's structlog chain, with our processor before the renderer."""
    structlog.configure(processors=[
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        MixpanelProcessor(remove_keys=True),
        structlog.processors.JSONRenderer(),
    ])


class BackgroundServer:
    """uvicorn on a free loopback port, in a thread, until stop()."""

    def __init__(self, app: FastAPI) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def play(base_url: str, user_id: str, plan: str, sku: str) -> None:
    """One user's visit."""
    headers = {"X-User-Id": user_id}
    requests.post(f"{base_url}/signup", json={"plan": plan}, headers=headers, timeout=10)
    requests.post(f"{base_url}/purchase", json={"sku": sku, "amount": 19.0}, headers=headers,
                  timeout=10)


def main() -> int:
    local: Optional[LocalMixpanel] = None
    if not os.environ.get("OTEL_EXPORTER_MIXPANEL_TOKEN"):
        local = LocalMixpanel().start()
        os.environ.update(local.env())
    pipeline = otel_mixpanel.configure()
    configure_structlog()
    server = BackgroundServer(create_app())
    base_url = server.start()
    try:
        users = [("alice", "pro", "sku-a"), ("bob", "free", "sku-b")]
        visits = [threading.Thread(target=play, args=(base_url, *user)) for user in users]
        for visit in visits:
            visit.start()
        for visit in visits:
            visit.join(timeout=30)
    finally:
        server.stop()
        pipeline.shutdown()
    if local is not None:
        for event in local.unique_events():
            print(f"{event['event']:<22} {event['properties']['distinct_id']}")
        for user in ("alice", "bob"):
            print(f"profile {user}: {local.profiles.get(user)}")
        local.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
