"""``LocalMixpanel``: a Mixpanel-compatible ingestion server on loopback, with scripted faults."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from ._faults import Fault, FaultQueue
from ._http import LoopbackHTTPServer, Reply
from ._ingest import (
    Incoming,
    Outcome,
    Settings,
    default_fault_body,
    error_body,
    handle_import,
    handle_updates,
)
from ._profiles import apply_update
from ._wire import Headers, ReceivedRequest, Rejection

# Any, not object: callers index into events and profiles (m.events[0]["properties"]).
Record = Dict[str, Any]
_Route = Callable[[Incoming, Settings], Outcome]
# A GET page beside the ingestion endpoints (the live view): (query, headers) -> Reply.
_Page = Callable[[Dict[str, str], Headers], Reply]

ENV_TOKEN = "OTEL_EXPORTER_MIXPANEL_TOKEN"
ENV_API_HOST = "OTEL_EXPORTER_MIXPANEL_API_HOST"
ENV_PROJECT_ID = "OTEL_EXPORTER_MIXPANEL_PROJECT_ID"
ENV_SERVICE_ACCOUNT_USERNAME = "OTEL_EXPORTER_MIXPANEL_SERVICE_ACCOUNT_USERNAME"
ENV_SERVICE_ACCOUNT_SECRET = "OTEL_EXPORTER_MIXPANEL_SERVICE_ACCOUNT_SECRET"


def _copy_json(value: object) -> object:
    """A deep copy of parsed JSON; several times faster than ``copy.deepcopy`` for it."""
    if isinstance(value, dict):
        return {key: _copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_json(item) for item in value]
    return value


def _copy_records(records: List[Record]) -> List[Record]:
    return [{key: _copy_json(value) for key, value in record.items()} for record in records]


def _route_path(path: str) -> str:
    """``"/import/"`` and ``"import"`` both name ``"/import"``."""
    return "/" + path.strip("/")


class LocalMixpanel:
    """A Mixpanel ingestion server (``/import``, ``/engage``, ``/groups``) on loopback.

    It enforces Mixpanel's contract (authentication, limits, per-record validation, answer
    bodies), keeps what it accepted, and can be told to misbehave with :meth:`fail_next`.
    Use it as a context manager; every accessor returns a copy taken under the lock, so it is
    safe to read while an exporter is sending.
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
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._generation = 0
        self._lifecycle = threading.Lock()
        self._server: Optional[LoopbackHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._stopping = threading.Event()
        self._faults = FaultQueue()
        self._refuse: Optional[Callable[[Record], Optional[str]]] = None
        self._routes: Dict[Tuple[str, str], _Route] = {
            ("POST", "/import"): lambda incoming, settings: handle_import(
                incoming, settings, now=time.time()
            ),
            ("POST", "/engage"): handle_updates,
            ("POST", "/groups"): handle_updates,
        }
        # Pages are neither recorded nor subject to faults: a browser polling them must not
        # consume a scripted fault or grow `requests`.
        self._pages: Dict[str, _Page] = {}
        self._requests: List[ReceivedRequest] = []
        self._events: List[Record] = []
        self._profile_updates: List[Record] = []
        self._group_updates: List[Record] = []
        self._profiles: Dict[str, Record] = {}
        self._groups: Dict[Tuple[str, str], Record] = {}
        self._rejected: List[Rejection] = []

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
        with self._lock:
            return _copy_records(self._events)

    def unique_events(self) -> List[Record]:
        """Accepted events deduplicated as Mixpanel does, the first of each kept.

        Two events are duplicates when ``event``, ``distinct_id``, ``time`` and ``$insert_id``
        are all equal.
        """
        with self._lock:
            seen = set()
            unique = []
            for record in self._events:
                properties = record["properties"]
                assert isinstance(properties, dict)
                key = (
                    record["event"],
                    properties["distinct_id"],
                    properties["time"],
                    properties["$insert_id"],
                )
                if key not in seen:
                    seen.add(key)
                    unique.append(record)
            return _copy_records(unique)

    def events_named(self, name: str) -> List[Record]:
        """The :meth:`unique_events` whose ``event`` is ``name``."""
        return [record for record in self.unique_events() if record["event"] == name]

    @property
    def profile_updates(self) -> List[Record]:
        """Every accepted ``/engage`` update object, as received, in the order handled."""
        with self._lock:
            return _copy_records(self._profile_updates)

    @property
    def group_updates(self) -> List[Record]:
        """Every accepted ``/groups`` update object, as received, in the order handled."""
        with self._lock:
            return _copy_records(self._group_updates)

    @property
    def profiles(self) -> Dict[str, Record]:
        """User profiles by ``distinct_id``: every accepted update applied in order."""
        with self._lock:
            return {key: _copy_records([value])[0] for key, value in self._profiles.items()}

    @property
    def groups(self) -> Dict[Tuple[str, str], Record]:
        """Group profiles by ``(group_key, group_id)``: every accepted update applied in order."""
        with self._lock:
            return {key: _copy_records([value])[0] for key, value in self._groups.items()}

    @property
    def requests(self) -> List[ReceivedRequest]:
        """Every request received (faulted ones included), in the order answered."""
        with self._lock:
            return list(self._requests)

    @property
    def rejected(self) -> List[Rejection]:
        """Every record refused by validation (or refused with its batch), with the reason."""
        with self._lock:
            return [
                Rejection(item.endpoint, item.index, _copy_json(item.record), item.reason)
                for item in self._rejected
            ]

    def clear(self) -> None:
        """Forget everything received; scripted faults stay queued."""
        with self._changed:
            self._requests.clear()
            self._events.clear()
            self._profile_updates.clear()
            self._group_updates.clear()
            self._profiles.clear()
            self._groups.clear()
            self._rejected.clear()
            self._generation += 1
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[LocalMixpanel], bool], timeout: float = 5.0) -> bool:
        """Wait until ``predicate(self)`` holds, re-checking after every request.

        Returns the predicate's last result: ``False`` if it still fails after ``timeout``
        seconds. The predicate runs outside the lock, so it may use every accessor.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                generation = self._generation
            if predicate(self):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._changed:
                if self._generation == generation:
                    # Bounded, so that predicates over things other than requests still poll.
                    self._changed.wait(min(remaining, 0.1))

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
        if count < 0 or delay < 0:
            raise ValueError("count and delay must not be negative")
        fault = Fault(
            remaining=count,
            status=status,
            body=body,
            headers=dict(headers or {}),
            delay=delay,
            drop_connection=drop_connection,
            endpoint=None if endpoint is None else _route_path(endpoint),
        )
        with self._lock:
            self._faults.add(fault)

    def refuse_records(self, rule: Optional[Callable[[Record], Optional[str]]]) -> None:
        """Refuse every record (event or update) for which ``rule`` returns a reason.

        Mixpanel refuses records for reasons of its own (data governance, a
        project's rules); this lets a test see how a client copes with a
        partial failure: with ``strict=1`` the other records of the request are
        still accepted and the refused ones are named in ``failed_records``.
        ``None`` removes the rule.
        """
        with self._lock:
            self._refuse = rule

    @property
    def pending_faults(self) -> int:
        """How many requests the scripted faults have yet to affect."""
        with self._lock:
            return len(self._faults)

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
    ) -> Optional[Reply]:
        route_path = _route_path(path)
        page = self._pages.get(route_path) if method == "GET" else None
        if page is not None:
            return page(query, headers)
        with self._lock:
            fault = self._faults.take(route_path)
        pause = self.latency + (fault.delay if fault else 0.0)
        if pause > 0:
            self._stopping.wait(pause)
        if fault is not None and (fault.drop_connection or fault.status is not None):
            reply = None
            if not fault.drop_connection:
                assert fault.status is not None
                response = fault.body
                if response is None:
                    response = default_fault_body(fault.status, self.max_bytes)
                reply = Reply(fault.status, response, fault.headers)
            status, answered = (0, None) if reply is None else (reply.status, reply.response)
            self._record(ReceivedRequest(method, path, query, headers, body, status, answered))
            return reply
        route = self._routes.get((method, route_path))
        if route is None:
            outcome = Outcome(404, error_body(404, f"no such endpoint: {method} {path}"))
        else:
            outcome = route(Incoming(route_path, query, headers, body), self._settings())
        request = ReceivedRequest(
            method, path, query, headers, body, outcome.status, outcome.response
        )
        self._record(request, route_path, outcome)
        return Reply(outcome.status, outcome.response)

    def _record(
        self, request: ReceivedRequest, route_path: str = "", outcome: Optional[Outcome] = None
    ) -> None:
        with self._changed:
            self._requests.append(request)
            if outcome is not None:
                self._rejected.extend(outcome.rejections)
                if route_path == "/import":
                    self._events.extend(outcome.accepted)
                elif route_path == "/engage":
                    self._apply_profile_updates(outcome.accepted)
                elif route_path == "/groups":
                    self._apply_group_updates(outcome.accepted)
            self._generation += 1
            self._changed.notify_all()

    def _apply_profile_updates(self, updates: List[Record]) -> None:
        self._profile_updates.extend(updates)
        for update in updates:
            distinct_id = str(update["$distinct_id"])
            properties = apply_update(self._profiles.get(distinct_id), update)
            if properties is None:
                self._profiles.pop(distinct_id, None)
            else:
                self._profiles[distinct_id] = properties

    def _apply_group_updates(self, updates: List[Record]) -> None:
        self._group_updates.extend(updates)
        for update in updates:
            key = (str(update["$group_key"]), str(update["$group_id"]))
            properties = apply_update(self._groups.get(key), update)
            if properties is None:
                self._groups.pop(key, None)
            else:
                self._groups[key] = properties
