"""The one delivery path: messages → limits → batches → HTTP → per-batch results.

Knows Mixpanel's HTTP contract (auth, gzip, endpoints, answers) and nothing
about OpenTelemetry. Each batch result says what Mixpanel accepted, what it
rejected and why, so that retry and spooling can act on exactly the records
that still need it.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

from otel_mixpanel._batch import Batch, make_batches
from otel_mixpanel._config import Settings
from otel_mixpanel._limits import Limits
from otel_mixpanel._model import Endpoint, Event, Message
from otel_mixpanel._stats import Stats
from otel_mixpanel._transport import HTTPResponse, RequestsTransport, Transport
from otel_mixpanel._version import __version__

_logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
GZIP_LEVEL = 6
_KIND = {
    Endpoint.IMPORT: "events",
    Endpoint.ENGAGE: "profile_updates",
    Endpoint.GROUPS: "group_updates",
}


@dataclass(frozen=True)
class Rejection:
    """One record Mixpanel refused, with its reason."""

    index: int
    message: Message
    reason: str


@dataclass(frozen=True)
class BatchResult:
    """The outcome of one request.

    ``error`` is set when the request as a whole failed (nothing accepted);
    ``retryable`` says whether sending the same records again may succeed.
    """

    endpoint: Endpoint
    records: int
    accepted: int
    rejected: Tuple[Rejection, ...] = ()
    error: Optional[str] = None
    retryable: bool = False
    status: int = 0


@dataclass(frozen=True)
class DeliveryResult:
    """Every batch's outcome for one :meth:`Delivery.deliver` call."""

    batches: Tuple[BatchResult, ...]

    @property
    def ok(self) -> bool:
        """True when every request reached Mixpanel and was answered."""
        return all(batch.error is None for batch in self.batches)


class Delivery:
    """Sends messages to Mixpanel under one deadline per call."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: Optional[Transport] = None,
        stats: Optional[Stats] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._transport = transport if transport is not None else RequestsTransport()
        self.stats = stats if stats is not None else Stats()
        self._limits = Limits(self.stats)
        self._clock = clock
        self._import_headers = self._headers_for_import()
        self._warned_no_token = False

    def deliver(self, messages: Sequence[Message]) -> DeliveryResult:
        """Send *messages*; never raises for anything Mixpanel or the network does."""
        messages = self._without_unsendable(self._limits.apply(messages))
        batches = make_batches(messages, self._settings.token, self.stats)
        deadline = self._clock() + self._settings.timeout
        results: List[BatchResult] = []
        for batch in batches:
            remaining = deadline - self._clock()
            if remaining <= 0:
                result = BatchResult(
                    batch.endpoint, len(batch.records), 0, error="deadline passed", retryable=True
                )
            else:
                result = self.send(batch, remaining)
            self._account(batch, result)
            results.append(result)
        return DeliveryResult(tuple(results))

    def send(self, batch: Batch, timeout: float) -> BatchResult:
        """One request for *batch*, read into a :class:`BatchResult`."""
        body = batch.body()
        if batch.endpoint is Endpoint.IMPORT:
            url = f"{self._settings.base_url}/import?strict=1"
            if self._settings.uses_service_account:
                url += f"&project_id={self._settings.project_id}"
            headers = self._import_headers
            if self._settings.compression == "gzip":
                body = gzip.compress(body, GZIP_LEVEL)
        else:
            # /engage and /groups take no gzip and no auth header: $token is in each object.
            url = f"{self._settings.base_url}{batch.endpoint.value}?verbose=1&strict=1&ip=0"
            headers = _BASE_HEADERS
        response = self._transport.post(url, body, headers, timeout)
        return read_response(batch, response)

    def close(self) -> None:
        """Close the transport's connections."""
        self._transport.close()

    def _headers_for_import(self) -> dict[str, str]:
        settings = self._settings
        if settings.uses_service_account:
            user = f"{settings.service_account_username}:{settings.service_account_secret}"
        else:
            user = f"{settings.token}:"
        headers = dict(_BASE_HEADERS)
        headers["Authorization"] = "Basic " + base64.b64encode(user.encode()).decode("ascii")
        if settings.compression == "gzip":
            headers["Content-Encoding"] = "gzip"
        return headers

    def _without_unsendable(self, messages: List[Message]) -> List[Message]:
        if self._settings.token is not None:
            return messages
        kept: List[Message] = [m for m in messages if isinstance(m, Event)]
        if len(kept) < len(messages):
            self.stats.dropped(
                "no_project_token",
                len(messages) - len(kept),
                detail="profile and group updates need the project token "
                "(OTEL_EXPORTER_MIXPANEL_TOKEN) beside the service account",
            )
        return kept

    def _account(self, batch: Batch, result: BatchResult) -> None:
        if result.accepted:
            self.stats.sent(_KIND[batch.endpoint], result.accepted)
        for rejection in result.rejected:
            self.stats.dropped("rejected_by_mixpanel", detail=rejection.reason)
        if result.error is not None:
            reason = "delivery_failed" if result.retryable else "refused_by_mixpanel"
            self.stats.dropped(reason, result.records, detail=result.error)


_BASE_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json",
    "User-Agent": f"otel-mixpanel/{__version__}",
}


def read_response(batch: Batch, response: HTTPResponse) -> BatchResult:
    """Turn Mixpanel's answer into what was accepted and what was rejected."""
    count = len(batch.records)
    if response.status == 0:
        return BatchResult(batch.endpoint, count, 0, error=response.error, retryable=True)
    body = _json(response.body)
    if response.status in RETRYABLE_STATUSES:
        return BatchResult(
            batch.endpoint, count, 0, error=_describe(response.status, body), retryable=True,
            status=response.status,
        )
    if response.status in (401, 403):
        return BatchResult(
            batch.endpoint, count, 0, status=response.status,
            error=f"Mixpanel refused the credentials ({response.status}: {_reason(body)}): check "
            "the token or service account, the project id, and that the region matches the "
            "project's (us, eu or in)",
        )
    failed = body.get("failed_records") if isinstance(body, dict) else None
    if isinstance(failed, list) and failed:
        rejected = _rejections(batch, failed)
        return BatchResult(
            batch.endpoint, count, count - len(rejected), rejected, status=response.status
        )
    if response.status != 200:
        return BatchResult(
            batch.endpoint, count, 0, error=_describe(response.status, body),
            status=response.status,
        )
    if batch.endpoint is Endpoint.IMPORT or _status_one(body):
        return BatchResult(batch.endpoint, count, count, status=200)
    # /engage and /groups answer 200 with status 0 when they refuse the batch.
    reason = _reason(body)
    rejected = tuple(Rejection(i, m, reason) for i, m in enumerate(batch.messages))
    return BatchResult(batch.endpoint, count, 0, rejected, status=200)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _status_one(body: Any) -> bool:
    return body == 1 or (isinstance(body, dict) and body.get("status") == 1)


def _reason(body: Any) -> str:
    if isinstance(body, dict) and body.get("error"):
        return str(body["error"])
    return "no reason given"


def _describe(status: int, body: Any) -> str:
    return f"HTTP {status}: {_reason(body)}"


def _rejections(batch: Batch, failed: List[Any]) -> Tuple[Rejection, ...]:
    by_insert_id = {
        message.insert_id: index
        for index, message in enumerate(batch.messages)
        if isinstance(message, Event)
    }
    rejected = {}
    for entry in failed:
        if not isinstance(entry, dict):
            continue
        index = entry.get("index")
        if not isinstance(index, int) or not 0 <= index < len(batch.messages):
            index = by_insert_id.get(str(entry.get("insert_id", entry.get("$insert_id", ""))))
        if index is None:
            continue
        where = f"{entry['field']}: " if entry.get("field") else ""
        reason = where + str(entry.get("message", ""))
        rejected[index] = Rejection(index, batch.messages[index], reason)
    return tuple(rejected[index] for index in sorted(rejected))
