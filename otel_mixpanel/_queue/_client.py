"""One request to Mixpanel and what its answer means for each record.

Knows Mixpanel's HTTP contract (URLs, auth, gzip, per-record answers) and
nothing about waiting: the sending queue decides when to try again. A record
is never sent again once Mixpanel accepted it, and a non-idempotent profile
update (``$add``, ``$append``, charges) whose request may have been applied is
never sent again at all: applied once or not at all, never twice.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from otel_mixpanel._config import Settings
from otel_mixpanel._model import Endpoint, Event, IdentityEvent, Message
from otel_mixpanel._queue._batch import Batch, make_batches
from otel_mixpanel._queue._limits import Limits
from otel_mixpanel._queue._responses import read_response
from otel_mixpanel._queue._transport import HTTPResponse, RequestsTransport, Transport
from otel_mixpanel._stats import Stats
from otel_mixpanel._version import __version__

GZIP_LEVEL = 1  # by measurement: see docs/performance.md (level 6: 2.5x the CPU, 13 % smaller)
KIND = {
    Endpoint.IMPORT: "events",
    Endpoint.ENGAGE: "profile_updates",
    Endpoint.GROUPS: "group_updates",
}
_QUOTED = re.compile(r"""(['"`]).*?\1""")
# Operations that change a profile again each time they are applied.
NON_IDEMPOTENT_OPERATIONS = frozenset({"$add", "$append"})
_BASE_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json",
    "User-Agent": f"otel-mixpanel/{__version__}",
}


def loggable(reason: str) -> str:
    """Mixpanel's reason for a refusal, fit for a log line: the field alone when
    it names one ("properties.time: ..."), else its words with anything quoted
    (it may be the offending value, personal data) left out."""
    if ":" in reason:
        return reason.split(":", 1)[0]
    return _QUOTED.sub("…", reason)[:120] or "no reason given"


def sendable(messages: List[Message], settings: Settings, stats: Stats) -> List[Message]:
    """*messages* less those Mixpanel refuses with these credentials, counted."""
    if not settings.uses_service_account:
        merges = [m for m in messages if isinstance(m, IdentityEvent) and m.name == "$merge"]
        if merges:
            stats.dropped(
                "merge_needs_service_account", len(merges),
                detail="Mixpanel accepts $merge only with service-account authentication",
            )
            messages = [m for m in messages if m not in merges]
    if settings.token is not None:
        return messages
    kept: List[Message] = [m for m in messages if isinstance(m, Event)]
    if len(kept) < len(messages):
        stats.dropped(
            "no_project_token", len(messages) - len(kept),
            detail="profile and group updates need the project token "
            "(OTEL_EXPORTER_MIXPANEL_TOKEN) beside the service account",
        )
    return kept


def prepare(
    messages: Sequence[Message], limits: Limits, settings: Settings, stats: Stats
) -> List[Tuple[Endpoint, List[bytes]]]:
    """*messages* within Mixpanel's limits, encoded, in requests' order: what
    the sending queue keeps. Pure (it counts in *stats*), so the helper
    process runs it as the queue does."""
    kept = sendable(limits.apply(messages), settings, stats)
    return [(batch.endpoint, batch.records)
            for batch in make_batches(kept, settings.token, stats)]


@dataclass(frozen=True)
class Outcome:
    """What one attempt settled, by index into the records sent.

    ``remaining``: still to send (Mixpanel unreachable, busy, refused the
    credentials, or the request was too large). ``retry``: wait before the
    next attempt (``retry_after`` seconds when Mixpanel said so). Every other
    record left for good: accepted, rejected with Mixpanel's reason, or of
    unknown outcome and not idempotent; each already counted in the stats.
    """

    remaining: Tuple[int, ...]
    retry: bool = False
    retry_after: Optional[float] = None
    too_large: bool = False
    error: Optional[str] = None
    status: int = 0


class Client:
    """Sends one batch of encoded records; owns the URLs, headers and transport."""

    def __init__(self, settings: Settings, transport: Optional[Transport] = None) -> None:
        self._settings = settings
        self._transport = transport if transport is not None else RequestsTransport()
        self._import_headers = self._headers_for_import()

    def attempt(
        self, endpoint: Endpoint, records: Sequence[bytes], timeout: float,
        stats: Stats,
    ) -> Outcome:
        """Send *records* once, count what left, and say what remains."""
        batch = Batch.of_records(endpoint, records)
        answer = read_response(batch, self._post(batch, timeout))
        everything = tuple(range(len(records)))
        if answer.too_large and len(records) > 1:
            return Outcome(everything, too_large=True, error=answer.error, status=413)
        kind = KIND[endpoint]
        if answer.accepted:
            stats.sent(kind, answer.accepted)
        for reason in answer.rejected.values():
            stats.dropped("rejected_by_mixpanel", detail=loggable(reason))
        if answer.retryable or answer.refused_credentials:
            # Refused credentials are fixable (a token, a region), not bad data: the
            # records wait, and the log says why at every backoff step.
            remaining = everything
            if answer.maybe_delivered:
                unsafe = set(self.not_idempotent(endpoint, records))
                if unsafe:
                    stats.dropped(
                        "outcome_unknown", len(unsafe),
                        detail="a request failed after it was sent; its $add/$append updates "
                        "are not resent, so they are applied at most once",
                    )
                    remaining = tuple(i for i in everything if i not in unsafe)
            return Outcome(
                remaining, retry=True, retry_after=answer.retry_after, error=answer.error,
                status=answer.status,
            )
        answered = answer.accepted + len(answer.rejected)
        if answer.error is not None and answered < len(records):
            stats.dropped("refused_by_mixpanel", len(records) - answered, detail=answer.error)
        return Outcome((), error=answer.error, status=answer.status)

    def close(self) -> None:
        """Close the connections (the transport may be used again)."""
        self._transport.close()

    def _post(self, batch: Batch, timeout: float) -> HTTPResponse:
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
        return self._transport.post(url, body, headers, timeout)

    @staticmethod
    def not_idempotent(endpoint: Endpoint, records: Sequence[bytes]) -> List[int]:
        """Indices of records that must not be applied twice."""
        if endpoint is not Endpoint.ENGAGE:
            return []
        unsafe = []
        for index, record in enumerate(records):
            update = json.loads(record)
            if NON_IDEMPOTENT_OPERATIONS.intersection(update):
                unsafe.append(index)
        return unsafe

    def _headers_for_import(self) -> Dict[str, str]:
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
