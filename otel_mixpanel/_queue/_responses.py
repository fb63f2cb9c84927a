"""Reading one Mixpanel answer: what it accepted, rejected, and what to do next.

``/import`` speaks HTTP status codes and, with ``strict=1``, names the failed
records; ``/engage`` and ``/groups`` answer 200 even when they refuse a batch,
so their body is always read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from otel_mixpanel._model import Endpoint
from otel_mixpanel._queue._batch import Batch
from otel_mixpanel._queue._retry import retry_after
from otel_mixpanel._queue._transport import HTTPResponse

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
AUTH_STATUSES = frozenset({401, 403})


@dataclass(frozen=True)
class Answer:
    """One attempt, read.

    ``rejected`` maps a record's index in the attempted batch to Mixpanel's
    reason; the other records were accepted unless ``error`` is set, in which
    case none were. ``retryable`` says whether sending them again may succeed.
    """

    status: int
    accepted: int
    rejected: Dict[int, str]
    error: Optional[str] = None
    retryable: bool = False
    maybe_delivered: bool = False
    retry_after: Optional[float] = None

    @property
    def too_large(self) -> bool:
        """Mixpanel refused the request's size: split it."""
        return self.status == 413

    @property
    def refused_credentials(self) -> bool:
        """401/403: nothing was accepted, and nothing will be until the
        credentials or the region are fixed."""
        return self.status in AUTH_STATUSES


def read_response(batch: Batch, response: HTTPResponse) -> Answer:
    """Turn Mixpanel's answer to *batch* into an :class:`Answer`."""
    count = len(batch.records)
    if response.status == 0:
        return Answer(
            0, 0, {}, error=response.error, retryable=True,
            maybe_delivered=response.maybe_delivered,
        )
    body = _json(response.body)
    if response.status in RETRYABLE_STATUSES:
        return Answer(
            response.status, 0, {}, error=_describe(response.status, body), retryable=True,
            retry_after=retry_after(response.headers),
        )
    if response.status in AUTH_STATUSES:
        return Answer(
            response.status, 0, {},
            error=f"Mixpanel refused the credentials ({response.status}: {_reason(body)}): check "
            "the token or service account, the project id, and that the region matches the "
            "project's (us, eu or in)",
        )
    failed = body.get("failed_records") if isinstance(body, dict) else None
    if isinstance(failed, list) and failed:
        rejected = _rejections(batch, failed)
        return Answer(response.status, count - len(rejected), rejected)
    if response.status != 200:
        return Answer(response.status, 0, {}, error=_describe(response.status, body))
    if batch.endpoint is Endpoint.IMPORT or _status_one(body):
        return Answer(200, count, {})
    # /engage and /groups answer 200 with status 0 when they refuse the batch.
    reason = _reason(body)
    return Answer(200, 0, dict.fromkeys(range(count), reason))


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


def _rejections(batch: Batch, failed: List[Any]) -> Dict[int, str]:
    """Indices named by ``failed_records``; an entry without a usable index is
    matched by its insert id (the key is ``insert_id`` or ``$insert_id``)."""
    rejected: Dict[int, str] = {}
    by_insert_id: Optional[Dict[str, int]] = None
    for entry in failed:
        if not isinstance(entry, dict):
            continue
        index = entry.get("index")
        if not isinstance(index, int) or not 0 <= index < len(batch.records):
            if by_insert_id is None:
                by_insert_id = _insert_ids(batch)
            index = by_insert_id.get(str(entry.get("insert_id", entry.get("$insert_id", ""))))
        if index is None:
            continue
        where = f"{entry['field']}: " if entry.get("field") else ""
        rejected[index] = where + str(entry.get("message", ""))
    return rejected


def _insert_ids(batch: Batch) -> Dict[str, int]:
    ids: Dict[str, int] = {}
    for index, record in enumerate(batch.records):
        properties = _json(record)
        if isinstance(properties, dict) and isinstance(properties.get("properties"), dict):
            ids[str(properties["properties"].get("$insert_id", ""))] = index
    return ids
