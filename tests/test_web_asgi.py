"""otel_mixpanel.web.asgi.MixpanelMiddleware under a real uvicorn server on
127.0.0.1, driven over real HTTP (and a WebSocket): every event a request
makes carries that request's identity, and no other request's.

Each application emits its events with no user id of its own; the user comes
only from the middleware. Every event names the request that made it (the
``request`` property, from the URL), so a leak shows up as a request whose
event carries another request's user.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
import sys
import threading
from contextlib import contextmanager
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    Iterator,
    List,
    MutableMapping,
    Optional,
    Tuple,
)
from urllib.parse import quote

import httpx
import pytest
import requests
import structlog
import uvicorn
from fastapi import FastAPI
from opentelemetry import baggage, trace
from opentelemetry._logs import get_logger_provider
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from starlette.applications import Starlette
from starlette.background import BackgroundTasks
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

import otel_mixpanel
from examples import fastapi_app
from otel_mixpanel import _compat
from otel_mixpanel.identity import current_identity
from otel_mixpanel.pytest_plugin import MixpanelCapture
from otel_mixpanel.structlog import MixpanelProcessor
from otel_mixpanel.web import cookie_name
from otel_mixpanel.web.asgi import MixpanelMiddleware
from tests.helpers import log as emit_log
from tests.helpers import until

# ASGI's own types, spelled here so the bare application below owes nothing to Starlette.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOKEN = "0123456789abcdef0123456789abcdef"  # the browser's project token: names the cookie
USER = "mixpanel.user_id"

def _stdlib_logging_is_sent() -> bool:
    """The pytest plugin's pipeline hooks stdlib logging when it can (as it decides)."""
    try:
        _compat.logging_handler_class()
    except ImportError:
        return False
    return True


STDLIB_LOGGING = _stdlib_logging_is_sent()
# One event of each kind a request can make; emit_everything() makes all but the first.
KINDS = ("Server Span Event", "Span Event", "Log Event", "Structlog Event", "Track Event",
         *(("Stdlib Log Event",) if STDLIB_LOGGING else ()))
tracer = trace.get_tracer("tests.web_asgi")
slog = structlog.get_logger("tests.web_asgi")


@pytest.fixture(autouse=True)
def structlog_chain() -> Iterator[None]:
    """A structlog chain that sends tagged events (to the session pipeline)."""
    structlog.configure(processors=[MixpanelProcessor(), structlog.processors.JSONRenderer()])
    yield
    structlog.reset_defaults()


@contextmanager
def serve(app: Any, **config: Any) -> Iterator[str]:
    """*app* under uvicorn on a free 127.0.0.1 port, in a thread; its base URL.
    Stopped (and its thread joined) when the block ends."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    options: Dict[str, Any] = {"log_level": "warning", "lifespan": "off",
                               "timeout_graceful_shutdown": 5, **config}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="uvicorn-test", daemon=True)
    thread.start()
    try:
        assert until(lambda: server.started or not thread.is_alive(), timeout=10)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
    assert not thread.is_alive(), "uvicorn did not stop"


def session() -> requests.Session:
    """A client that goes straight to 127.0.0.1, whatever proxy the environment names."""
    client = requests.Session()
    client.trust_env = False
    return client


def header_user(request: HTTPConnection) -> Optional[str]:
    """The demo authentication: the ``X-User-Id`` header."""
    return request.headers.get("x-user-id")


def mixpanel_cookie(**ids: str) -> str:
    """The cookie mixpanel-browser sets: URL-encoded JSON under ``mp_<token>_mixpanel``."""
    return f"{cookie_name(TOKEN)}={quote(json.dumps(ids))}"


def emit_everything(request_id: str) -> None:
    """One span, one OpenTelemetry log record, one structlog event, one
    ``track()`` call and one stdlib ``logging`` record, each naming
    *request_id* and none naming a user."""
    with tracer.start_as_current_span("work") as span:
        span.set_attribute("mixpanel.event", "Span Event")
        span.set_attribute("mixpanel.properties.request", request_id)
    emit_log(get_logger_provider().get_logger("tests.web_asgi"), body="log record",
             attributes={"mixpanel.event": "Log Event", "mixpanel.properties.request": request_id})
    slog.info("structlog event", mixpanel_event="Structlog Event",
              mixpanel_properties={"request": request_id})
    otel_mixpanel.track("Track Event", {"request": request_id})
    if STDLIB_LOGGING:  # WARNING: the root logger's default level lets it through
        logging.getLogger("tests.web_asgi").warning("stdlib record", extra={
            "mixpanel.event": "Stdlib Log Event", "mixpanel.properties.request": request_id})


def tag_server_span(request_id: str) -> None:
    """Make the request's server span (FastAPI's instrumentation) an event."""
    span = trace.get_current_span()
    span.set_attribute("mixpanel.event", "Server Span Event")
    span.set_attribute("mixpanel.properties.request", request_id)


def events_by_request(capture: MixpanelCapture, name: str, count: int) -> Dict[str, Any]:
    """The properties of the *count* events called *name*, by their ``request``
    property; waits (bounded) for them, and fails on more or fewer."""
    found: List[Dict[str, Any]] = []

    def arrived() -> bool:
        found[:] = capture.events(name)
        return len(found) >= count

    until(arrived, timeout=15)
    assert len(found) == count, f"{len(found)} {name!r} events, expected {count}"
    by_request = {e["properties"]["request"]: e["properties"] for e in found}
    assert len(by_request) == count, f"two {name!r} events name the same request"
    return by_request


def users_by_request(capture: MixpanelCapture, name: str, count: int) -> Dict[str, Any]:
    """``{request: distinct_id}`` of the events called *name* (``""`` for no
    user); each event's ``$user_id`` agrees with its ``distinct_id``."""
    events = events_by_request(capture, name, count)
    for properties in events.values():
        assert properties.get("$user_id", "") == properties["distinct_id"], properties
    return {request: p["distinct_id"] for request, p in events.items()}


class Rendezvous:
    """Holds each coroutine that arrives until *parties* of them wait, so they
    all run at once on the server's event loop (bounded: 10 s)."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self._all_here: Optional[asyncio.Event] = None  # made on the server's loop

    async def wait(self) -> None:
        if self._all_here is None:
            self._all_here = asyncio.Event()
        self.arrived += 1
        if self.arrived >= self.parties:
            self._all_here.set()
        await asyncio.wait_for(self._all_here.wait(), timeout=10)


def run_threads(count: int, target: Callable[[int], None]) -> None:
    """*target(i)* in *count* threads at once; re-raises the first failure."""
    errors: List[BaseException] = []

    def run(index: int) -> None:
        try:
            target(index)
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a client thread hung"
    if errors:
        raise errors[0]


def instrumented(app: FastAPI) -> FastAPI:
    """*app* with FastAPI's instrumentation, added after the middleware, so the
    server span encloses the identity (as the example does)."""
    FastAPIInstrumentor.instrument_app(app)
    return app


# ---------------------------------------------------------------- every kind of event


def test_every_event_of_a_request_carries_its_user(mixpanel_capture: MixpanelCapture) -> None:
    """The server span, a span, a log record, a structlog event and a track()
    call of each request carry that request's user; the next request on the
    same keep-alive connection starts with nothing bound."""
    app = FastAPI()
    app.add_middleware(MixpanelMiddleware, identify=header_user)

    @app.get("/act/{request_id}")
    async def act(request_id: str) -> Dict[str, Any]:
        tag_server_span(request_id)
        emit_everything(request_id)
        return {"identity": current_identity(), "baggage": dict(baggage.get_all())}

    answers = {}
    with serve(instrumented(app)) as url, session() as client:
        for request_id, user in [("r1", "alice"), ("r2", "bob"), ("r3", None)]:
            headers = {"X-User-Id": user} if user else {}
            answer = client.get(f"{url}/act/{request_id}", headers=headers, timeout=10)
            assert answer.status_code == 200
            answers[request_id] = answer.json()

    for kind in KINDS:
        assert users_by_request(mixpanel_capture, kind, 3) == {
            "r1": "alice", "r2": "bob", "r3": ""}, kind
    assert answers["r1"]["identity"][USER] == "alice"
    assert answers["r2"]["identity"][USER] == "bob"
    # The user travels as baggage (propagate=True by default); the IP never does.
    assert answers["r2"]["baggage"] == {USER: "bob"}
    # No user: only the client's address is bound, nothing of alice or bob.
    assert answers["r3"] == {"identity": {"mixpanel.ip": "127.0.0.1"}, "baggage": {}}
    assert mixpanel_capture.rejected() == []


def test_wrapping_an_instrumented_app_from_outside_still_tags_its_telemetry(
    mixpanel_capture: MixpanelCapture,
) -> None:
    """FastAPI's instrumentation starts each request from a context read from the
    headers alone: the identity bound outside it still tags the request's spans
    and records; only the baggage (for downstream services) stays outside."""
    app = FastAPI()

    @app.get("/act/{request_id}")
    async def act(request_id: str) -> Dict[str, Any]:
        tag_server_span(request_id)
        emit_everything(request_id)
        return {"baggage": dict(baggage.get_all())}

    outside = MixpanelMiddleware(instrumented(app), identify=header_user)
    with serve(outside) as url, session() as client:
        answer = client.get(f"{url}/act/r1", headers={"X-User-Id": "alice"}, timeout=10)
    assert answer.status_code == 200
    for kind in KINDS:
        assert users_by_request(mixpanel_capture, kind, 1) == {"r1": "alice"}, kind
    assert answer.json()["baggage"] == {}


# ------------------------------------------------------------------------ concurrency


def test_concurrent_threads_keep_identities_apart(mixpanel_capture: MixpanelCapture) -> None:
    """Eight users' requests, started together (a Barrier) from eight client
    threads, run at the same time in the server's worker threads (a sync
    endpoint that waits on a second Barrier): each request's events carry its
    own user, round after round."""
    users, rounds = 8, 3
    in_the_endpoint = threading.Barrier(users, timeout=10)
    app = FastAPI()
    app.add_middleware(MixpanelMiddleware, identify=header_user)

    @app.post("/sync/{request_id}")
    def sync_act(request_id: str) -> Dict[str, Any]:  # runs in the thread pool
        before = current_identity().get(USER)
        in_the_endpoint.wait()  # every user's request is in a worker thread now
        tag_server_span(request_id)
        emit_everything(request_id)
        return {"before": before, "after": current_identity().get(USER)}

    start = threading.Barrier(users, timeout=10)
    seen: Dict[str, Any] = {}

    def visit(index: int) -> None:
        user = f"user-{index}"
        with session() as client:
            for turn in range(rounds):
                start.wait()
                answer = client.post(f"{url}/sync/{user}.{turn}", headers={"X-User-Id": user},
                                     timeout=20)
                assert answer.status_code == 200, answer.text
                seen[f"{user}.{turn}"] = answer.json()

    with serve(instrumented(app)) as url:
        run_threads(users, visit)

    expected = {f"user-{i}.{t}": f"user-{i}" for i in range(users) for t in range(rounds)}
    assert seen == {rid: {"before": user, "after": user} for rid, user in expected.items()}
    for kind in KINDS:
        assert users_by_request(mixpanel_capture, kind, len(expected)) == expected, kind


def test_many_concurrent_asyncio_requests_keep_identities_apart(
    mixpanel_capture: MixpanelCapture,
) -> None:
    """Fifty users' requests, all inside the same async endpoint at once (each
    waits there until all fifty arrived), each fanning out to two asyncio
    tasks: every request and every task sees, and tags with, its own user."""
    users = 50
    all_in = Rendezvous(users)
    app = FastAPI()
    app.add_middleware(MixpanelMiddleware, identify=header_user)

    async def child(request_id: str) -> Optional[str]:
        await asyncio.sleep(0)
        otel_mixpanel.track("Child Task Event", {"request": request_id})
        await asyncio.sleep(0)
        return current_identity().get(USER)

    @app.post("/act/{request_id}")
    async def act(request_id: str) -> Dict[str, Any]:
        seen = [current_identity().get(USER)]
        await all_in.wait()  # the other 49 requests are bound on this loop too
        tag_server_span(request_id)
        emit_everything(request_id)
        await asyncio.sleep(0)
        seen.append(current_identity().get(USER))
        seen.extend(await asyncio.gather(child(f"{request_id}/a"), child(f"{request_id}/b")))
        return {"seen": seen}

    async def play(base_url: str) -> List[httpx.Response]:
        limits = httpx.Limits(max_connections=users)
        async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits,
                                     trust_env=False) as client:
            return await asyncio.gather(*(
                client.post(f"/act/user-{i}", headers={"X-User-Id": f"user-{i}"})
                for i in range(users)
            ))

    with serve(instrumented(app)) as url:
        answers = asyncio.run(play(url))

    for index, answer in enumerate(answers):
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"seen": [f"user-{index}"] * 4}
    expected = {f"user-{i}": f"user-{i}" for i in range(users)}
    for kind in KINDS:
        assert users_by_request(mixpanel_capture, kind, users) == expected, kind
    children = {f"user-{i}/{t}": f"user-{i}" for i in range(users) for t in "ab"}
    assert users_by_request(mixpanel_capture, "Child Task Event", 2 * users) == children


def test_a_task_a_request_spawned_keeps_its_user_after_the_request(
    mixpanel_capture: MixpanelCapture,
) -> None:
    """alice's request starts an asyncio task and returns; the task tracks only
    while bob's request is running, and still carries alice (an asyncio task
    copies the context it was created in), while bob's events carry bob."""
    state: Dict[str, Any] = {}
    app = FastAPI()
    app.add_middleware(MixpanelMiddleware, identify=header_user)

    async def later() -> None:
        await asyncio.wait_for(state["bob_is_in"].wait(), timeout=10)
        otel_mixpanel.track("Late Task Event", {"request": "alice-task"})
        state["task_done"].set()

    @app.post("/start")
    async def start() -> Dict[str, bool]:
        state.update(bob_is_in=asyncio.Event(), task_done=asyncio.Event())
        state["task"] = asyncio.ensure_future(later())  # outlives this request
        return {"ok": True}

    @app.post("/join")
    async def join() -> Dict[str, bool]:
        state["bob_is_in"].set()
        await asyncio.wait_for(state["task_done"].wait(), timeout=10)  # alice's task ran meanwhile
        otel_mixpanel.track("Late Task Event", {"request": "bob"})
        return {"ok": True}

    with serve(app) as url, session() as client:
        assert client.post(f"{url}/start", headers={"X-User-Id": "alice"}, timeout=10).ok
        assert client.post(f"{url}/join", headers={"X-User-Id": "bob"}, timeout=15).ok

    assert users_by_request(mixpanel_capture, "Late Task Event", 2) == {
        "alice-task": "alice", "bob": "bob"}


# ------------------------------------------------------------------ the browser cookie


def test_device_id_from_the_mixpanel_cookie(mixpanel_capture: MixpanelCapture) -> None:
    """The device id comes from mixpanel-browser's cookie for the project's
    token, among other cookies; the user id the cookie claims is never used;
    another project's cookie is ignored."""
    app = FastAPI()
    app.add_middleware(MixpanelMiddleware, identify=header_user, token=TOKEN)

    @app.get("/seen/{request_id}")
    async def seen(request_id: str) -> Dict[str, str]:
        otel_mixpanel.track("Seen", {"request": request_id})
        return current_identity()

    cases: List[Tuple[str, Dict[str, str]]] = [
        # A signed-in user: the cookie adds the device, its $user_id is not trusted.
        ("signed-in", {"X-User-Id": "alice", "Cookie": "session=abc; " + mixpanel_cookie(
            distinct_id="mallory", **{"$device_id": "dev-1", "$user_id": "mallory"})
            + "; theme=dark"}),
        # Anonymous: the device is the identity.
        ("anonymous", {"Cookie": mixpanel_cookie(
            distinct_id="$device:dev-2", **{"$device_id": "dev-2"})}),
        # An older cookie with only the "$device:" distinct id.
        ("old-cookie", {"X-User-Id": "carol", "Cookie": mixpanel_cookie(
            distinct_id="$device:dev-3")}),
        # Another project's cookie.
        ("other-project", {"X-User-Id": "dave", "Cookie": "mp_feedface_mixpanel=" + quote(
            json.dumps({"$device_id": "dev-4"}))}),
    ]
    with serve(app) as url, session() as client:
        for request_id, headers in cases:
            answer = client.get(f"{url}/seen/{request_id}", headers=headers, timeout=10)
            assert answer.status_code == 200

    events = events_by_request(mixpanel_capture, "Seen", len(cases))
    ids = {rid: (p["distinct_id"], p.get("$user_id"), p.get("$device_id"))
           for rid, p in events.items()}
    assert ids == {
        "signed-in": ("alice", "alice", "dev-1"),
        "anonymous": ("dev-2", None, "dev-2"),
        "old-cookie": ("carol", "carol", "dev-3"),
        "other-project": ("dave", "dave", None),
    }
    assert "mallory" not in json.dumps(mixpanel_capture.events())


def test_malformed_cookie_is_ignored_and_counted(mixpanel_capture: MixpanelCapture) -> None:
    """A cookie that is not URL-encoded JSON, or JSON that is not an object, is
    ignored and counted; the request succeeds and keeps its user."""

    async def seen(request: Request) -> JSONResponse:
        otel_mixpanel.track("Seen", {"request": request.path_params["request_id"]})
        return JSONResponse(current_identity())

    # Wrapped by hand, to read its counters.
    middleware = MixpanelMiddleware(Starlette(routes=[Route("/seen/{request_id}", seen)]),
                                    identify=header_user, token=TOKEN)
    bad = [("not-json", "%7Bnot%20json"), ("not-an-object", quote('["dev-1"]'))]
    with serve(middleware) as url, session() as client:
        for request_id, value in bad:
            answer = client.get(f"{url}/seen/{request_id}", timeout=10, headers={
                "X-User-Id": "alice", "Cookie": f"{cookie_name(TOKEN)}={value}; theme=dark"})
            assert answer.status_code == 200
            assert answer.json() == {USER: "alice", "mixpanel.ip": "127.0.0.1"}

    assert middleware.identity.stats()["dropped"]["malformed_mixpanel_cookie"] == 2
    events = events_by_request(mixpanel_capture, "Seen", 2)
    assert {p["distinct_id"] for p in events.values()} == {"alice"}
    assert not any("$device_id" in p for p in events.values())


def test_cookie_split_over_two_headers() -> None:
    """A client (an HTTP/2 hop) may send the cookies in several ``Cookie``
    headers: the Mixpanel cookie is found in any of them, intact."""
    seen: List[Dict[str, str]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(current_identity())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = MixpanelMiddleware(app, token=TOKEN, ip=False)
    with serve(middleware) as url:
        for cookies in ([mixpanel_cookie(**{"$device_id": "dev-1"}), "theme=dark"],
                        ["theme=dark", mixpanel_cookie(**{"$device_id": "dev-2"})]):
            connection = http.client.HTTPConnection(url.split("//")[1], timeout=10)
            connection.putrequest("GET", "/")
            for cookie in cookies:
                connection.putheader("Cookie", cookie)
            connection.endheaders()
            assert connection.getresponse().status == 204
            connection.close()

    assert seen == [{"mixpanel.device_id": "dev-1"}, {"mixpanel.device_id": "dev-2"}]
    assert middleware.identity.stats()["dropped"] == {}


# --------------------------------------------------------------------------- client IP


@pytest.mark.parametrize(("options", "forwarded_for", "expected"), [
    ({}, None, "127.0.0.1"),  # the peer, by default
    ({}, "203.0.113.9", "127.0.0.1"),  # no trusted proxy: X-Forwarded-For is not believed
    ({"trusted_proxies": ["10.0.0.0/8"]}, "203.0.113.9", "127.0.0.1"),  # the peer is no proxy
    ({"trusted_proxies": ["127.0.0.1"]}, "203.0.113.9", "203.0.113.9"),
    # The entry just before the trusted proxies; what the client itself wrote is not believed.
    ({"trusted_proxies": ["127.0.0.0/8", "10.0.0.0/8"]}, "198.51.100.7, 203.0.113.9, 10.1.2.3",
     "203.0.113.9"),
    ({"trusted_proxies": ["127.0.0.1"]}, "not-an-address", None),  # garbage: no IP at all
    ({"ip": False, "trusted_proxies": ["127.0.0.1"]}, "203.0.113.9", None),  # off
], ids=["peer", "untrusted-xff", "peer-not-a-proxy", "trusted-proxy", "proxy-chain", "garbage",
        "ip-off"])
def test_client_ip(
    mixpanel_capture: MixpanelCapture, options: Dict[str, Any], forwarded_for: Optional[str],
    expected: Optional[str],
) -> None:
    """The event's ``ip`` is the peer, or with trusted proxies the
    X-Forwarded-For entry before them; none with ``ip=False``."""
    app = FastAPI()
    app.add_middleware(MixpanelMiddleware, identify=header_user, **options)

    @app.get("/seen")
    async def seen() -> Dict[str, bool]:
        otel_mixpanel.track("Seen", {"request": "r"})
        return {"ok": True}

    headers = {"X-User-Id": "alice"}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    # uvicorn's own X-Forwarded-For handling off (see test_uvicorn_proxy_headers).
    with serve(app, proxy_headers=False) as url, session() as client:
        assert client.get(f"{url}/seen", headers=headers, timeout=10).status_code == 200

    properties = events_by_request(mixpanel_capture, "Seen", 1)["r"]
    assert properties["distinct_id"] == "alice"
    assert properties.get("ip") == expected


def test_uvicorn_proxy_headers(mixpanel_capture: MixpanelCapture) -> None:
    """uvicorn itself believes X-Forwarded-For from 127.0.0.1 by default
    (``--forwarded-allow-ips``) and rewrites the peer the middleware sees;
    ``ip=False`` still sends no address."""

    async def seen(request: Request) -> JSONResponse:
        otel_mixpanel.track("Seen", {"request": request.path_params["request_id"]})
        return JSONResponse(current_identity())

    answers = {}
    for request_id, options in [("ip-on", {}), ("ip-off", {"ip": False})]:
        app = Starlette(routes=[Route("/seen/{request_id}", seen)])
        app.add_middleware(MixpanelMiddleware, identify=header_user, **options)
        with serve(app) as url, session() as client:  # uvicorn's defaults
            answers[request_id] = client.get(f"{url}/seen/{request_id}", timeout=10, headers={
                "X-User-Id": "alice", "X-Forwarded-For": "203.0.113.9"}).json()

    assert answers == {"ip-on": {USER: "alice", "mixpanel.ip": "203.0.113.9"},
                       "ip-off": {USER: "alice"}}
    events = events_by_request(mixpanel_capture, "Seen", 2)
    assert {rid: p.get("ip") for rid, p in events.items()} == {
        "ip-on": "203.0.113.9", "ip-off": None}


# ---------------------------------------------------------------------------- failures


def test_identity_is_unbound_after_the_endpoint_raises(mixpanel_capture: MixpanelCapture) -> None:
    """An endpoint that raises: its event carries the user; when the exception
    comes out of the middleware nothing is bound any more (no identity, no
    baggage); the next requests on the same connection carry their own."""

    async def boom(request: Request) -> None:
        otel_mixpanel.track("Before Boom", {"request": request.path_params["request_id"]})
        raise RuntimeError("boom")

    async def fine(request: Request) -> JSONResponse:
        otel_mixpanel.track("Fine", {"request": request.path_params["request_id"]})
        return JSONResponse(current_identity())

    app = Starlette(routes=[Route("/boom/{request_id}", boom), Route("/fine/{request_id}", fine)])
    middleware = MixpanelMiddleware(app, identify=header_user, ip=False)
    after_error: List[Tuple[Dict[str, str], Dict[str, object]]] = []

    async def outer(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await middleware(scope, receive, send)
        except RuntimeError:  # Starlette answered 500, then raised it again
            after_error.append((current_identity(), dict(baggage.get_all())))

    with serve(outer) as url, session() as client:
        answer = client.get(f"{url}/boom/b1", headers={"X-User-Id": "alice"}, timeout=10)
        assert answer.status_code == 500
        assert client.get(f"{url}/fine/f1", headers={"X-User-Id": "bob"}, timeout=10).json() == {
            USER: "bob"}
        assert client.get(f"{url}/fine/f2", timeout=10).json() == {}

    assert after_error == [({}, {})]
    assert users_by_request(mixpanel_capture, "Before Boom", 1) == {"b1": "alice"}
    assert users_by_request(mixpanel_capture, "Fine", 2) == {"f1": "bob", "f2": ""}


def test_identify_failure_is_counted_and_the_request_goes_on(
    mixpanel_capture: MixpanelCapture,
) -> None:
    """An ``identify`` that raises: the request succeeds without a user from it
    (the authenticated ``scope["user"]`` is used instead) and the failure is counted."""

    def broken(request: Request) -> str:
        raise KeyError("no session")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = json.dumps(current_identity()).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    middleware = MixpanelMiddleware(app, identify=broken, ip=False)
    with serve(with_user(middleware)) as url, session() as client:
        assert client.get(f"{url}/", timeout=10).json() == {}
        assert client.get(f"{url}/", headers={"X-Auth": "erin"}, timeout=10).json() == {
            USER: "erin"}
    assert middleware.identity.stats()["dropped"]["identify_failed"] == 2


# ------------------------------------------------- streaming and background tasks


def test_streaming_response_keeps_the_identity(mixpanel_capture: MixpanelCapture) -> None:
    """Events made while a StreamingResponse's body streams (after the
    endpoint returned), from an async and from a sync generator, carry the
    request's user, while the other user's body streams at the same time."""
    both_streaming = Rendezvous(2)
    both_in_a_thread = threading.Barrier(2, timeout=10)

    def chunk_events(request_id: str, index: int) -> str:
        otel_mixpanel.track("Chunk Tracked", {"request": f"{request_id}.{index}"})
        with tracer.start_as_current_span("chunk") as span:
            span.set_attribute("mixpanel.event", "Chunk Span")
            span.set_attribute("mixpanel.properties.request", f"{request_id}.{index}")
        return f"{current_identity().get(USER)}\n"

    async def async_body(request_id: str) -> AsyncIterator[str]:
        yield "start\n"
        await both_streaming.wait()  # the other user's body is streaming too
        for index in range(3):
            yield chunk_events(request_id, index)
            await asyncio.sleep(0)

    def sync_body(request_id: str) -> Iterator[str]:  # each step in a worker thread
        yield "start\n"
        both_in_a_thread.wait()
        for index in range(3):
            yield chunk_events(request_id, index)

    async def stream(request: Request) -> StreamingResponse:
        request_id = f"{request.path_params['kind']}-{request.headers['x-user-id']}"
        make = async_body if request.path_params["kind"] == "async" else sync_body
        return StreamingResponse(make(request_id), media_type="text/plain")

    app = Starlette(routes=[Route("/stream/{kind}", stream)])
    app.add_middleware(MixpanelMiddleware, identify=header_user)
    bodies: Dict[str, str] = {}
    with serve(app) as url:
        for kind in ("async", "sync"):
            start = threading.Barrier(2, timeout=10)

            def visit(index: int, kind: str = kind, start: threading.Barrier = start) -> None:
                user = ["alice", "bob"][index]
                start.wait()
                with session() as client:
                    answer = client.get(f"{url}/stream/{kind}", headers={"X-User-Id": user},
                                        timeout=20)
                    bodies[f"{kind}-{user}"] = answer.text

            run_threads(2, visit)

    for request_id, body in bodies.items():
        user = request_id.split("-")[1]
        assert body == "start\n" + f"{user}\n" * 3, request_id
    expected = {f"{kind}-{user}.{i}": user
                for kind in ("async", "sync") for user in ("alice", "bob") for i in range(3)}
    assert users_by_request(mixpanel_capture, "Chunk Tracked", 12) == expected
    assert users_by_request(mixpanel_capture, "Chunk Span", 12) == expected


def test_background_tasks_keep_the_identity(mixpanel_capture: MixpanelCapture) -> None:
    """Starlette background tasks, async and sync, run after the client has
    the response (they wait for the test to say so) and carry the user."""
    responses_received = threading.Event()

    async def async_job(request_id: str) -> None:
        for _ in range(1000):  # 10 s at most
            if responses_received.is_set():
                break
            await asyncio.sleep(0.01)
        otel_mixpanel.track("Background Ran", {
            "request": request_id, "after_response": responses_received.is_set()})

    def sync_job(request_id: str) -> None:  # in a worker thread
        responses_received.wait(timeout=10)
        otel_mixpanel.track("Background Ran", {
            "request": request_id, "after_response": responses_received.is_set()})

    async def queue(request: Request) -> PlainTextResponse:
        user = request.headers["x-user-id"]
        tasks = BackgroundTasks()
        tasks.add_task(async_job, f"{user}-async")
        tasks.add_task(sync_job, f"{user}-sync")
        return PlainTextResponse("queued", background=tasks)

    app = Starlette(routes=[Route("/queue", queue)])
    app.add_middleware(MixpanelMiddleware, identify=header_user)
    with serve(app) as url:
        try:
            for user in ("alice", "bob"):
                with session() as client:
                    answer = client.get(f"{url}/queue", headers={"X-User-Id": user}, timeout=10)
                    assert answer.text == "queued"
            assert mixpanel_capture.events("Background Ran") == []  # still waiting
        finally:
            responses_received.set()
        events = events_by_request(mixpanel_capture, "Background Ran", 4)

    assert {rid: (p["distinct_id"], p["after_response"]) for rid, p in events.items()} == {
        f"{user}-{kind}": (user, True) for user in ("alice", "bob") for kind in ("async", "sync")}


# ---------------------------------------------------------------- without Starlette


def with_user(app: ASGIApp) -> ASGIApp:
    """An authentication middleware of the bare-ASGI kind: ``scope["user"]``
    from the ``X-Auth`` header (``!`` for a user object that fails)."""

    class User:
        def __init__(self, name: str) -> None:
            self.name = name

        @property
        def is_authenticated(self) -> bool:
            if self.name == "!":
                raise RuntimeError("session store down")
            return bool(self.name)

        @property
        def identity(self) -> str:
            return self.name

    async def authenticate(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = dict(scope["headers"])
            scope["user"] = User(headers.get(b"x-auth", b"").decode())
        await app(scope, receive, send)

    return authenticate


async def bare_app(scope: Scope, receive: Receive, send: Send) -> None:
    """An ASGI application with no framework: a span, a track() call, and the
    bound identity as the answer."""
    request_id = scope["path"].strip("/")
    with tracer.start_as_current_span("bare") as span:
        span.set_attribute("mixpanel.event", "Bare Span")
        span.set_attribute("mixpanel.properties.request", request_id)
    otel_mixpanel.track("Bare Track", {"request": request_id})
    body = json.dumps(current_identity()).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def test_bare_asgi_app_without_starlette(
    mixpanel_capture: MixpanelCapture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With Starlette not importable, ``identify`` gets the ASGI scope, and a
    bare ASGI application's span and track() call carry the user."""
    monkeypatch.setitem(sys.modules, "starlette.requests", None)  # import fails
    given: List[type] = []

    def identify(scope: Scope) -> Optional[str]:
        given.append(type(scope))
        return dict(scope["headers"]).get(b"x-user-id", b"").decode() or None

    with serve(MixpanelMiddleware(bare_app, identify=identify, ip=False)) as url, \
            session() as client:
        for request_id, user in [("b1", "alice"), ("b2", "bob")]:
            answer = client.get(f"{url}/{request_id}", headers={"X-User-Id": user}, timeout=10)
            assert answer.json() == {USER: user}

    assert given == [dict, dict]
    expected = {"b1": "alice", "b2": "bob"}
    assert users_by_request(mixpanel_capture, "Bare Span", 2) == expected
    assert users_by_request(mixpanel_capture, "Bare Track", 2) == expected


def test_identity_sources_in_order(mixpanel_capture: MixpanelCapture) -> None:
    """``identify`` wins; when it returns nothing, an authenticated
    ``scope["user"]``; an unauthenticated or failing user is no user (and the
    request succeeds). A mapping from ``identify`` can set profile properties."""

    def identify(request: Request) -> Any:
        assert isinstance(request, Request)  # Starlette is installed here
        name = request.headers.get("x-user-id")
        if name == "frank":
            return {"user_id": "frank", "properties": {"plan": "pro"}}
        return name

    app = with_user(MixpanelMiddleware(bare_app, identify=identify, ip=False))
    cases = [("identify-wins", {"X-User-Id": "alice", "X-Auth": "mallory"}, "alice"),
             ("scope-user", {"X-Auth": "bob"}, "bob"),
             ("unauthenticated", {"X-Auth": ""}, None),
             ("failing-user", {"X-Auth": "!"}, None),
             ("with-properties", {"X-User-Id": "frank"}, "frank")]
    with serve(app) as url, session() as client:
        for request_id, headers, user in cases:
            answer = client.get(f"{url}/{request_id}", headers=headers, timeout=10)
            assert answer.status_code == 200
            assert answer.json() == ({USER: user} if user else {}), request_id

    known = {rid: user for rid, _, user in cases if user}
    assert users_by_request(mixpanel_capture, "Bare Track", len(cases)) == {
        rid: known.get(rid, "") for rid, _, _ in cases}
    assert mixpanel_capture.profile("frank") == {"plan": "pro"}


# ------------------------------------------------------------- websocket and lifespan


def test_websocket_connection_is_bound(mixpanel_capture: MixpanelCapture) -> None:
    """A WebSocket connection's messages carry its user, from ``identify``
    (given a Starlette connection) or from the Mixpanel cookie."""
    websocket_client = pytest.importorskip("websocket")  # websocket-client
    pytest.importorskip("wsproto")  # uvicorn's WebSocket protocol

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        request_id = await websocket.receive_text()
        otel_mixpanel.track("Socket Message", {"request": request_id})
        await websocket.send_text(json.dumps(current_identity()))
        await websocket.close()

    app = Starlette(routes=[WebSocketRoute("/ws", echo)])
    app.add_middleware(MixpanelMiddleware, identify=header_user, token=TOKEN, ip=False)
    answers = {}
    with serve(app, ws="wsproto") as url:
        for request_id, user in [("w1", "alice"), ("w2", "bob")]:
            connection = websocket_client.create_connection(
                url.replace("http", "ws") + "/ws", timeout=10, header=[f"X-User-Id: {user}"],
                cookie=mixpanel_cookie(**{"$device_id": f"dev-{user}"}))
            try:
                connection.send(request_id)
                answers[request_id] = json.loads(connection.recv())
            finally:
                connection.close()

    for request_id, user in [("w1", "alice"), ("w2", "bob")]:
        assert answers[request_id] == {USER: user, "mixpanel.device_id": f"dev-{user}"}
    events = events_by_request(mixpanel_capture, "Socket Message", 2)
    assert {rid: (p["distinct_id"], p["$device_id"]) for rid, p in events.items()} == {
        "w1": ("alice", "dev-alice"), "w2": ("bob", "dev-bob")}


def test_lifespan_passes_through_untouched() -> None:
    """The lifespan scope reaches the application as the server sent it (the
    same scope, receive and send), with nothing bound and no ``identify`` call."""
    calls: List[Any] = []
    seen: List[Tuple[str, Any, Any, Any, Dict[str, str]]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(("inner", scope, receive, send, current_identity()))
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["started"] = True
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    middleware = MixpanelMiddleware(app, identify=calls.append, token=TOKEN)

    async def outer(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(("outer", scope, receive, send, current_identity()))
        await middleware(scope, receive, send)

    with serve(outer, lifespan="on"):
        pass

    assert [entry[0] for entry in seen] == ["outer", "inner"]
    (_, scope, receive, send, _), (_, inner_scope, inner_receive, inner_send, bound) = seen
    assert inner_scope is scope and inner_receive is receive and inner_send is send
    assert scope["type"] == "lifespan" and scope["state"] == {"started": True}
    assert bound == {} and calls == []


# ------------------------------------------------------------------------ the example


def test_example_streams_and_background_tasks_carry_the_user(
    mixpanel_capture: MixpanelCapture,
) -> None:
    """examples/fastapi_app.py: the receipt tracked while it streams and the
    welcome email sent from a background task carry each user."""
    server = fastapi_app.BackgroundServer(fastapi_app.create_app())
    base_url = server.start()
    try:
        run_threads(2, lambda i: fastapi_app.play(base_url, *[("alice", "pro", "sku-a"),
                                                               ("bob", "free", "sku-b")][i]))
    finally:
        server.stop()
    receipts = {e["properties"]["distinct_id"]: e["properties"]["sku"]
                for e in mixpanel_capture.events("Receipt Downloaded")}
    emails = {e["properties"]["distinct_id"]: e["properties"]["plan"]
              for e in mixpanel_capture.events("Welcome Email Sent")}
    assert receipts == {"alice": "sku-a", "bob": "sku-b"}
    assert emails == {"alice": "pro", "bob": "free"}
    assert mixpanel_capture.rejected() == []
