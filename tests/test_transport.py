"""The requests transport over real sockets: what counts as 'maybe delivered'."""

from __future__ import annotations

import socket
import threading

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
