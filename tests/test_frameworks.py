"""The Flask and FastAPI examples, driven over real HTTP by two users at once,
checked with the pytest plugin's ``mixpanel_capture`` fixture."""

from __future__ import annotations

import threading
from typing import Callable, Iterator, List, Tuple

import pytest
import structlog
from werkzeug.serving import make_server

from examples import fastapi_app, flask_app
from otel_mixpanel.pytest_plugin import MixpanelCapture

USERS = [("alice", "pro", "sku-a"), ("bob", "free", "sku-b")]


@pytest.fixture(autouse=True)
def app_structlog() -> Iterator[None]:
    """The examples' structlog chain, restored afterwards."""
    flask_app.configure_structlog()
    yield
    structlog.reset_defaults()


def play_concurrently(base_url: str, play: Callable[..., None]) -> None:
    start = threading.Barrier(len(USERS), timeout=10)

    def visit(user: Tuple[str, str, str]) -> None:
        start.wait()
        play(base_url, *user)

    threads = [threading.Thread(target=visit, args=(user,)) for user in USERS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)


def assert_identities_kept_apart(capture: MixpanelCapture) -> None:
    signed_up = {(e["properties"]["distinct_id"], e["properties"]["plan"])
                 for e in capture.events("Signed Up")}
    assert signed_up == {("alice", "pro"), ("bob", "free")}
    purchased = {(e["properties"]["distinct_id"], e["properties"]["sku"])
                 for e in capture.events("Purchased")}
    assert purchased == {("alice", "sku-a"), ("bob", "sku-b")}
    emails: List[str] = sorted(e["properties"]["distinct_id"]
                               for e in capture.events("Welcome Email Queued"))
    assert emails == ["alice", "bob"]
    for user, plan, _ in USERS:
        profile = capture.profile(user)
        assert profile["plan"] == plan and profile["purchases"] == 1
        assert profile["$transactions"][0]["$amount"] == 19.0
    assert capture.rejected() == []


def test_flask_example(mixpanel_capture: MixpanelCapture) -> None:
    """Flask: the request middleware's identity reaches spans and the structlog line."""
    server = make_server("127.0.0.1", 0, flask_app.create_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        play_concurrently(f"http://127.0.0.1:{server.server_port}", flask_app.play)
    finally:
        server.shutdown()
        thread.join(timeout=10)
    assert_identities_kept_apart(mixpanel_capture)


def test_fastapi_example(mixpanel_capture: MixpanelCapture) -> None:
    """FastAPI: the same, through an async middleware and uvicorn."""
    server = fastapi_app.BackgroundServer(fastapi_app.create_app())
    base_url = server.start()
    try:
        play_concurrently(base_url, fastapi_app.play)
    finally:
        server.stop()
    assert_identities_kept_apart(mixpanel_capture)


def test_capture_starts_empty(mixpanel_capture: MixpanelCapture) -> None:
    """Each test sees only its own events: the fixture resets between tests."""
    assert mixpanel_capture.events() == []
