"""``LocalMixpanel``: the public face of the local Mixpanel server, and its lifecycle.

The work is done elsewhere, so that each part stays small and testable on its own: the HTTP
plumbing in ``_http``, the serving of one request in ``_serving``, the endpoints in
``_ingest``, the scripted faults in ``_faults``, and what was received in ``_received``. This
module configures them, starts and stops the server, and documents the API tests use.
"""

from __future__ import annotations

import threading
from typing import Callable, Dict, List, Optional, Tuple, Union

from ._faults import Fault, FaultScript
from ._http import Hangup, LoopbackHTTPServer, Reply
from ._ingest import Settings
from ._received import Received, Record
from ._serving import Dispatcher, route_path
from ._wire import Headers, ReceivedRequest, Rejection

ENV_TOKEN = "OTEL_EXPORTER_MIXPANEL_TOKEN"
ENV_API_HOST = "OTEL_EXPORTER_MIXPANEL_API_HOST"
ENV_PROJECT_ID = "OTEL_EXPORTER_MIXPANEL_PROJECT_ID"
ENV_SERVICE_ACCOUNT_USERNAME = "OTEL_EXPORTER_MIXPANEL_SERVICE_ACCOUNT_USERNAME"
ENV_SERVICE_ACCOUNT_SECRET = "OTEL_EXPORTER_MIXPANEL_SERVICE_ACCOUNT_SECRET"


class LocalMixpanel:
    """A Mixpanel ingestion server (``/import``, ``/engage``, ``/groups``) on loopback.

    It enforces Mixpanel's contract (authentication, limits, per-record validation, answer
    bodies), keeps what it accepted, and can be told to misbehave with :meth:`fail_next` (the
    next requests) or :meth:`fail_for` (every request for a while). Use it as a context
    manager; every accessor returns a copy taken under the lock, so it is safe to read while
    an exporter is sending.
    """

    def __init__(
        self,
        *,
        token: str = "local-token",
        project_id: str = "1",
        service_account: Tuple[str, str] = ("local-sa", "local-secret"),
        host: str = "127.0.0.1",
        port: int = 0,
        max_records: int = 2000,
        max_bytes: int = 2 * 1024 * 1024,
    ) -> None:
        """Configure the project to impersonate; nothing listens until :meth:`start`."""
        self.token = token
        self.project_id = project_id
        self.service_account = service_account
        self.host = host
        self.port = port
        self.max_records = max_records
        self.max_bytes = max_bytes
        #: Seconds added before answering every request (a slow network, for benchmarks).
        self.latency = 0.0
        self._received = Received()
        # The received data's lock, under its old name: the live view holds it for a snapshot.
        self._lock = self._received.lock
        self._lifecycle = threading.Lock()
        self._server: Optional[LoopbackHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._stopping = threading.Event()
        self._faults = FaultScript()
        self._refuse: Optional[Callable[[Record], Optional[str]]] = None
        self._dispatcher = Dispatcher(self._received, self._faults, self._settings)
        # The GET pages beside the endpoints, by path; the live view adds its own here.
        self._pages = self._dispatcher.pages

    # Lifecycle

    def start(self) -> LocalMixpanel:
        """Listen on ``host:port`` (a free port when 0) and serve on a daemon thread.

        Does nothing if already started. Returns ``self``.
        """
        with self._lifecycle:
            if self._server is not None:
                return self
            self._stopping = threading.Event()
            server = LoopbackHTTPServer((self.host, self.port), self._respond)
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="LocalMixpanel server",
                daemon=True,
            )
            thread.start()
            self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Stop serving, hang up open connections, join every thread, close the socket.

        Requests still waiting out a delay are answered at once. Safe to call twice.
        """
        with self._lifecycle:
            server, thread = self._server, self._thread
            self._server = self._thread = None
            if server is None or thread is None:
                return
            self._stopping.set()
            server.shutdown()
            server.close_connections()
            server.server_close()
            thread.join()

    def __enter__(self) -> LocalMixpanel:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL to send to, e.g. ``"http://127.0.0.1:54321"``; only once started."""
        server = self._server
        if server is None:
            raise RuntimeError("LocalMixpanel is not started: call start() or use `with`")
        host, port = server.server_address[:2]
        host = str(host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def env(self, *, service_account: bool = False) -> Dict[str, str]:
        """The environment variables that point ``otel_mixpanel`` at this server.

        With ``service_account=True`` they also carry the project id and service account, so
        that ``/import`` authenticates with the service account (needed for ``$merge``).
        """
        variables = {ENV_TOKEN: self.token, ENV_API_HOST: self.url}
        if service_account:
            username, secret = self.service_account
            variables[ENV_PROJECT_ID] = self.project_id
            variables[ENV_SERVICE_ACCOUNT_USERNAME] = username
            variables[ENV_SERVICE_ACCOUNT_SECRET] = secret
        return variables

    # What was received

    @property
    def events(self) -> List[Record]:
        """Every accepted ``/import`` record, duplicates included, in the order handled."""
        return self._received.events()

    def unique_events(self) -> List[Record]:
        """Accepted events deduplicated as Mixpanel does, the first of each kept.

        Two events are duplicates when ``event``, ``distinct_id``, ``time`` and ``$insert_id``
        are all equal.
        """
        return self._received.unique_events()

    def events_named(self, name: str) -> List[Record]:
        """The :meth:`unique_events` whose ``event`` is ``name``."""
        return [record for record in self.unique_events() if record["event"] == name]

    @property
    def profile_updates(self) -> List[Record]:
        """Every accepted ``/engage`` update object, as received, in the order handled."""
        return self._received.profile_updates()

    @property
    def group_updates(self) -> List[Record]:
        """Every accepted ``/groups`` update object, as received, in the order handled."""
        return self._received.group_updates()

    @property
    def profiles(self) -> Dict[str, Record]:
        """User profiles by ``distinct_id``: every accepted update applied in order."""
        return self._received.profiles()

    @property
    def groups(self) -> Dict[Tuple[str, str], Record]:
        """Group profiles by ``(group_key, group_id)``: every accepted update applied in order."""
        return self._received.groups()

    @property
    def requests(self) -> List[ReceivedRequest]:
        """Every request received (faulted ones included), in the order answered."""
        return self._received.requests()

    @property
    def rejected(self) -> List[Rejection]:
        """Every record refused by validation (or refused with its batch), with the reason."""
        return self._received.rejected()

    def clear(self) -> None:
        """Forget everything received; scripted faults stay (see :meth:`clear_faults`)."""
        self._received.clear()

    def wait_for(self, predicate: Callable[[LocalMixpanel], bool], timeout: float = 5.0) -> bool:
        """Wait until ``predicate(self)`` holds, re-checking after every request.

        Returns the predicate's last result: ``False`` if it still fails after ``timeout``
        seconds. The predicate runs outside the lock, so it may use every accessor.
        """
        return self._received.wait_until(lambda: predicate(self), timeout)

    # Faults

    def fail_next(
        self,
        count: int = 1,
        *,
        status: Optional[int] = 503,
        body: object = None,
        headers: Optional[Dict[str, str]] = None,
        delay: float = 0.0,
        drop_connection: bool = False,
        endpoint: Optional[str] = None,
    ) -> None:
        """Make the next ``count`` requests (to ``endpoint``, e.g. ``"/import"``, if given) fail.

        Each waits ``delay`` seconds, then either the connection is closed without an answer
        (``drop_connection``) or ``status`` is answered with ``body`` (default: Mixpanel's own
        body for that status; ``str``/``bytes`` are sent as they are) and ``headers`` (e.g.
        ``{"Retry-After": "1"}``). ``status=None`` means slow but otherwise normal: handled
        normally after the delay. A faulted request is recorded in :attr:`requests`, but
        nothing it carries is accepted. Faults queue up in the order they were scripted.
        """
        if count < 0:
            raise ValueError("count must not be negative")
        fault = _fault(status, body, headers, delay, drop_connection, False, endpoint)
        self._faults.add_count(fault, count)

    def fail_for(
        self,
        seconds: float,
        *,
        status: Optional[int] = 503,
        body: object = None,
        headers: Optional[Dict[str, str]] = None,
        delay: float = 0.0,
        drop_connection: bool = False,
        reset_connection: bool = False,
        endpoint: Optional[str] = None,
    ) -> None:
        """Make every request (to ``endpoint``, if given) fail for ``seconds`` from now.

        An outage rather than a number of failures: each request arriving in the window gets
        the fault as :meth:`fail_next` describes it (``status=None`` with a ``delay`` holds the
        request, then handles it normally: its records are stored). ``reset_connection`` reads
        the request, then closes the connection with a TCP RST instead of answering (the
        client sees "connection reset by peer"). Faults queued with :meth:`fail_next` take
        precedence while they last; of overlapping windows the latest scripted wins. After the
        window, requests are handled normally again; one that arrived inside it still
        completes its fault (e.g. waits out its delay). Example::

            mixpanel.fail_for(0.5, status=503, headers={"Retry-After": "1"})
        """
        if seconds < 0:
            raise ValueError("seconds must not be negative")
        fault = _fault(status, body, headers, delay, drop_connection, reset_connection, endpoint)
        self._faults.add_window(fault, seconds)

    def clear_faults(self) -> None:
        """Forget every scripted fault: those queued with :meth:`fail_next` and the windows of
        :meth:`fail_for`. Requests already waiting out a fault's delay still complete it.
        """
        self._faults.clear()

    def refuse_records(self, rule: Optional[Callable[[Record], Optional[str]]]) -> None:
        """Refuse every record (event or update) for which ``rule`` returns a reason.

        Mixpanel refuses records for reasons of its own (data governance, a
        project's rules); this lets a test see how a client copes with a
        partial failure: with ``strict=1`` the other records of the request are
        still accepted and the refused ones are named in ``failed_records``.
        ``None`` removes the rule.
        """
        self._refuse = rule

    @property
    def pending_faults(self) -> int:
        """How many requests the faults queued with :meth:`fail_next` have yet to affect.

        Windows scripted with :meth:`fail_for` are not counted: they last a time, not a
        number of requests.
        """
        return self._faults.pending()

    # Serving (called on connection threads)

    def _settings(self) -> Settings:
        return Settings(
            token=self.token,
            project_id=self.project_id,
            service_account=self.service_account,
            max_records=self.max_records,
            max_bytes=self.max_bytes,
            refuse=self._refuse,
        )

    def _respond(
        self, method: str, path: str, query: Dict[str, str], headers: Headers, body: bytes
    ) -> Union[Reply, Hangup]:
        return self._dispatcher.respond(
            method, path, query, headers, body, latency=self.latency, stopping=self._stopping
        )

    @property
    def _events(self) -> List[Record]:
        """The accepted events themselves, uncopied: ``benchmarks/run.py`` counts them cheaply."""
        return self._received.events_list


def _fault(
    status: Optional[int],
    body: object,
    headers: Optional[Dict[str, str]],
    delay: float,
    drop_connection: bool,
    reset_connection: bool,
    endpoint: Optional[str],
) -> Fault:
    """The :class:`Fault` that :meth:`LocalMixpanel.fail_next` and ``fail_for`` script."""
    if delay < 0:
        raise ValueError("delay must not be negative")
    if drop_connection and reset_connection:
        raise ValueError("drop_connection and reset_connection are exclusive")
    return Fault(
        status=status,
        body=body,
        headers=dict(headers or {}),
        delay=delay,
        drop_connection=drop_connection,
        reset_connection=reset_connection,
        endpoint=None if endpoint is None else route_path(endpoint),
    )
