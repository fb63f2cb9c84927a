"""A Flask shop: ``MixpanelFlask`` binds each request's identity, endpoints tag
their span, a structlog line and a ``track()`` call.

Run it::

    python examples/flask_app.py

It starts the app on 127.0.0.1, plays two users signing up and buying, and
prints what Mixpanel received (a local Mixpanel unless
``OTEL_EXPORTER_MIXPANEL_TOKEN`` is set). Needs ``flask`` and
``opentelemetry-instrumentation-flask``.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Optional

import requests
import structlog
from flask import Flask, Request, jsonify, request
from opentelemetry import trace
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from werkzeug.serving import make_server

import otel_mixpanel
from otel_mixpanel.structlog import MixpanelProcessor
from otel_mixpanel.testing import LocalMixpanel
from otel_mixpanel.web.flask import MixpanelFlask

log = structlog.get_logger("shop")


def user_from_header(incoming: Request) -> Optional[str]:
    """Who the request is for. A real application would read its session or
    token here; with Flask-Login, leave ``identify`` out: an authenticated
    ``current_user`` is used by itself."""
    return incoming.headers.get("X-User-Id")


def create_app() -> Flask:
    """The application: ``MixpanelFlask`` binds the user, endpoints tag their span."""
    app = Flask(__name__)
    FlaskInstrumentor().instrument_app(app)  # type: ignore[no-untyped-call]
    # The one line. Behind a load balancer, add trusted_proxies=["10.0.0.0/8"];
    # ip=False sends no client address at all. The device id comes from
    # mixpanel-browser's cookie when the page sets one.
    MixpanelFlask(app, identify=user_from_header)

    @app.post("/signup")
    def signup() -> Any:
        plan = request.get_json()["plan"]
        span = trace.get_current_span()
        span.set_attribute("mixpanel.event", "Signed Up")
        span.set_attribute("mixpanel.properties.plan", plan)
        span.set_attribute("mixpanel.people.set.plan", plan)
        log.info("welcome email queued", mixpanel_event="Welcome Email Queued")
        return jsonify(ok=True)

    @app.post("/purchase")
    def purchase() -> Any:
        body = request.get_json()
        span = trace.get_current_span()
        span.set_attribute("mixpanel.event", "Purchased")
        span.set_attribute("mixpanel.properties.sku", body["sku"])
        span.set_attribute("mixpanel.properties.amount", body["amount"])
        span.set_attribute("mixpanel.people.add.purchases", 1)
        span.set_attribute("mixpanel.people.track_charge", body["amount"])
        # An event with no span of its own: the request's identity applies too.
        otel_mixpanel.track("Receipt Sent", {"sku": body["sku"]})
        return jsonify(ok=True)

    return app


def configure_structlog() -> None:
    """The application's structlog chain, with our processor before the renderer."""
    structlog.configure(processors=[
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        MixpanelProcessor(remove_keys=True),
        structlog.processors.JSONRenderer(),
    ])


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
    server = make_server("127.0.0.1", 0, create_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base_url = f"http://127.0.0.1:{server.server_port}"
        users = [("alice", "pro", "sku-a"), ("bob", "free", "sku-b")]
        visits = [threading.Thread(target=play, args=(base_url, *user)) for user in users]
        for visit in visits:
            visit.start()
        for visit in visits:
            visit.join(timeout=30)
    finally:
        server.shutdown()
        thread.join(timeout=10)
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
