"""A Django shop in one file: the user bound once per request by ``MixpanelMiddleware``.

Run it::

    python examples/django_app.py

It creates two users in an in-memory database, serves the app on 127.0.0.1,
and plays both users at once: each browses anonymously (with the cookie
mixpanel-browser would have set), signs in, signs up, buys and downloads a
receipt (a streaming response). Then it prints what Mixpanel received (a local
Mixpanel unless ``OTEL_EXPORTER_MIXPANEL_TOKEN`` is set). Needs ``django``,
``opentelemetry-instrumentation-django`` and
``opentelemetry-instrumentation-logging``
(``pip install 'otel-mixpanel[django,logging]'``).

No view names the user: the middleware binds the signed-in user
(``request.user.pk``), the browser's Mixpanel device id and the client IP for
the whole request, so the request's span, its log records, ``track()`` calls
and the events a streaming response emits while it streams all carry them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple
from urllib.parse import quote

import django
import requests
from django.conf import settings
from django.contrib.auth import authenticate, login
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler, WSGIServer
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path
from opentelemetry import trace
from opentelemetry.instrumentation.django import DjangoInstrumentor

import otel_mixpanel
from otel_mixpanel.testing import LocalMixpanel
from otel_mixpanel.web import cookie_name

log = logging.getLogger("django_shop")

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # After AuthenticationMiddleware, so that request.user is known. (This demo
    # is a JSON API called by a script, so it leaves out CsrfViewMiddleware.)
    "otel_mixpanel.web.django.MixpanelMiddleware",
]

SETTINGS: Dict[str, Any] = {
    "DEBUG": False,
    "SECRET_KEY": "django-shop-example-only",
    "ALLOWED_HOSTS": ["127.0.0.1", "localhost"],
    "ROOT_URLCONF": __name__,
    "INSTALLED_APPS": ["django.contrib.contenttypes", "django.contrib.auth"],
    # In memory and shared by the server's threads (a plain ":memory:" would
    # be a new, empty database in each thread).
    "DATABASES": {"default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": "file:django_shop?mode=memory&cache=shared",
    }},
    "SESSION_ENGINE": "django.contrib.sessions.backends.signed_cookies",
    "MIDDLEWARE": list(MIDDLEWARE),  # a copy: DjangoInstrumentor inserts its own
    # The options of otel_mixpanel.web.RequestIdentity; all optional. Behind a
    # load balancer, name it so that the client's address is read from
    # X-Forwarded-For: {"trusted_proxies": ["10.0.0.0/8"]}.
    "OTEL_MIXPANEL_IDENTITY": {},
    # INFO records reach the root logger's handlers, OpenTelemetry's among them.
    # Each django.setup() applies LOGGING, which removes the root logger's
    # handlers: otel_mixpanel.configure(logging=True) comes after it (main()).
    "LOGGING": {"version": 1, "disable_existing_loggers": False, "root": {"level": "INFO"}},
}

USERS = [("alice", "pro", "sku-a"), ("bob", "free", "sku-b")]
PASSWORD = "correct horse battery staple"


def login_view(request: HttpRequest) -> HttpResponse:
    """Sign in with a username and password (form-encoded POST)."""
    user = authenticate(request, username=request.POST.get("username"),
                        password=request.POST.get("password"))
    if user is None:
        return JsonResponse({"ok": False}, status=401)
    login(request, user)
    # The middleware bound the identity when the request was still anonymous
    # (the device only): name the user here; the device id stays bound, so
    # Mixpanel links the anonymous events to the user.
    otel_mixpanel.track("Logged In", user_id=str(user.pk))
    return JsonResponse({"ok": True})


def pricing(request: HttpRequest) -> HttpResponse:
    """Open to anyone: an anonymous visitor is known by the device id only."""
    trace.get_current_span().set_attribute("mixpanel.event", "Viewed Pricing")
    return JsonResponse({"pro": 19.0, "free": 0.0})


def signup(request: HttpRequest) -> HttpResponse:
    """A span event, a log record and a track() call: all three carry the user."""
    if not request.user.is_authenticated:
        return JsonResponse({"ok": False}, status=401)
    plan = json.loads(request.body)["plan"]
    span = trace.get_current_span()  # the request's span, from DjangoInstrumentor
    span.set_attribute("mixpanel.event", "Signed Up")
    span.set_attribute("mixpanel.properties.plan", plan)
    span.set_attribute("mixpanel.people.set.plan", plan)
    log.info("welcome email queued", extra={"mixpanel.event": "Welcome Email Queued"})
    otel_mixpanel.track("Trial Started", {"plan": plan, "days": 14})
    return JsonResponse({"ok": True})


def purchase(request: HttpRequest) -> HttpResponse:
    """Revenue on the user's profile, from span attributes."""
    if not request.user.is_authenticated:
        return JsonResponse({"ok": False}, status=401)
    body = json.loads(request.body)
    span = trace.get_current_span()
    span.set_attribute("mixpanel.event", "Purchased")
    span.set_attribute("mixpanel.properties.sku", body["sku"])
    span.set_attribute("mixpanel.properties.amount", body["amount"])
    span.set_attribute("mixpanel.people.add.purchases", 1)
    span.set_attribute("mixpanel.people.track_charge", body["amount"])
    return JsonResponse({"ok": True})


def receipt(request: HttpRequest) -> HttpResponse:
    """A streaming response: its body, and the event at its end, are made after
    the view returned; the middleware binds the identity again while it streams."""
    if not request.user.is_authenticated:
        return JsonResponse({"ok": False}, status=401)
    username = request.user.get_username()

    def lines() -> Iterator[bytes]:
        sent = 0
        for line in ("RECEIPT", f"customer: {username}", "total: 19.00"):
            sent += 1
            yield f"{line}\n".encode()
        otel_mixpanel.track("Receipt Downloaded", {"lines": sent})

    return StreamingHttpResponse(lines(), content_type="text/plain")


urlpatterns = [
    path("login", login_view),
    path("pricing", pricing),
    path("signup", signup),
    path("purchase", purchase),
    path("receipt", receipt),
]


def configure_django(**overrides: Any) -> None:
    """This one-file project's settings (once per process: the first call's
    *overrides* win) and Django's apps."""
    if not settings.configured:
        settings.configure(**{**SETTINGS, **overrides})
    django.setup()


def create_users() -> Dict[str, str]:
    """The tables and the two users; returns each user's Mixpanel id (the pk)
    with the username, to print names rather than numbers."""
    from django.contrib.auth.models import User  # noqa: PLC0415 (needs Django set up)
    from django.core.management import call_command  # noqa: PLC0415

    call_command("migrate", verbosity=0)
    names = {}
    for username, _, _ in USERS:
        user = User.objects.create_user(username, f"{username}@example.com", PASSWORD)
        names[str(user.pk)] = username
    return names


class QuietHandler(WSGIRequestHandler):  # type: ignore[misc]
    """Django's development request handler, without a line per request."""

    def log_message(self, format: str, *args: Any) -> None:
        """Nothing: the example prints what Mixpanel received instead."""


class BackgroundServer:
    """The WSGI application on a free loopback port, in a thread, until stop()."""

    def __init__(self, app: Any, *, threaded: bool = True) -> None:
        server_class = ThreadedWSGIServer if threaded else WSGIServer
        self.server = server_class(("127.0.0.1", 0), QuietHandler)
        self.server.set_app(app)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def mixpanel_cookie(device_id: str) -> Tuple[str, str]:
    """The cookie mixpanel-browser keeps for an anonymous visitor on this site."""
    token = os.environ["OTEL_EXPORTER_MIXPANEL_TOKEN"]
    data = {"distinct_id": f"$device:{device_id}", "$device_id": device_id}
    return cookie_name(token), quote(json.dumps(data))


def play(base_url: str, username: str, plan: str, sku: str) -> None:
    """One visitor: anonymous first, then signed in."""
    with requests.Session() as browser:
        browser.cookies.set(*mixpanel_cookie(f"device-{username}"))
        browser.get(f"{base_url}/pricing", timeout=10).raise_for_status()
        browser.post(f"{base_url}/login", data={"username": username, "password": PASSWORD},
                     timeout=10).raise_for_status()
        browser.post(f"{base_url}/signup", json={"plan": plan}, timeout=10).raise_for_status()
        browser.post(f"{base_url}/purchase", json={"sku": sku, "amount": 19.0},
                     timeout=10).raise_for_status()
        browser.get(f"{base_url}/receipt", timeout=10).raise_for_status()


def main() -> int:
    from django.core.wsgi import get_wsgi_application  # noqa: PLC0415

    local: Optional[LocalMixpanel] = None
    if not os.environ.get("OTEL_EXPORTER_MIXPANEL_TOKEN"):
        local = LocalMixpanel().start()
        os.environ.update(local.env())
    configure_django()
    DjangoInstrumentor().instrument()  # before the application loads its middleware
    application = get_wsgi_application()  # sets Django up again, its LOGGING too
    pipeline = otel_mixpanel.configure(logging=True)  # so after it, as in a wsgi.py
    names = create_users()
    server = BackgroundServer(application)
    base_url = server.start()
    try:
        visits = [threading.Thread(target=play, args=(base_url, *user)) for user in USERS]
        for visit in visits:
            visit.start()
        for visit in visits:
            visit.join(timeout=30)
    finally:
        server.stop()
        pipeline.shutdown()
    if local is not None:
        show(local, names)
        local.stop()
    return 0


def show(local: LocalMixpanel, names: Dict[str, str]) -> None:
    """One line per event received, in order of time: who, from which device and address."""
    rows: List[Tuple[float, str]] = []
    for event in local.unique_events():
        props = event["properties"]
        who = names.get(props["distinct_id"], props["distinct_id"])
        rows.append((props.get("time", time.time()), (
            f"{event['event']:<22} {who:<20} $device_id={props.get('$device_id')} "
            f"ip={props.get('ip')}")))
    for _, row in sorted(rows):
        print(row)
    for pk, username in names.items():
        print(f"profile {username}: {local.profiles.get(pk)}")


if __name__ == "__main__":
    sys.exit(main())
