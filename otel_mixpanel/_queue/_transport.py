"""The HTTP seam: one POST, answered or failed, never raising.

Delivery talks to a :class:`Transport`; the default one wraps a single
``requests.Session``. Tests may pass their own transport to script answers
and timing, but every user-visible behaviour is also tested over real HTTP
against ``otel_mixpanel.testing.LocalMixpanel``.
"""

from __future__ import annotations

import abc
import os
import threading
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

import requests
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

__all__ = ["HTTPResponse", "RequestsTransport", "Transport"]


@dataclass(frozen=True)
class HTTPResponse:
    """What came back: a status and body, or (``status == 0``) an error.

    ``maybe_delivered`` marks an error after the request was sent (a read
    timeout): Mixpanel may have applied it, so only idempotent records may be
    sent again.
    """

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    error: Optional[str] = None
    maybe_delivered: bool = False


class Transport(abc.ABC):
    """Sends one request. Implementations must not raise from :meth:`post`."""

    @abc.abstractmethod
    def post(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> HTTPResponse:
        """POST *body* to *url* within *timeout* seconds."""

    def close(self) -> None:  # noqa: B027 - optional hook, like httpx's BaseTransport
        """Release connections; the transport may be used again afterwards."""


class RequestsTransport(Transport):
    """One ``requests.Session``, renewed in a forked child so that parent and
    child never share a connection."""

    def __init__(self, session_factory: Callable[[], requests.Session] = requests.Session) -> None:
        self._session_factory = session_factory
        self._lock = threading.Lock()
        self._session: Optional[requests.Session] = None
        self._pid = os.getpid()

    def _current_session(self) -> requests.Session:
        if self._pid != os.getpid():
            # A forked child: the parent's lock may have been held at the fork.
            self._lock = threading.Lock()
        with self._lock:
            if self._session is None or self._pid != os.getpid():
                # After fork the inherited pool's sockets belong to the parent.
                self._session = self._session_factory()
                self._pid = os.getpid()
            return self._session

    def post(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> HTTPResponse:
        """POST with a finite timeout; connection problems become a result."""
        try:
            response = self._current_session().post(
                url, data=body, headers=dict(headers), timeout=timeout, allow_redirects=False
            )
            return HTTPResponse(response.status_code, response.content, dict(response.headers))
        except requests.RequestException as error:
            return HTTPResponse(
                0, error=f"{type(error).__name__}: {error}", maybe_delivered=_after_sending(error)
            )
        except Exception as error:  # a transport must never raise into delivery
            return HTTPResponse(0, error=f"unexpected {type(error).__name__}: {error}")

    def close(self) -> None:
        """Close the session's connections."""
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()


def _after_sending(error: requests.RequestException) -> bool:
    """Whether the request may have reached Mixpanel before *error*.

    Only a failure to connect proves nothing was sent. A timeout waiting for the
    answer, or a connection closed or reset after the request was written, may
    follow a request Mixpanel applied: non-idempotent updates must not be resent.
    """
    if isinstance(error, (requests.exceptions.ConnectTimeout, requests.exceptions.SSLError)):
        return False
    answer_lost = (requests.exceptions.ReadTimeout, requests.exceptions.ChunkedEncodingError)
    if isinstance(error, answer_lost):
        return True
    if isinstance(error, requests.exceptions.ConnectionError):
        cause = error.args[0] if error.args else None
        reason = getattr(cause, "reason", cause)  # MaxRetryError wraps the real one
        return not isinstance(reason, (NewConnectionError, ConnectTimeoutError))
    return False
