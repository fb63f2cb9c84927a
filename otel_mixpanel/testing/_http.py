"""HTTP plumbing for the local server: keep-alive HTTP/1.1, and a clean, complete shutdown.

Knows nothing about Mixpanel: each request is handed to a ``Responder`` callback, whose
:class:`Reply` is written back (or whose :class:`Hangup` closes the connection unanswered).
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import struct
import sys
import threading
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, List, Tuple, Union
from urllib.parse import parse_qsl, urlsplit

from ._wire import Headers


@dataclass(frozen=True)
class Reply:
    """An answer: status, body (JSON value, or ``str``/``bytes`` sent as they are), headers."""

    status: int
    response: object
    headers: Dict[str, str] = field(default_factory=dict)

    def encoded(self) -> Tuple[bytes, str]:
        """The body bytes and their Content-Type."""
        if isinstance(self.response, bytes):
            return self.response, "text/plain; charset=utf-8"
        if isinstance(self.response, str):
            return self.response.encode("utf-8"), "text/plain; charset=utf-8"
        payload = json.dumps(self.response, separators=(",", ":")).encode("utf-8")
        # Mixpanel's bare 1/0 answers (/engage without verbose=1) are plain text.
        is_bare = not isinstance(self.response, (dict, list))
        return payload, "text/plain; charset=utf-8" if is_bare else "application/json"


@dataclass(frozen=True)
class Hangup:
    """No answer: close the connection, with a FIN, or with a TCP RST when ``reset``."""

    reset: bool = False


#: ``(method, path, query, headers, body) -> Reply``, or a :class:`Hangup` to answer nothing.
Responder = Callable[[str, str, Dict[str, str], Headers, bytes], Union[Reply, Hangup]]


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that can close every connection it has open, and wait for it.

    ``ThreadingHTTPServer`` with daemon threads forgets its handler threads, so idle keep-alive
    connections would outlive ``shutdown()``; this one tracks them and closes them on demand.
    """

    daemon_threads = True

    def __init__(self, address: Tuple[str, int], responder: Responder) -> None:
        self.responder = responder
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._connections_lock = threading.Lock()
        self._connections: Dict[threading.Thread, socket.socket] = {}
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind without ``HTTPServer``'s reverse DNS lookup of the host, which can stall."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(
        self, request: Union[socket.socket, Tuple[bytes, socket.socket]], client_address: object
    ) -> None:
        """Serve the connection on a tracked daemon thread."""
        assert isinstance(request, socket.socket)
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name=f"LocalMixpanel connection {client_address}",
            daemon=True,
        )
        with self._connections_lock:
            self._connections[thread] = request
        thread.start()

    def _serve_connection(self, request: socket.socket, client_address: object) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.pop(threading.current_thread(), None)

    def close_connections(self) -> None:
        """Hang up every open connection and wait for its thread; call after ``shutdown()``."""
        with self._connections_lock:
            connections = dict(self._connections)
        for connection in connections.values():
            with contextlib.suppress(OSError):  # already closed by its handler
                connection.shutdown(socket.SHUT_RDWR)
        for thread in connections:
            thread.join()

    def handle_error(
        self, request: Union[socket.socket, Tuple[bytes, socket.socket]], client_address: object
    ) -> None:
        """Stay quiet when a client hangs up, or ``stop()`` hangs up on it: both are expected."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes; with Nagle's algorithm the second
    # waits for the client's delayed ACK, adding 40 ms to every kept-alive request.
    disable_nagle_algorithm = True
    server: LoopbackHTTPServer

    def log_message(self, format: str, *args: object) -> None:
        """Silence the default per-request logging to stderr."""

    def do_GET(self) -> None:
        """Hand a GET to the responder."""
        self._dispatch()

    def do_POST(self) -> None:
        """Hand a POST to the responder."""
        self._dispatch()

    def do_PUT(self) -> None:
        """Hand a PUT to the responder."""
        self._dispatch()

    def do_DELETE(self) -> None:
        """Hand a DELETE to the responder."""
        self._dispatch()

    def do_PATCH(self) -> None:
        """Hand a PATCH to the responder."""
        self._dispatch()

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
        except ValueError as error:
            self.close_connection = True
            self._write(Reply(400, {"code": 400, "error": str(error), "status": "Bad Request"}))
            return
        target = urlsplit(self.path)
        query = dict(parse_qsl(target.query, keep_blank_values=True))
        headers = Headers(self.headers.items())
        try:
            reply = self.server.responder(self.command, target.path, query, headers, body)
        except Exception as error:
            # A bug in the server must fail the test that hit it loudly, not look like an outage.
            traceback.print_exc()
            message = f"LocalMixpanel internal error: {error!r}"
            reply = Reply(500, {"code": 500, "error": message, "status": "Internal Server Error"})
        if isinstance(reply, Hangup):
            self._hang_up(reset=reply.reset)
            return
        self._write(reply)

    def _hang_up(self, *, reset: bool) -> None:
        # Closing without a status line is what a crashed server or a reset looks like.
        self.close_connection = True
        if not reset:
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        # Lingering on with a zero timeout makes close() send RST, not FIN. Closing here, before
        # socketserver's shutdown(SHUT_WR), keeps a FIN from going out first; the descriptor is
        # released once the handler closes its rfile (a makefile() of it), and socketserver's
        # later shutdown and close of the closed socket are no-ops.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        if not length.strip().isdigit():
            raise ValueError(f"invalid Content-Length {length!r}")
        return self.rfile.read(int(length))

    def _read_chunked(self) -> bytes:
        chunks: List[bytes] = []
        while True:
            size_line = self.rfile.readline(65537)
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ValueError("invalid chunked body") from None
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # skip trailers
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def _write(self, reply: Reply) -> None:
        payload, content_type = reply.encoded()
        self.send_response(reply.status)
        headers = {"Content-Type": content_type, **reply.headers}
        for name, value in headers.items():
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
