"""The requests transport over real sockets: what counts as 'maybe delivered',
and the environment's proxy."""

from __future__ import annotations

import socket
import threading
from typing import List

import pytest

from otel_mixpanel._queue._transport import RequestsTransport


def test_refused_connection_was_not_delivered() -> None:
    """Nothing listening: the request certainly never arrived, so it may be resent."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    answer = RequestsTransport().post(f"http://127.0.0.1:{port}/import", b"[]", {}, 2)
    assert answer.status == 0 and answer.maybe_delivered is False


def test_connection_closed_after_the_request_may_have_been_applied() -> None:
    """The server read the request and hung up without answering: it may have
    applied it, so $add/$append must not be resent."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def read_then_hang_up() -> None:
        connection, _ = server.accept()
        connection.recv(65536)
        connection.close()

    thread = threading.Thread(target=read_then_hang_up, daemon=True)
    thread.start()
    try:
        port = server.getsockname()[1]
        answer = RequestsTransport().post(f"http://127.0.0.1:{port}/engage", b"[]", {}, 5)
    finally:
        thread.join(timeout=5)
        server.close()
    assert answer.status == 0 and answer.maybe_delivered is True


def test_read_timeout_may_have_been_applied() -> None:
    """No answer within the timeout: the request may have been applied."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    done = threading.Event()

    def read_and_wait() -> None:
        connection, _ = server.accept()
        connection.recv(65536)
        done.wait(5)
        connection.close()

    thread = threading.Thread(target=read_and_wait, daemon=True)
    thread.start()
    try:
        port = server.getsockname()[1]
        answer = RequestsTransport().post(f"http://127.0.0.1:{port}/engage", b"[]", {}, 0.3)
    finally:
        done.set()
        thread.join(timeout=5)
        server.close()
    assert answer.status == 0 and answer.maybe_delivered is True


class _RecordingServer:
    """Answers every request with 200 and keeps its request line (a proxy is
    sent the whole URL, a server only the path)."""

    def __init__(self) -> None:
        self.lines: List[str] = []
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(4)
        self.port = self._server.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            with connection:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.lines.append(data.split(b"\r\n", 1)[0].decode())
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                                   b"Connection: close\r\n\r\nok")

    def close(self) -> None:
        self._server.close()
        self._thread.join(timeout=5)


@pytest.mark.parametrize("bypass", [False, True], ids=["through-the-proxy", "no_proxy"])
def test_the_environment_s_proxy_is_used(monkeypatch: pytest.MonkeyPatch, bypass: bool) -> None:
    """HTTP_PROXY and NO_PROXY route the exporter's requests (a fleet behind an
    egress proxy), as requests reads them."""
    proxy, destination = _RecordingServer(), _RecordingServer()
    for name in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    if bypass:
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    url = f"http://127.0.0.1:{destination.port}/import?strict=1"
    transport = RequestsTransport()
    try:
        answers = [transport.post(url, b"[]", {}, 5) for _ in range(2)]
    finally:
        transport.close()
        proxy.close()
        destination.close()
    assert [answer.status for answer in answers] == [200, 200]
    if bypass:
        assert (proxy.lines, destination.lines) == ([], ["POST /import?strict=1 HTTP/1.1"] * 2)
    else:
        assert (proxy.lines, destination.lines) == ([f"POST {url} HTTP/1.1"] * 2, [])
