"""``otel_mixpanel.web.flask.MixpanelFlask`` over real HTTP.

Each test serves a real Flask application with werkzeug on 127.0.0.1, calls it
with ``requests`` and reads what a local Mixpanel received. The application
emits, inside each request, a tagged child span, a ``track()`` call, a stdlib
``logging`` line and a structlog event; the request's server span (from
``opentelemetry-instrumentation-flask``) is tagged too. Every event carries
``properties.request``, the tag of the request that made it, so each
assertion is about one request's events.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple
from urllib.parse import quote

import pytest
import requests
import structlog
from flask import Flask, Response, jsonify, request, stream_with_context
from opentelemetry import baggage, context, trace
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.trace import TracerProvider
from werkzeug.serving import make_server

import otel_mixpanel
from otel_mixpanel import MixpanelPipeline
from otel_mixpanel.logs import logging_handler
from otel_mixpanel.pytest_plugin import MixpanelCapture
from otel_mixpanel.structlog import MixpanelProcessor
from otel_mixpanel.testing import LocalMixpanel
from otel_mixpanel.web import cookie_name
from otel_mixpanel.web.flask import MixpanelFlask

Event = Dict[str, Any]
FLASK_31 = tuple(int(n) for n in importlib.metadata.version("flask").split(".")[:2]) >= (3, 1)
# The events one request to /visit makes, in the order it makes them: the
# server span ends last, when Flask tears the request down.
VISIT = ["Step Span", "Step Track", "Step Log", "Step Structlog", "Step Last", "Request Handled"]


def by_header(incoming: Any) -> Optional[str]:
    """The ``identify`` callback of most tests: the ``X-User-Id`` header."""
    user: Optional[str] = incoming.headers.get("X-User-Id")
    return user


class LoginUser:
    """A Flask-Login user (the attributes Flask-Login reads)."""

    is_active = True
    is_anonymous = False

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.is_authenticated = user_id != "not-logged-in"

    def get_id(self) -> str:
        return self.user_id


@dataclass
class Shop:
    """The pipeline a test's applications send through, and how to build one."""

    mixpanel: LocalMixpanel
    pipeline: MixpanelPipeline
    app_log: logging.Logger
    struct_log: Any
    server_barrier: List[threading.Barrier] = field(default_factory=list)

    def make_app(
        self, *, instrument: str = "first", extension: Optional[MixpanelFlask] = None,
        **options: Any,
    ) -> Tuple[Flask, MixpanelFlask]:
        """A Flask app with ``MixpanelFlask(app, token=..., **options)``.

        *instrument*: ``"first"`` (FlaskInstrumentor before MixpanelFlask, as
        most applications do), ``"last"`` (after it) or ``"none"``.
        *extension*: an unbound ``MixpanelFlask()`` to ``init_app`` instead.
        """
        app = Flask(__name__)
        app.secret_key = "tests"
        instrumentor = FlaskInstrumentor()
        provider = self.pipeline.tracer_provider
        if instrument == "first":
            instrumentor.instrument_app(app, tracer_provider=provider)  # type: ignore[no-untyped-call]
        options.setdefault("token", self.mixpanel.token)
        if extension is None:
            ext = MixpanelFlask(app, **options)
        else:
            ext = extension
            ext.init_app(app)
        if instrument == "last":
            instrumentor.instrument_app(app, tracer_provider=provider)  # type: ignore[no-untyped-call]
        self._routes(app)
        return app, ext

    def emit(self, tag: str, names: List[str]) -> None:
        """Emit each of *names* the way its name says, tagged with *tag*."""
        provider = self.pipeline.logger_provider
        for name in names:
            if name == "Step Span":
                tracer = self.pipeline.tracer_provider.get_tracer("shop")
                with tracer.start_as_current_span("charge") as span:
                    span.set_attribute("mixpanel.event", name)
                    span.set_attribute("mixpanel.properties.request", tag)
            elif name == "Step Log":
                self.app_log.info("logged", extra={
                    "mixpanel.event": name, "mixpanel.properties.request": tag})
            elif name == "Step Structlog":
                self.struct_log.info("logged", mixpanel_event=name,
                                     mixpanel_properties={"request": tag})
            else:
                otel_mixpanel.track(name, {"request": tag}, logger_provider=provider)

    def _routes(self, app: Flask) -> None:
        @app.get("/visit")
        def visit() -> Any:
            tag = request.args["tag"]
            server_span = trace.get_current_span()
            server_span.set_attribute("mixpanel.event", "Request Handled")
            server_span.set_attribute("mixpanel.properties.request", tag)
            self.emit(tag, VISIT[:2])
            if self.server_barrier:  # every concurrent request is in here now
                self.server_barrier[0].wait()
            self.emit(tag, VISIT[2:5])
            return jsonify(ok=True)

        @app.get("/boom")
        def boom() -> Any:
            self.emit(request.args["tag"], ["Before Boom"])
            raise RuntimeError("the view failed")

        @app.get("/stream")
        def stream() -> Any:
            return Response(stream_with_context(self._chunks(request.args["tag"])))

        @app.get("/stream-bare")
        def stream_bare() -> Any:
            return Response(self._chunks(request.args["tag"]))

        @app.get("/stream-attached")
        def stream_attached() -> Any:
            # The workaround docs/flask.md shows: the view's context, attached
            # again while the body is produced.
            bound = context.get_current()
            chunks = self._chunks(request.args["tag"])

            def attached() -> Iterator[str]:
                token = context.attach(bound)
                try:
                    yield from chunks
                finally:
                    context.detach(token)

            return Response(stream_with_context(attached()))

        @app.get("/baggage")
        def bound_baggage() -> Any:
            return jsonify(dict(baggage.get_all()))

    def _chunks(self, tag: str) -> Iterator[str]:
        for number in range(3):
            otel_mixpanel.track("Chunk Streamed", {"request": tag, "chunk": number},
                                logger_provider=self.pipeline.logger_provider)
            yield f"chunk {number}\n"


@pytest.fixture
def shop(mixpanel: LocalMixpanel) -> Iterator[Shop]:
    """Providers of its own (not the global ones), configured for the local
    Mixpanel; everything shut down after the test."""
    pipeline = otel_mixpanel.configure(
        token=mixpanel.token, api_host=mixpanel.url, tracer_provider=TracerProvider(),
        logger_provider=LoggerProvider(), schedule_delay_millis=20,
    )
    app_log = logging.getLogger("tests.web_flask.shop")
    handler = logging_handler(pipeline.logger_provider)
    app_log.addHandler(handler)
    app_log.setLevel(logging.INFO)
    app_log.propagate = False  # not to a root handler another test's pipeline put there
    struct_log = structlog.wrap_logger(structlog.ReturnLogger(), processors=[
        MixpanelProcessor(pipeline.logger_provider, remove_keys=True),
        structlog.processors.JSONRenderer(),
    ])
    try:
        yield Shop(mixpanel, pipeline, app_log, struct_log)
    finally:
        app_log.removeHandler(handler)
        app_log.propagate = True
        pipeline.shutdown(timeout_millis=5_000)
        pipeline.tracer_provider.shutdown()
        pipeline.logger_provider.shutdown()


@contextlib.contextmanager
def serving(app: Flask, *, threaded: bool = True) -> Iterator[str]:
    """Serve *app* on 127.0.0.1 (one thread per request, or every request on
    one thread) until the block ends; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=threaded)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="flask test server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert not thread.is_alive(), "the test server did not stop"


def get(base_url: str, path: str, *, user: Optional[str] = None, tag: str = "",
        headers: Optional[Dict[str, str]] = None) -> requests.Response:
    sent = dict(headers or {})
    if user is not None:
        sent["X-User-Id"] = user
    return requests.get(f"{base_url}{path}", params={"tag": tag}, headers=sent, timeout=10)


def events_of(mixpanel: LocalMixpanel, tag: str) -> List[Event]:
    """Every event the request tagged *tag* made, duplicates included, in the
    order the local Mixpanel received them."""
    return [e for e in mixpanel.events if e["properties"].get("request") == tag]


def delivered(shop: Shop, tag: str, count: int) -> List[Event]:
    """The *count* events of request *tag*, once they all arrived (no more)."""
    shop.pipeline.force_flush()
    arrived = shop.mixpanel.wait_for(lambda m: len(events_of(m, tag)) >= count)
    found = events_of(shop.mixpanel, tag)
    assert arrived and len(found) == count, (
        f"request {tag!r}: expected {count} events, got "
        f"{[(e['event'], e['properties'].get('distinct_id')) for e in found]}")
    assert shop.mixpanel.rejected == []
    return found


def users_of(events: List[Event]) -> List[Tuple[str, str, Optional[str]]]:
    """(event, distinct_id, $user_id) of each event."""
    return [(e["event"], e["properties"]["distinct_id"], e["properties"].get("$user_id"))
            for e in events]


def mixpanel_cookie(token: str, ids: Any) -> Dict[str, str]:
    """A Cookie header like mixpanel-browser's: URL-encoded JSON."""
    return {"Cookie": f"{cookie_name(token)}={quote(json.dumps(ids))}"}


@pytest.mark.parametrize("instrument", ["first", "none", "last"])
def test_every_event_of_a_request_carries_its_user(shop: Shop, instrument: str) -> None:
    """Server span, child span, track(), stdlib logging and structlog: all of
    the request's user, whichever order the instrumentation was added in."""
    app, _ = shop.make_app(identify=by_header, instrument=instrument)
    with serving(app) as base_url:
        assert get(base_url, "/visit", user="alice", tag="a").status_code == 200
    names = VISIT if instrument != "none" else VISIT[:-1]  # no server span
    events = delivered(shop, "a", len(names))
    assert sorted(users_of(events)) == sorted((name, "alice", "alice") for name in names)


def test_concurrent_requests_never_see_each_others_user(shop: Shop) -> None:
    """Eight requests in flight at once, six users and two anonymous visitors,
    all inside their view at the same moment (a barrier in the view): each
    request's events carry its own user, and the anonymous ones none."""
    visitors: List[Optional[str]] = [f"user-{n}" for n in range(6)] + [None, None]
    shop.server_barrier.append(threading.Barrier(len(visitors), timeout=10))
    client_barrier = threading.Barrier(len(visitors), timeout=10)
    app, _ = shop.make_app(identify=by_header)
    statuses: Dict[str, int] = {}

    def visit(tag: str, user: Optional[str]) -> None:
        client_barrier.wait()
        statuses[tag] = get(base_url, "/visit", user=user, tag=tag).status_code

    with serving(app) as base_url:
        threads = [threading.Thread(target=visit, args=(f"visit-{n}", user))
                   for n, user in enumerate(visitors)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert not shop.server_barrier[0].broken, "the requests were not all in flight at once"
    assert statuses == {f"visit-{n}": 200 for n in range(len(visitors))}
    for n, user in enumerate(visitors):
        events = delivered(shop, f"visit-{n}", len(VISIT))
        expected = (user or "", user)
        assert {(d, u) for _, d, u in users_of(events)} == {expected}, f"visit-{n}"


@pytest.mark.parametrize("instrument", ["first", "none"])
def test_identity_is_unbound_after_a_view_raises(shop: Shop, instrument: str) -> None:
    """Every request on one server thread (so a binding left behind would be
    seen): after alice's view raises, the next request, with no user, carries
    nothing of alice's, and bob's is bob's. Without the instrumentation,
    nothing but MixpanelFlask's teardown can undo the binding."""
    app, _ = shop.make_app(identify=by_header, instrument=instrument)
    names = VISIT if instrument != "none" else VISIT[:-1]  # no server span
    with serving(app, threaded=False) as base_url:
        assert get(base_url, "/boom", user="alice", tag="boom").status_code == 500
        assert get(base_url, "/visit", tag="anonymous").status_code == 200
        assert get(base_url, "/visit", user="bob", tag="bob").status_code == 200
        assert get(base_url, "/boom", user="carol", tag="boom-again").status_code == 500
        assert get(base_url, "/visit", tag="anonymous-again").status_code == 200
    assert users_of(delivered(shop, "boom", 1)) == [("Before Boom", "alice", "alice")]
    assert users_of(delivered(shop, "boom-again", 1)) == [("Before Boom", "carol", "carol")]
    for tag in ("anonymous", "anonymous-again"):
        assert {(d, u) for _, d, u in users_of(delivered(shop, tag, len(names)))} == {("", None)}
    assert {(d, u) for _, d, u in users_of(delivered(shop, "bob", len(names)))} == {
        ("bob", "bob")}


def test_device_id_from_the_mixpanel_cookie(shop: Shop) -> None:
    """mixpanel-browser's cookie gives ``$device_id``; the ``$user_id`` it
    claims is not trusted: the user is the server's."""
    app, ext = shop.make_app(identify=by_header)
    cookie = mixpanel_cookie(shop.mixpanel.token, {
        "distinct_id": "$device:dev-1", "$device_id": "dev-1", "$user_id": "mallory"})
    legacy = mixpanel_cookie(shop.mixpanel.token, {"distinct_id": "$device:dev-2"})
    with serving(app) as base_url:
        assert get(base_url, "/visit", user="alice", tag="alice", headers=cookie).ok
        assert get(base_url, "/visit", tag="visitor", headers=cookie).ok
        assert get(base_url, "/visit", tag="legacy", headers=legacy).ok
    for event in delivered(shop, "alice", len(VISIT)):
        properties = event["properties"]
        assert (properties["distinct_id"], properties["$user_id"]) == ("alice", "alice")
        assert properties["$device_id"] == "dev-1"
    for event in delivered(shop, "visitor", len(VISIT)):
        assert event["properties"]["$device_id"] == "dev-1"
        assert "$user_id" not in event["properties"]
        assert "mallory" not in json.dumps(event)
    assert {e["properties"]["$device_id"] for e in delivered(shop, "legacy", len(VISIT))} == {
        "dev-2"}
    assert ext.identity.stats()["dropped"] == {}


@pytest.mark.parametrize("value", [
    "%7Bnot%20json",  # not JSON
    "%5B%22dev-1%22%5D",  # JSON, not an object
    "%ZZ",  # not even URL-encoded right
])
def test_malformed_mixpanel_cookie_is_ignored_and_counted(shop: Shop, value: str) -> None:
    """The request succeeds with its user and no device id; the cookie is counted."""
    app, ext = shop.make_app(identify=by_header)
    headers = {"Cookie": f"{cookie_name(shop.mixpanel.token)}={value}"}
    with serving(app) as base_url:
        assert get(base_url, "/visit", user="alice", tag="a", headers=headers).status_code == 200
    for event in delivered(shop, "a", len(VISIT)):
        assert event["properties"]["distinct_id"] == "alice"
        assert "$device_id" not in event["properties"]
    assert ext.identity.stats()["dropped"] == {"malformed_mixpanel_cookie": 1}


def test_cookie_of_another_project_or_cookie_false_is_ignored(shop: Shop) -> None:
    """Only the cookie named after the token is read, and none with cookie=False."""
    other = mixpanel_cookie("another-token", {"$device_id": "dev-other"})
    ours = mixpanel_cookie(shop.mixpanel.token, {"$device_id": "dev-1"})
    app, ext = shop.make_app(identify=by_header)
    no_cookie_app, _ = shop.make_app(identify=by_header, cookie=False)
    with serving(app) as base_url, serving(no_cookie_app) as no_cookie_url:
        assert get(base_url, "/visit", user="alice", tag="other", headers=other).ok
        assert get(no_cookie_url, "/visit", user="alice", tag="off", headers=ours).ok
    for tag in ("other", "off"):
        assert all("$device_id" not in e["properties"] for e in delivered(shop, tag, len(VISIT)))
    assert ext.identity.stats()["dropped"] == {}


FORWARDED = "203.0.113.7"


@pytest.mark.parametrize(("options", "forwarded_for", "expected"), [
    pytest.param({}, None, "127.0.0.1", id="peer-by-default"),
    pytest.param({"ip": False}, None, None, id="ip-false"),
    pytest.param({"ip": False, "trusted_proxies": ["127.0.0.1"]}, FORWARDED, None,
                 id="ip-false-behind-proxy"),
    pytest.param({"trusted_proxies": ["127.0.0.1"]}, FORWARDED, FORWARDED, id="trusted-peer"),
    pytest.param({"trusted_proxies": ["127.0.0.0/8"]}, f"198.51.100.1, {FORWARDED}, 127.0.0.5",
                 FORWARDED, id="first-untrusted-from-the-right"),
    pytest.param({}, FORWARDED, "127.0.0.1", id="spoofed-no-proxies"),
    pytest.param({"trusted_proxies": ["10.0.0.0/8"]}, FORWARDED, "127.0.0.1",
                 id="spoofed-untrusted-peer"),
    pytest.param({"trusted_proxies": ["127.0.0.1"]}, "not-an-address", None,
                 id="garbage-forwarded-for"),
])
def test_client_ip(shop: Shop, options: Dict[str, Any], forwarded_for: Optional[str],
                   expected: Optional[str]) -> None:
    """The ``ip`` property of every event of the request: the peer, the
    X-Forwarded-For client only behind a trusted proxy, none with ip=False."""
    app, _ = shop.make_app(identify=by_header, **options)
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    with serving(app) as base_url:
        assert get(base_url, "/visit", user="alice", tag="a", headers=headers).ok
    ips = [e["properties"].get("ip") for e in delivered(shop, "a", len(VISIT))]
    assert ips == [expected] * len(VISIT)


def test_flask_login_current_user(shop: Shop) -> None:
    """Without identify, an authenticated Flask-Login user is the user; an
    anonymous or unauthenticated one is none. With identify, what it returns
    wins and None falls back to Flask-Login. The factory pattern (init_app)."""
    from flask_login import LoginManager  # noqa: PLC0415

    def build(**options: Any) -> Flask:
        app, ext = shop.make_app(extension=MixpanelFlask(token=shop.mixpanel.token, **options))
        assert app.extensions["otel_mixpanel"] is ext
        login = LoginManager(app)

        @login.request_loader  # type: ignore[untyped-decorator]
        def from_token(incoming: Any) -> Optional[LoginUser]:
            token = incoming.headers.get("Authorization", "")
            return LoginUser(token[len("Bearer "):]) if token.startswith("Bearer ") else None

        return app

    bearer = {"Authorization": "Bearer dave"}
    with serving(build()) as login_url, serving(build(identify=by_header)) as both_url:
        assert get(login_url, "/visit", tag="login", headers=bearer).ok
        assert get(login_url, "/visit", tag="anonymous").ok
        unauthenticated = {"Authorization": "Bearer not-logged-in"}
        assert get(login_url, "/visit", tag="unauthenticated", headers=unauthenticated).ok
        assert get(both_url, "/visit", user="erin", tag="identify-wins", headers=bearer).ok
        assert get(both_url, "/visit", tag="fallback", headers=bearer).ok
    expected = {"login": "dave", "anonymous": None, "unauthenticated": None,
                "identify-wins": "erin", "fallback": "dave"}
    for tag, user in expected.items():
        found = {(d, u) for _, d, u in users_of(delivered(shop, tag, len(VISIT)))}
        assert found == {(user or "", user)}, tag


def test_identify_that_raises_is_counted_and_the_request_goes_on(shop: Shop) -> None:
    def broken(incoming: Any) -> str:
        raise LookupError("no session store")

    app, ext = shop.make_app(identify=broken)
    with serving(app) as base_url:
        assert get(base_url, "/visit", user="alice", tag="a").status_code == 200
    assert {d for _, d, _ in users_of(delivered(shop, "a", len(VISIT)))} == {""}
    assert ext.identity.stats()["dropped"] == {"identify_failed": 1}


def test_identify_mapping(shop: Shop) -> None:
    """identify may return ids by name: its device id wins over the cookie's."""
    def identify(incoming: Any) -> Dict[str, Any]:
        return {"user_id": incoming.headers["X-User-Id"], "device_id": "dev-server"}

    app, _ = shop.make_app(identify=identify)
    cookie = mixpanel_cookie(shop.mixpanel.token, {"$device_id": "dev-cookie"})
    with serving(app) as base_url:
        assert get(base_url, "/visit", user="frank", tag="a", headers=cookie).ok
    for event in delivered(shop, "a", len(VISIT)):
        properties = event["properties"]
        assert (properties["distinct_id"], properties["$device_id"]) == ("frank", "dev-server")


def test_streamed_response_keeps_the_identity_with_stream_with_context(shop: Shop) -> None:
    """What otel_mixpanel.web.flask promises: events emitted while a
    ``stream_with_context`` body streams carry the request's user."""
    app, _ = shop.make_app(identify=by_header)
    with serving(app) as base_url:
        streamed = get(base_url, "/stream", user="grace", tag="with-context")
    assert streamed.text == "chunk 0\nchunk 1\nchunk 2\n"
    with_context = delivered(shop, "with-context", 3)
    assert [e["properties"]["chunk"] for e in with_context] == [0, 1, 2]
    assert {(d, u) for _, d, u in users_of(with_context)} == {("grace", "grace")}


def test_a_bare_streamed_generator_keeps_the_identity_and_it_ends_with_the_body(
    shop: Shop,
) -> None:
    """A plain generator body (no stream_with_context, nothing attached by hand)
    streams with the request's user bound; the request after it, on the same
    server thread, carries none of it."""
    app, _ = shop.make_app(identify=by_header)
    with serving(app, threaded=False) as base_url:
        attached = get(base_url, "/stream-attached", user="grace", tag="attached")
        bare = get(base_url, "/stream-bare", user="heidi", tag="bare")
        after = get(base_url, "/visit", tag="after")
    assert attached.text == bare.text == "chunk 0\nchunk 1\nchunk 2\n" and after.ok
    events = delivered(shop, "attached", 3)
    assert [e["properties"]["chunk"] for e in events] == [0, 1, 2]
    assert {(d, u) for _, d, u in users_of(events)} == {("grace", "grace")}
    assert {(d, u) for _, d, u in users_of(delivered(shop, "bare", 3))} == {("heidi", "heidi")}
    assert {(d, u) for _, d, u in users_of(delivered(shop, "after", len(VISIT)))} == {("", None)}


def test_track_is_in_order_with_spans_and_log_records(shop: Shop) -> None:
    """Spans (as they end) and log records, track() calls included (as they
    are emitted), share one ordered buffer: Mixpanel receives a request's
    events in the order the request made them, and sequential requests' in
    request order. (Their ``time`` is no guide: a span's is when it started.)"""
    app, _ = shop.make_app(identify=by_header)
    tags = [f"order-{n}" for n in range(3)]
    with serving(app) as base_url:
        for tag in tags:
            assert get(base_url, "/visit", user="ivan", tag=tag).ok
    for tag in tags:
        assert [e["event"] for e in delivered(shop, tag, len(VISIT))] == VISIT
    arrival = [e["properties"].get("request") for e in shop.mixpanel.events]
    assert arrival == [tag for tag in tags for _ in VISIT]


@pytest.mark.parametrize("propagate", [True, False])
def test_propagate_puts_the_ids_in_baggage_never_the_ip(shop: Shop, propagate: bool) -> None:
    """With propagate (the default) the ids go to W3C baggage for downstream
    services and background jobs; the client IP never does."""
    app, _ = shop.make_app(identify=by_header, propagate=propagate)
    cookie = mixpanel_cookie(shop.mixpanel.token, {"$device_id": "dev-1"})
    with serving(app) as base_url:
        bound = get(base_url, "/baggage", user="judy", headers=cookie).json()
    expected = {"mixpanel.user_id": "judy", "mixpanel.device_id": "dev-1"} if propagate else {}
    assert bound == expected


def test_identify_properties_set_the_profile_through_the_global_pipeline(
    mixpanel_capture: MixpanelCapture,
) -> None:
    """As an application runs it: the global providers (the pytest plugin's
    pipeline), ``track()`` with no provider; properties returned by identify
    are ``$set`` on the user's profile."""
    app = Flask(__name__)
    FlaskInstrumentor().instrument_app(app)  # type: ignore[no-untyped-call]

    def identify(incoming: Any) -> Dict[str, Any]:
        user = incoming.headers["X-User-Id"]
        return {"user_id": user, "properties": {"$email": f"{user}@example.com"}}

    MixpanelFlask(app, identify=identify, token=mixpanel_capture.server.token)

    @app.post("/order")
    def order() -> Any:
        trace.get_current_span().set_attribute("mixpanel.event", "Order Placed")
        otel_mixpanel.track("Order Confirmed", {"total": 12.5})
        return jsonify(ok=True)

    with serving(app) as base_url:
        for user in ("kim", "lee"):
            assert requests.post(f"{base_url}/order", headers={"X-User-Id": user},
                                 timeout=10).ok
    for name in ("Order Placed", "Order Confirmed"):
        assert sorted(e["properties"]["distinct_id"] for e in mixpanel_capture.events(name)) == [
            "kim", "lee"]
    assert mixpanel_capture.profile("kim") == {"$email": "kim@example.com"}
    assert mixpanel_capture.profile("lee") == {"$email": "lee@example.com"}
    assert mixpanel_capture.rejected() == []


def test_a_request_that_tags_nothing_sends_nothing(shop: Shop) -> None:
    """The bound identity alone (on the server span too) is not an event."""
    app, _ = shop.make_app(identify=by_header)
    with serving(app) as base_url:
        assert get(base_url, "/baggage", user="mallory").ok
    shop.pipeline.force_flush()
    assert shop.mixpanel.events == []
    assert shop.mixpanel.profile_updates == []

