"""A FastAPI shop: one middleware line binds each request's identity.

Run it::

    python examples/fastapi_app.py

It serves the app with uvicorn on 127.0.0.1, plays two users signing up,
buying and downloading a receipt, and prints what Mixpanel received (a local
Mixpanel unless ``OTEL_EXPORTER_MIXPANEL_TOKEN`` is set). Needs ``fastapi``,
``uvicorn`` and ``opentelemetry-instrumentation-fastapi``.

``MixpanelMiddleware`` binds the user for everything the request does: the
server span, structlog events, ``otel_mixpanel.track()`` calls, the body of a
``StreamingResponse`` while it streams, and background tasks after the
response is sent. No endpoint passes a user id.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import Any, AsyncIterator, Dict, Optional

import requests
import structlog
import uvicorn
from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import StreamingResponse
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

import otel_mixpanel
from otel_mixpanel.structlog import MixpanelProcessor
from otel_mixpanel.testing import LocalMixpanel
from otel_mixpanel.web.asgi import MixpanelMiddleware

log = structlog.get_logger("shop")


def current_user(request: Request) -> Optional[str]:
    """Who is asking. A real application reads its authentication here (or
    leaves ``identify`` out: an authenticated ``scope["user"]`` is used); a
    header keeps the demo short."""
    return request.headers.get("x-user-id")


def send_welcome_email(plan: str) -> None:
    """A background task: it runs after the response was sent, still as the user."""
    otel_mixpanel.track("Welcome Email Sent", {"plan": plan})


def create_app() -> FastAPI:
    """The application: the middleware binds the user, endpoints only tag."""
    app = FastAPI()
    app.add_middleware(MixpanelMiddleware, identify=current_user)

    @app.post("/signup")
    async def signup(body: Dict[str, Any], background: BackgroundTasks) -> Dict[str, bool]:
        span = trace.get_current_span()
        span.set_attribute("mixpanel.event", "Signed Up")
        span.set_attribute("mixpanel.properties.plan", body["plan"])
        span.set_attribute("mixpanel.people.set.plan", body["plan"])
        log.info("welcome email queued", mixpanel_event="Welcome Email Queued")
        background.add_task(send_welcome_email, body["plan"])
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

    @app.get("/receipt/{sku}")
    async def receipt(sku: str) -> StreamingResponse:
        async def lines() -> AsyncIterator[str]:
            yield f"receipt for {sku}\n"
            yield "total: 19.00\n"
            # The endpoint has returned by now; the identity is still bound.
            otel_mixpanel.track("Receipt Downloaded", {"sku": sku})

        return StreamingResponse(lines(), media_type="text/plain")

    # Instrument after the middleware is added, so the server span encloses it
    # and gets the identity too.
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

    def __init__(self, app: Any) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.port = int(self.socket.getsockname()[1])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       daemon=True)

    def start(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.server.started:
            raise RuntimeError("uvicorn did not start")
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()


def play(base_url: str, user_id: str, plan: str, sku: str) -> None:
    """One user's visit."""
    with requests.Session() as session:
        session.headers["X-User-Id"] = user_id
        session.post(f"{base_url}/signup", json={"plan": plan}, timeout=10).raise_for_status()
        session.post(f"{base_url}/purchase", json={"sku": sku, "amount": 19.0},
                     timeout=10).raise_for_status()
        session.get(f"{base_url}/receipt/{sku}", timeout=10).raise_for_status()


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
        server.stop()  # waits for the background tasks
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
