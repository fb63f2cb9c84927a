"""The serving of one request: a page, a scripted fault, or a Mixpanel endpoint, then recorded.

This is the ``Responder`` that the HTTP plumbing (``_http``) calls on a connection thread. It
joins the parts that know nothing of each other: the fault script (``_faults``), the endpoints
(``_ingest``) and the record of what was received (``_received``).
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Dict, Tuple, Union

from ._faults import FaultScript
from ._http import Hangup, Reply
from ._ingest import Incoming, Outcome, Settings, error_body, handle_import, handle_updates
from ._received import Received
from ._wire import Headers, ReceivedRequest

Route = Callable[[Incoming, Settings], Outcome]
# A GET page beside the ingestion endpoints (the live view): (query, headers) -> Reply.
Page = Callable[[Dict[str, str], Headers], Reply]


def route_path(path: str) -> str:
    """``"/import/"`` and ``"import"`` both name ``"/import"``."""
    return "/" + path.strip("/")


class Dispatcher:
    """Answers each request from the ``pages``, the fault script or the routes, and records it.

    ``settings`` is called per request, so that changes to the server's attributes apply to
    the next request.
    """

    def __init__(
        self, received: Received, faults: FaultScript, settings: Callable[[], Settings]
    ) -> None:
        self._received = received
        self._faults = faults
        self._settings = settings
        self._routes: Dict[Tuple[str, str], Route] = {
            ("POST", "/import"): lambda incoming, settings: handle_import(
                incoming, settings, now=time.time()
            ),
            ("POST", "/engage"): handle_updates,
            ("POST", "/groups"): handle_updates,
        }
        # Pages are neither recorded nor subject to faults: a browser polling them must not
        # consume a scripted fault or grow `requests`.
        self.pages: Dict[str, Page] = {}

    def respond(
        self,
        method: str,
        path: str,
        query: Dict[str, str],
        headers: Headers,
        body: bytes,
        *,
        latency: float,
        stopping: threading.Event,
    ) -> Union[Reply, Hangup]:
        """The answer to one request, after ``latency`` and any fault's delay.

        The wait ends early when ``stopping`` is set, so that stopping the server answers
        delayed requests at once.
        """
        path_name = route_path(path)
        page = self.pages.get(path_name) if method == "GET" else None
        if page is not None:
            return page(query, headers)
        fault = self._faults.take(path_name)
        pause = latency + (fault.delay if fault else 0.0)
        if pause > 0:
            stopping.wait(pause)
        answer = None if fault is None else fault.answer(self._settings().max_bytes)
        if answer is not None:
            # A hang-up is recorded as status 0 with no response: nothing was answered.
            status, answered = (
                (0, None) if isinstance(answer, Hangup) else (answer.status, answer.response)
            )
            self._received.record(
                ReceivedRequest(method, path, query, headers, body, status, answered)
            )
            return answer
        route = self._routes.get((method, path_name))
        if route is None:
            outcome = Outcome(404, error_body(404, f"no such endpoint: {method} {path}"))
        else:
            outcome = route(Incoming(path_name, query, headers, body), self._settings())
        request = ReceivedRequest(
            method, path, query, headers, body, outcome.status, outcome.response
        )
        self._received.record(request, path_name, outcome)
        return Reply(outcome.status, outcome.response)
