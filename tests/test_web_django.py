"""Django's MixpanelMiddleware, served over real HTTP on 127.0.0.1: every event a
request makes (its span, log records, ``track()`` calls, what a streaming
response emits while it streams) carries that request's identity, and only it.

Django's settings can be configured once per process: the example's
``configure_django()`` does it (without its logging set-up, so the root logger
keeps the pytest plugin's handler), the first time a test here needs Django.
Each test then serves its own handler: ``ROOT_URLCONF`` points at this module
while the test runs, and ``OTEL_MIXPANEL_IDENTITY`` is read when the handler
loads its middleware. DjangoInstrumentor is undone after the module.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import threading
import warnings
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Dict, Iterator, List, Optional, Tuple
from urllib.parse import quote

import pytest
import requests
import uvicorn
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.test import Client, RequestFactory, override_settings
from django.urls import path
from opentelemetry import trace
from opentelemetry.instrumentation.django import DjangoInstrumentor

import otel_mixpanel
from examples import django_app
from otel_mixpanel.identity import current_identity
from otel_mixpanel.pytest_plugin import MixpanelCapture
from otel_mixpanel.web import cookie_name
from otel_mixpanel.web.django import MixpanelMiddleware
from tests.helpers import until

TOKEN = "django-test-token"
# Tagged records at WARNING: they pass the root logger's default level, so
# no test changes a logger's level.
log = logging.getLogger("tests.web_django")

Event = Dict[str, Any]

# Django (6.1 with Python 3.13 above all) leaves the per-thread database connections of
# its servers' worker threads to the garbage collector; their "unclosed database"
# warning is expected here, not a failure (the serve fixture collects them at its end).
pytestmark = pytest.mark.filterwarnings("ignore:unclosed database:ResourceWarning")


# --- the views ---------------------------------------------------------------------------


class AsyncRendezvous:
    """Lets async views wait until *parties* of them are inside at once (on the
    server's one event loop)."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self.all_in: Optional[asyncio.Event] = None

    async def wait(self) -> None:
        if self.all_in is None:
            self.all_in = asyncio.Event()
        self.arrived += 1
        if self.arrived >= self.parties:
            self.all_in.set()
        await asyncio.wait_for(self.all_in.wait(), timeout=10)


# Set by the concurrency tests: the views wait on them, so that both users'
# requests are inside their views, identity bound, at the same time.
RENDEZVOUS: Dict[str, Any] = {}


def tag_span(name: str, probe: str) -> None:
    span = trace.get_current_span()  # the request's span, from DjangoInstrumentor
    span.set_attribute("mixpanel.event", f"{name} Span")
    span.set_attribute("mixpanel.properties.probe", probe)


def emit(name: str, probe: str) -> None:
    """A tagged log record and a track() call, neither naming a user."""
    log.warning("probe", extra={"mixpanel.event": f"{name} Log",
                                "mixpanel.properties.probe": probe})
    otel_mixpanel.track(f"{name} Track", {"probe": probe})


def probe(request: HttpRequest) -> HttpResponse:
    tag = request.headers["X-Probe"]
    tag_span("Probe", tag)
    if "X-Rendezvous" in request.headers:
        RENDEZVOUS["threads"].wait()
    emit("Probe", tag)
    return JsonResponse(current_identity())


def boom(request: HttpRequest) -> HttpResponse:
    tag = request.headers["X-Probe"]
    tag_span("Boom", tag)
    emit("Boom", tag)
    raise RuntimeError("the view failed")


def stream(request: HttpRequest) -> HttpResponse:
    tag = request.headers["X-Probe"]
    tag_span("Stream", tag)

    def chunks() -> Iterator[bytes]:  # runs after the view and the middleware returned
        for n in range(3):
            otel_mixpanel.track("Stream Chunk", {"probe": tag, "chunk": n})
            yield b"chunk\n"
        emit("Stream End", tag)

    return StreamingHttpResponse(chunks(), content_type="text/plain")


async def aprobe(request: HttpRequest) -> HttpResponse:
    tag = request.headers["X-Probe"]
    tag_span("Async Probe", tag)
    if "X-Rendezvous" in request.headers:
        await RENDEZVOUS["async"].wait()
    emit("Async Probe", tag)
    return JsonResponse(current_identity())


async def astream(request: HttpRequest) -> HttpResponse:
    tag = request.headers["X-Probe"]

    async def chunks() -> AsyncIterator[bytes]:
        for n in range(3):
            await asyncio.sleep(0)
            otel_mixpanel.track("Async Stream Chunk", {"probe": tag, "chunk": n})
            yield b"chunk\n"

    return StreamingHttpResponse(chunks(), content_type="text/plain")


urlpatterns = [
    path("probe", probe),
    path("boom", boom),
    path("stream", stream),
    path("aprobe", aprobe),
    path("astream", astream),
]


# --- serving ---------------------------------------------------------------------------


@dataclass
class Users:
    """The two users: their Mixpanel id (the pk) and a signed-in session cookie."""

    ids: Dict[str, str]
    sessions: Dict[str, str]


@pytest.fixture(scope="module")
def users() -> Iterator[Users]:
    """Django set up (once per process), instrumented for this module, two users."""
    django_app.configure_django(LOGGING_CONFIG=None)
    from django.contrib.auth.models import User  # noqa: PLC0415 (needs Django set up)
    from django.core.management import call_command  # noqa: PLC0415

    call_command("migrate", verbosity=0)
    ids, sessions = {}, {}
    for name in ("alice", "bob"):
        user = User.objects.get_or_create(username=name)[0]
        client = Client()
        client.force_login(user)  # a signed-cookie session: no password hashing
        ids[name] = str(user.pk)
        sessions[name] = client.cookies[settings.SESSION_COOKIE_NAME].value
    DjangoInstrumentor().instrument()  # puts its middleware first in settings.MIDDLEWARE
    try:
        yield Users(ids, sessions)
    finally:
        DjangoInstrumentor().uninstrument()


class AsgiServer:
    """uvicorn serving a Django ASGI handler on a free loopback port, in a thread."""

    def __init__(self, app: Any) -> None:
        # No log_config, no log_level: uvicorn leaves the logging set-up alone.
        config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_config=None)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> str:
        self.thread.start()
        assert until(lambda: self.server.started, timeout=10), "uvicorn did not start"
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@dataclass
class Served:
    url: str
    middleware: MixpanelMiddleware


Serve = Callable[..., Served]


@pytest.fixture
def serve(
    users: Users, mixpanel_capture: MixpanelCapture, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Serve]:
    """``serve(asgi=False, threaded=True, instrumented=True, **identity_options)``:
    a server for this test, with its own middleware instance, stopped after the
    test (``instrumented=False``: without DjangoInstrumentor's middleware)."""
    from django.core.handlers.asgi import ASGIHandler  # noqa: PLC0415
    from django.core.handlers.wsgi import WSGIHandler  # noqa: PLC0415

    made: List[MixpanelMiddleware] = []
    init = MixpanelMiddleware.__init__

    def recording_init(self: MixpanelMiddleware, get_response: Callable[[Any], Any]) -> None:
        init(self, get_response)
        made.append(self)

    monkeypatch.setattr(MixpanelMiddleware, "__init__", recording_init)
    stops: List[Callable[[], None]] = []

    def start(
        *, asgi: bool = False, threaded: bool = True, instrumented: bool = True, **options: Any
    ) -> Served:
        otel = DjangoInstrumentor._opentelemetry_middleware
        middleware = [m for m in settings.MIDDLEWARE if instrumented or m != otel]
        with override_settings(OTEL_MIXPANEL_IDENTITY={"token": TOKEN, **options},
                               MIDDLEWARE=middleware):
            app = ASGIHandler() if asgi else WSGIHandler()
        server = AsgiServer(app) if asgi else django_app.BackgroundServer(app, threaded=threaded)
        stops.append(server.stop)
        return Served(server.start(), made[-1])

    with override_settings(ROOT_URLCONF=__name__):
        try:
            yield start
        finally:
            for stop in reversed(stops):
                stop()
            # Django's ASGI handler runs sync code in executor threads, each with a
            # database connection nothing closes when the thread ends: finalized here,
            # where that is expected, not as an "unraisable" warning in a later test.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                gc.collect()


def cookies(
    users: Users, user: Optional[str] = None, device: Optional[Dict[str, Any]] = None
) -> Dict[str, str]:
    """A signed-in session (of *user*) and mixpanel-browser's cookie (with *device*)."""
    jar = {}
    if user is not None:
        jar[settings.SESSION_COOKIE_NAME] = users.sessions[user]
    if device is not None:
        jar[cookie_name(TOKEN)] = quote(json.dumps(device))
    return jar


def call(
    url: str, probe: str, *, jar: Optional[Dict[str, str]] = None,
    headers: Optional[Dict[str, str]] = None, http: Any = requests,
) -> requests.Response:
    response: requests.Response = http.get(
        url, headers={"X-Probe": probe, **(headers or {})}, cookies=jar or {}, timeout=10)
    return response


def events_of(capture: MixpanelCapture, probe: str) -> Dict[str, Event]:
    """The events a request tagged *probe* made, by name (one each)."""
    found: Dict[str, Event] = {}
    for event in capture.events():
        if event["properties"].get("probe") == probe:
            name = event["event"]
            if "chunk" in event["properties"]:
                name = f"{name} {event['properties']['chunk']}"
            assert name not in found, f"{name} twice"
            found[name] = event
    return found


def identity(event: Event) -> Tuple[Any, Any, Any]:
    """What Mixpanel knows the event's sender by: distinct_id, $user_id, $device_id."""
    props = event["properties"]
    return props.get("distinct_id"), props.get("$user_id"), props.get("$device_id")


PROBE = {"Probe Span", "Probe Log", "Probe Track"}


# --- the tests ---------------------------------------------------------------------------


def test_every_event_of_a_request_carries_its_signed_in_user(
    serve: Serve, users: Users, mixpanel_capture: MixpanelCapture
) -> None:
    """The request's span, its log record and its track() call all carry the
    user AuthenticationMiddleware found (request.user.pk), and the device id
    from mixpanel-browser's cookie; an anonymous request carries neither user."""
    served = serve()
    alice = users.ids["alice"]
    device = {"distinct_id": "$device:dev-a", "$device_id": "dev-a"}
    response = call(f"{served.url}/probe", "signed-in", jar=cookies(users, "alice", device))
    assert response.status_code == 200
    assert response.json()["mixpanel.user_id"] == alice
    assert call(f"{served.url}/probe", "anonymous").status_code == 200

    signed_in = events_of(mixpanel_capture, "signed-in")
    assert set(signed_in) == PROBE
    for event in signed_in.values():
        assert identity(event) == (alice, alice, "dev-a"), event["event"]
    # No user, no cookie: nothing to name the sender by, nothing is sent in anyone's name.
    assert all(identity(e)[1] is None for e in events_of(mixpanel_capture, "anonymous").values())
    assert mixpanel_capture.rejected() == []


def test_the_identify_option_wins_over_the_session_user(
    serve: Serve, users: Users, mixpanel_capture: MixpanelCapture
) -> None:
    """``identify`` (here reading a header) names the user; where it returns
    None, the signed-in user is used."""
    served = serve(identify=lambda request: request.headers.get("X-Customer"))
    jar = cookies(users, "alice")
    assert call(f"{served.url}/probe", "header", jar=jar,
                headers={"X-Customer": "cust-9"}).status_code == 200
    assert call(f"{served.url}/probe", "session", jar=jar).status_code == 200
    for event in events_of(mixpanel_capture, "header").values():
        assert identity(event)[:2] == ("cust-9", "cust-9")
    session = events_of(mixpanel_capture, "session")
    assert set(session) == PROBE
    for event in session.values():
        assert identity(event)[:2] == (users.ids["alice"], users.ids["alice"])


@pytest.mark.parametrize("asgi", [False, True], ids=["wsgi", "asgi"])
def test_identify_may_read_the_loaded_request_user(
    serve: Serve, users: Users, mixpanel_capture: MixpanelCapture, asgi: bool
) -> None:
    """The middleware loads request.user before calling ``identify`` (under
    ASGI in a thread: Django refuses database queries on the event loop), so
    ``identify`` can name the user by another id than the primary key."""
    served = serve(asgi=asgi, identify=lambda request: request.user.get_username() or None)
    assert call(f"{served.url}/probe", "by-name", jar=cookies(users, "alice")).ok
    made = events_of(mixpanel_capture, "by-name")
    assert set(made) == PROBE
    for event in made.values():
        assert identity(event)[:2] == ("alice", "alice"), event["event"]
    assert served.middleware.identity.stats()["dropped"] == {}


def test_concurrent_requests_of_two_users_never_swap_identities(
    serve: Serve, users: Users, mixpanel_capture: MixpanelCapture
) -> None:
    """Two users' requests, each pair inside their views at the same time on
    two server threads: every event carries its own request's user."""
    served = serve()
    rounds = 5
    RENDEZVOUS["threads"] = threading.Barrier(2, timeout=10)
    start = threading.Barrier(2, timeout=10)
    failures: List[str] = []

    def visit(name: str) -> None:
        with requests.Session() as http:
            start.wait()
            for i in range(rounds):
                response = call(f"{served.url}/probe", f"{name}-{i}", jar=cookies(users, name),
                                headers={"X-Rendezvous": "1"}, http=http)
                if response.status_code != 200:
                    failures.append(f"{name}-{i}: {response.status_code}")

    threads = [threading.Thread(target=visit, args=(name,)) for name in ("alice", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert failures == [] and not any(t.is_alive() for t in threads)

    for name in ("alice", "bob"):
        for i in range(rounds):
            made = events_of(mixpanel_capture, f"{name}-{i}")
            assert set(made) == PROBE, f"{name}-{i}"
            for event in made.values():
                assert identity(event)[:2] == (users.ids[name], users.ids[name]), (name, i, event)


@pytest.mark.parametrize("device", [
    {"distinct_id": "$device:dev-1", "$device_id": "dev-1", "$user_id": "mallory"},
    {"distinct_id": "$device:dev-1"},  # older mixpanel-browser: the device in distinct_id
])
def test_the_device_id_comes_from_the_mixpanel_cookie(
    serve: Serve, users: Users, mixpanel_capture: MixpanelCapture, device: Dict[str, Any]
) -> None:
    """An anonymous visitor is its device; the cookie's user id is never
    trusted (any browser can claim one)."""
    served = serve()
    assert call(f"{served.url}/probe", "device", jar=cookies(users, None, device)).ok
    made = events_of(mixpanel_capture, "device")
    assert set(made) == PROBE
    for event in made.values():
        assert identity(event) == ("dev-1", None, "dev-1")
    assert "mallory" not in json.dumps(list(made.values()))


def test_a_malformed_mixpanel_cookie_is_ignored_and_counted(
    serve: Serve, users: Users, mixpanel_capture: MixpanelCapture
) -> None:
    """The request succeeds with the signed-in user and no device id; the
    middleware counts the cookie it could not read."""
    served = serve()
    jar = {**cookies(users, "alice"), cookie_name(TOKEN): quote("{not json")}
    assert call(f"{served.url}/probe", "malformed", jar=jar).status_code == 200
    jar[cookie_name(TOKEN)] = quote(json.dumps(["not", "an", "object"]))
    assert call(f"{served.url}/probe", "not-an-object", jar=jar).status_code == 200
    for probe_tag in ("malformed", "not-an-object"):
        made = events_of(mixpanel_capture, probe_tag)
        assert set(made) == PROBE
        for event in made.values():
            assert identity(event) == (users.ids["alice"], users.ids["alice"], None)
    assert served.middleware.identity.stats()["dropped"] == {"malformed_mixpanel_cookie": 2}


@pytest.mark.parametrize(("options", "forwarded_for", "expected"), [
    ({}, "203.0.113.9", "127.0.0.1"),  # X-Forwarded-For from an untrusted peer: ignored
    ({"trusted_proxies": ["127.0.0.1"]}, "198.51.100.1, 203.0.113.9", "203.0.113.9"),
    ({"trusted_proxies": ["127.0.0.0/8", "203.0.113.0/24"]}, "198.51.100.1, 203.0.113.9",
     "198.51.100.1"),
    ({"ip": False, "trusted_proxies": ["127.0.0.1"]}, "203.0.113.9", None),
])
def test_the_client_ip_is_sent_only_when_enabled_and_forwarded_only_by_trusted_proxies(
    serve: Serve, users: Users, mixpanel_capture: MixpanelCapture,
    options: Dict[str, Any], forwarded_for: str, expected: Optional[str],
) -> None:
    """``ip``: the peer (REMOTE_ADDR), or, when the peer is a trusted proxy, the
    X-Forwarded-For entry before the last trusted one; ``ip=False``: none."""
    served = serve(**options)
    response = call(f"{served.url}/probe", "ip", jar=cookies(users, "alice"),
                    headers={"X-Forwarded-For": forwarded_for})
    assert response.json().get("mixpanel.ip") == expected
    made = events_of(mixpanel_capture, "ip")
    assert set(made) == PROBE
    for event in made.values():
        assert event["properties"].get("ip") == expected, event["event"]


def test_a_streaming_response_keeps_the_identity_while_it_streams(
    serve: Serve, users: Users, mixpanel_capture: MixpanelCapture
) -> None:
    """Events the body's generator emits, after the view and the middleware
    returned, carry the request's user (the middleware binds it again)."""
    served = serve()
    jar = {**cookies(users, "bob"), cookie_name(TOKEN): quote("{not json")}
    response = call(f"{served.url}/stream", "stream", jar=jar)
    assert response.text == "chunk\n" * 3
    # Resolved once: streaming binds the same ids again, the cookie is not read twice.
    assert served.middleware.identity.stats()["dropped"] == {"malformed_mixpanel_cookie": 1}
    made = events_of(mixpanel_capture, "stream")
    assert set(made) == {"Stream Span", "Stream Chunk 0", "Stream Chunk 1", "Stream Chunk 2",
                         "Stream End Log", "Stream End Track"}
    for event in made.values():
        assert identity(event)[:2] == (users.ids["bob"], users.ids["bob"]), event["event"]


@pytest.mark.parametrize("instrumented", [True, False],
                         ids=["DjangoInstrumentor", "no-instrumentation"])
def test_nothing_stays_bound_on_a_server_thread_after_a_failed_or_streamed_request(
    serve: Serve, users: Users, mixpanel_capture: MixpanelCapture, instrumented: bool
) -> None:
    """One server thread serves alice's failing and streaming requests, then an
    anonymous visitor's: the visitor's events carry no trace of alice. (Each
    request of DjangoInstrumentor starts from a fresh context, which would hide
    a leak but for what the visitor's body emits while it streams; without the
    instrumentation, every event would show one.)"""
    served = serve(threaded=False, instrumented=instrumented)  # one thread, one context
    alice = users.ids["alice"]
    assert call(f"{served.url}/boom", "boom", jar=cookies(users, "alice")).status_code == 500
    assert call(f"{served.url}/stream", "stream", jar=cookies(users, "alice")).ok
    visitor = cookies(users, None, {"$device_id": "dev-v"})
    assert call(f"{served.url}/stream", "after-stream", jar=visitor).ok
    assert call(f"{served.url}/probe", "after", jar=visitor).ok

    span = {"Boom Span"} if instrumented else set()
    boomed = events_of(mixpanel_capture, "boom")
    assert set(boomed) == {*span, "Boom Log", "Boom Track"}
    assert all(identity(e)[1] == alice for e in boomed.values())
    assert all(identity(e)[1] == alice for e in events_of(mixpanel_capture, "stream").values())
    after = {**events_of(mixpanel_capture, "after-stream"), **events_of(mixpanel_capture, "after")}
    span = {"Stream Span", "Probe Span"} if instrumented else set()
    assert set(after) == {*span, "Stream Chunk 0", "Stream Chunk 1", "Stream Chunk 2",
                          "Stream End Log", "Stream End Track", "Probe Log", "Probe Track"}
    for event in after.values():
        assert identity(event) == ("dev-v", None, "dev-v"), event["event"]


def test_the_identity_is_unbound_when_the_rest_of_the_chain_raises(users: Users) -> None:
    """Called directly with a get_response that raises (what Django does not
    turn into a response), the middleware leaves nothing bound; a streaming
    body closed before its end (a client gone) unbinds too."""
    factory = RequestFactory()

    def failing(request: HttpRequest) -> HttpResponse:
        assert current_identity()["mixpanel.user_id"] == "u-1"
        raise RuntimeError("down")

    def streaming(request: HttpRequest) -> HttpResponse:
        return StreamingHttpResponse(iter([b"a", b"b"]))

    with override_settings(OTEL_MIXPANEL_IDENTITY={"identify": lambda request: "u-1"}):
        raising, streamer = MixpanelMiddleware(failing), MixpanelMiddleware(streaming)
    with pytest.raises(RuntimeError, match="down"):
        raising(factory.get("/"))
    assert current_identity() == {}

    response = streamer(factory.get("/"))
    assert current_identity() == {}
    try:
        assert next(iter(response)) == b"a"
        assert current_identity()["mixpanel.user_id"] == "u-1"  # bound while it streams
    finally:
        response.close()  # as a server does when the client stopped reading
    assert current_identity() == {}


def test_async_views_under_asgi_carry_each_requests_user(
    serve: Serve, users: Users, mixpanel_capture: MixpanelCapture
) -> None:
    """Django under uvicorn, the middleware chain async: two users' async views
    inside at once on one event loop, and a sync view, each carry their user."""
    served = serve(asgi=True)
    RENDEZVOUS["async"] = AsyncRendezvous(2)
    results: Dict[str, int] = {}

    def visit(name: str) -> None:
        response = call(f"{served.url}/aprobe", f"async-{name}", jar=cookies(users, name),
                        headers={"X-Rendezvous": "1"})
        results[name] = response.status_code

    threads = [threading.Thread(target=visit, args=(name,)) for name in ("alice", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == {"alice": 200, "bob": 200}
    assert call(f"{served.url}/probe", "sync-under-asgi", jar=cookies(users, "bob")).ok

    for name in ("alice", "bob"):
        made = events_of(mixpanel_capture, f"async-{name}")
        assert set(made) == {"Async Probe Span", "Async Probe Log", "Async Probe Track"}
        for event in made.values():
            assert identity(event)[:2] == (users.ids[name], users.ids[name]), event["event"]
    made = events_of(mixpanel_capture, "sync-under-asgi")
    assert set(made) == PROBE
    assert all(identity(e)[:2] == (users.ids["bob"],) * 2 for e in made.values())


def test_an_async_streaming_response_keeps_the_identity_under_asgi(
    serve: Serve, users: Users, mixpanel_capture: MixpanelCapture
) -> None:
    """An async generator body, iterated by Django's ASGI handler after the
    view returned, emits with the request's user and device."""
    served = serve(asgi=True)
    device = {"$device_id": "dev-s"}
    response = call(f"{served.url}/astream", "astream", jar=cookies(users, "alice", device))
    assert response.text == "chunk\n" * 3
    made = events_of(mixpanel_capture, "astream")
    assert set(made) == {f"Async Stream Chunk {n}" for n in range(3)}
    for event in made.values():
        assert identity(event) == (users.ids["alice"], users.ids["alice"], "dev-s")
