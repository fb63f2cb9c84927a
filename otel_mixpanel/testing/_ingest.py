"""What Mixpanel's ingestion endpoints answer to one request, independent of HTTP plumbing.

:func:`handle_import` and :func:`handle_updates` take the decoded parts of a request and return
an :class:`Outcome`: the status and JSON body to answer, and the records to accept. The server
applies outcomes to its state; nothing here touches shared state.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from ._validate import Invalid, event_problem, update_problem
from ._wire import PayloadTooLarge, Rejection, decode_body, parse_payload

STATUS_PHRASES = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    413: "Request Entity Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
RATE_LIMITED_MESSAGE = (
    "Project exceeded rate limits. Please retry the request with exponential backoff."
)
PARTIAL_FAILURE_MESSAGE = "some data points in the request failed validation"
SERVICE_ACCOUNT_NEEDS_PROJECT_ID = (
    "project_id is required when authenticating with a service account"
)


@dataclass(frozen=True)
class Settings:
    """The project the server impersonates and the limits it enforces."""

    token: str
    project_id: str
    service_account: Tuple[str, str]
    max_records: int
    max_bytes: int
    # A project rule of the test's own: a reason to refuse a record, or None.
    refuse: Optional[Callable[[Dict[str, Any]], Optional[str]]] = None


@dataclass(frozen=True)
class Incoming:
    """The parts of an HTTP request that the endpoints read."""

    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes

    def header(self, name: str) -> Optional[str]:
        """The value of header ``name`` in any letter case, or ``None``."""
        lowered = name.lower()
        return next(
            (value for actual, value in self.headers.items() if actual.lower() == lowered), None
        )


@dataclass
class Outcome:
    """The answer to one request and the records it accepts."""

    status: int
    response: object
    accepted: List[Dict[str, object]] = field(default_factory=list)
    rejections: List[Rejection] = field(default_factory=list)


class _Refusal(Exception):
    """The whole request is refused with this answer."""

    def __init__(self, status: int, response: object) -> None:
        super().__init__(status, response)
        self.status = status
        self.response = response


def error_body(status: int, message: Optional[str] = None) -> Dict[str, object]:
    """Mixpanel's JSON error body for ``status`` (as ``/import`` shapes it)."""
    phrase = STATUS_PHRASES.get(status, "Error")
    return {"code": status, "error": message or phrase, "status": phrase}


def too_large_body(limit: int, unit: str = "bytes") -> Dict[str, object]:
    """Mixpanel's 413 body, naming the configured limit."""
    return error_body(413, f"request exceeds max limit of {limit} {unit}")


def default_fault_body(status: int, max_bytes: int) -> Dict[str, object]:
    """The body Mixpanel itself sends with ``status``, for faults that do not give one."""
    if status == 401:
        return error_body(401, "Invalid credentials")
    if status == 413:
        return too_large_body(max_bytes)
    if status == 429:
        return error_body(429, RATE_LIMITED_MESSAGE)
    if status < 400:
        return {"code": status, "status": STATUS_PHRASES.get(status, "OK")}
    return error_body(status)


def handle_import(incoming: Incoming, settings: Settings, *, now: float) -> Outcome:
    """Mixpanel's ``POST /import``: authenticate, decode, validate each event, answer."""
    try:
        service_account = _authenticate(incoming, settings)
        records = _import_records(incoming, settings)
    except _Refusal as refusal:
        return Outcome(refusal.status, refusal.response)
    outcome = Outcome(200, None)
    failed: List[Dict[str, object]] = []
    for index, record in enumerate(records):
        problem = event_problem(record, service_account=service_account, now=now)
        if problem is None and settings.refuse is not None and isinstance(record, dict):
            reason = settings.refuse(record)
            problem = None if reason is None else Invalid("event", reason)
        if problem is None:
            assert isinstance(record, dict)
            outcome.accepted.append(record)
        else:
            failed.append(_failed_event(index, record, problem))
            outcome.rejections.append(Rejection("/import", index, record, problem.message))
    imported = len(outcome.accepted)
    if failed and incoming.query.get("strict") == "1":
        outcome.status = 400
        outcome.response = {
            **error_body(400, PARTIAL_FAILURE_MESSAGE),
            "num_records_imported": imported,
            "failed_records": failed,
        }
    else:
        outcome.response = {"code": 200, "num_records_imported": imported, "status": "OK"}
    return outcome


def _authenticate(incoming: Incoming, settings: Settings) -> bool:
    """Whether the request used the service account; raises a refusal for bad credentials."""
    credentials = _basic_credentials(incoming.header("Authorization"))
    if credentials is None:
        raise _Refusal(401, error_body(401, "Invalid credentials"))
    username, password = credentials
    if _same(username, settings.token) and password == "":
        return False
    sa_username, sa_secret = settings.service_account
    if not (_same(username, sa_username) and _same(password, sa_secret)):
        raise _Refusal(401, error_body(401, "Invalid credentials"))
    project_id = incoming.query.get("project_id")
    if not project_id:
        raise _Refusal(400, error_body(400, SERVICE_ACCOUNT_NEEDS_PROJECT_ID))
    if project_id != settings.project_id:
        raise _Refusal(
            401,
            error_body(401, f"service account has no access to project_id {project_id!r}"),
        )
    return True


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _basic_credentials(authorization: Optional[str]) -> Optional[Tuple[str, str]]:
    if not authorization:
        return None
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, separator, password = decoded.partition(":")
    return (username, password) if separator else None


def _import_records(incoming: Incoming, settings: Settings) -> List[object]:
    try:
        text = decode_body(
            incoming.body, incoming.header("Content-Encoding"), limit=settings.max_bytes
        )
        payload, _ = parse_payload(text, incoming.header("Content-Type") or "")
    except PayloadTooLarge:
        raise _Refusal(413, too_large_body(settings.max_bytes)) from None
    except ValueError as error:
        raise _Refusal(400, error_body(400, f"invalid request body: {error}")) from None
    if not isinstance(payload, list):
        raise _Refusal(400, error_body(400, "request body must be a JSON array of events"))
    if not payload:
        raise _Refusal(400, error_body(400, "request body contains no events"))
    if len(payload) > settings.max_records:
        raise _Refusal(413, too_large_body(settings.max_records, "records"))
    return payload


def _failed_event(index: int, record: object, problem: Invalid) -> Dict[str, object]:
    properties = record.get("properties") if isinstance(record, dict) else None
    insert_id = properties.get("$insert_id") if isinstance(properties, dict) else None
    return {
        "index": index,
        "insert_id": insert_id if isinstance(insert_id, str) else "",
        "field": problem.field,
        "message": problem.message,
    }


def handle_updates(incoming: Incoming, settings: Settings) -> Outcome:
    """Mixpanel's ``POST /engage`` or ``POST /groups`` (chosen by ``incoming.path``)."""
    encoding = incoming.header("Content-Encoding")
    if encoding and encoding.strip().lower() != "identity":
        message = f"{encoding.strip().lower()} is not supported on this endpoint"
        return Outcome(400, {"status": 0, "error": message})
    if len(incoming.body) > settings.max_bytes:
        return Outcome(413, too_large_body(settings.max_bytes))
    params = dict(incoming.query)
    try:
        text = decode_body(incoming.body, None, limit=None)
        payload, form_fields = parse_payload(text, incoming.header("Content-Type") or "")
    except ValueError as error:
        return _updates_answer(params, 0, f"invalid request body: {error}")
    # The official SDKs put verbose=1 and ip=0 in the form body rather than the query.
    params.update(form_fields)
    updates: List[object] = payload if isinstance(payload, list) else [payload]
    if not updates:
        return _updates_answer(params, 0, "request body contains no updates")
    if len(updates) > settings.max_records:
        return Outcome(413, too_large_body(settings.max_records, "records"))
    return _judge_updates(incoming.path, updates, params, settings)


def _judge_updates(
    endpoint: str, updates: List[object], params: Mapping[str, str], settings: Settings
) -> Outcome:
    problems = [
        update_problem(update, endpoint=endpoint, token=settings.token) for update in updates
    ]
    if settings.refuse is not None:
        problems = [
            settings.refuse(update) if problem is None and isinstance(update, dict) else problem
            for update, problem in zip(updates, problems)
        ]
    failures = [(index, reason) for index, reason in enumerate(problems) if reason is not None]
    if not failures:
        outcome = _updates_answer(params, 1, None)
        outcome.accepted = [update for update in updates if isinstance(update, dict)]
        return outcome
    rejections = [Rejection(endpoint, index, updates[index], reason) for index, reason in failures]
    if params.get("strict") == "1":
        valid = [
            update
            for update, problem in zip(updates, problems)
            if problem is None and isinstance(update, dict)
        ]
        response = {
            "status": 0,
            "error": PARTIAL_FAILURE_MESSAGE,
            "num_records_imported": len(valid),
            "failed_records": [{"index": index, "message": reason} for index, reason in failures],
        }
        return Outcome(200, response, valid, rejections)
    # Without strict=1 Mixpanel refuses the whole batch for one bad update.
    first_index, first_reason = failures[0]
    batch_reason = f"refused with its batch: update {first_index}: {first_reason}"
    rejections += [
        Rejection(endpoint, index, update, batch_reason)
        for index, (update, problem) in enumerate(zip(updates, problems))
        if problem is None
    ]
    rejections.sort(key=lambda rejection: rejection.index)
    outcome = _updates_answer(params, 0, first_reason)
    outcome.rejections = rejections
    return outcome


def _updates_answer(params: Mapping[str, str], status: int, error: Optional[str]) -> Outcome:
    """HTTP 200 whatever happened, as Mixpanel does: ``{"status":…,"error":…}`` or a bare 1/0."""
    if params.get("verbose") == "1":
        return Outcome(200, {"status": status, "error": error})
    return Outcome(200, status)
