"""The one delivery path: messages → limits → batches → HTTP with retries →
per-batch results, and the spool for what Mixpanel cannot take now.

Knows Mixpanel's HTTP contract and nothing about OpenTelemetry. One deadline
bounds each :meth:`Delivery.deliver` call, retries included; a shutdown cuts a
backoff short. Records are never resent once Mixpanel accepted them, and a
non-idempotent profile update (``$add``, ``$append``, charges) whose request
may have been applied is never resent at all: applied once or not at all,
never twice.
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from otel_mixpanel._batch import Batch, make_batches
from otel_mixpanel._config import Settings
from otel_mixpanel._limits import Limits
from otel_mixpanel._model import Endpoint, Event, IdentityEvent, Message
from otel_mixpanel._responses import read_response
from otel_mixpanel._retry import RetryPolicy
from otel_mixpanel._spool import Spool
from otel_mixpanel._stats import Stats
from otel_mixpanel._transport import HTTPResponse, RequestsTransport, Transport
from otel_mixpanel._version import __version__

GZIP_LEVEL = 1  # by measurement: see docs/performance.md (level 6: 2.5x the CPU, 13 % smaller)
KIND = {
    Endpoint.IMPORT: "events",
    Endpoint.ENGAGE: "profile_updates",
    Endpoint.GROUPS: "group_updates",
}
# Operations that change a profile again each time they are applied.
NON_IDEMPOTENT_OPERATIONS = frozenset({"$add", "$append"})
_BASE_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json",
    "User-Agent": f"otel-mixpanel/{__version__}",
}


@dataclass(frozen=True)
class BatchResult:
    """What became of one batch, by index into it.

    ``rejected``: refused by Mixpanel for good, with its reason.
    ``undelivered``: still to deliver (Mixpanel unreachable within the budget,
    or credentials refused); these go to the spool when there is one.
    ``unknown``: may or may not have been applied, and not idempotent, so
    never sent again. The rest were accepted.
    """

    endpoint: Endpoint
    records: int
    accepted: int
    rejected: Dict[int, str]
    undelivered: Tuple[int, ...] = ()
    unknown: Tuple[int, ...] = ()
    error: Optional[str] = None
    status: int = 0


@dataclass(frozen=True)
class DeliveryResult:
    """Every batch's outcome for one :meth:`Delivery.deliver` call."""

    batches: Tuple[BatchResult, ...]

    @property
    def ok(self) -> bool:
        """True when Mixpanel answered for every record (accepted or rejected)."""
        return all(not b.undelivered and not b.unknown and b.error is None for b in self.batches)


class Delivery:
    """Sends messages to Mixpanel; owns retry, deadline, outage and spool."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: Optional[Transport] = None,
        stats: Optional[Stats] = None,
        retry_policy: Optional[RetryPolicy] = None,
        spool: Optional[Spool] = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Optional[Callable[[float], bool]] = None,
    ) -> None:
        """``clock`` and ``sleep`` (returns True when woken by shutdown) are
        seams for tests that script time."""
        self._settings = settings
        self._transport = transport if transport is not None else RequestsTransport()
        self.stats = stats if stats is not None else Stats()
        self._policy = retry_policy or RetryPolicy()
        self.spool = spool
        self._clock = clock
        self._limits = Limits(
            self.stats,
            allowlist=settings.property_allowlist,
            denylist=settings.property_denylist,
        )
        self._import_headers = self._headers_for_import()
        self._closing = threading.Event()
        self._outage_until = float("-inf")
        self._sleep = sleep
        # While the spool may hold records, new batches queue behind them (in
        # the spool) so that nothing overtakes them: a replayed "$set plan=free"
        # must not land after a newer "$set plan=pro". The replayer clears it.
        self.backlog = spool is not None and spool.status().records > 0
        self.spool_writes = 0

    def deliver(self, messages: Sequence[Message]) -> DeliveryResult:
        """Send *messages* within one deadline; never raises for anything
        Mixpanel or the network does."""
        messages = self._without_unsendable(self._limits.apply(messages))
        batches = make_batches(messages, self._settings.token, self.stats)
        deadline = self._clock() + self._settings.timeout
        results: List[BatchResult] = []
        for batch in batches:
            waiting = self.backlog and self.spool is not None
            if waiting or self._in_outage() or self._closing.is_set():
                # Keep order: nothing may overtake a batch that is waiting.
                result = BatchResult(
                    batch.endpoint, len(batch.records), 0, {},
                    undelivered=tuple(range(len(batch.records))),
                    error="queued behind the spool" if waiting else "Mixpanel unavailable",
                )
            else:
                result = self._send(batch, deadline)
            self._settle(batch, result)
            results.append(result)
        return DeliveryResult(tuple(results))

    def replay(self, endpoint: str, records: List[bytes]) -> List[int]:
        """Send records read back from the spool; the indices still undelivered.

        The spool's ``send`` callback: records are never spooled again from here.
        """
        try:
            target = Endpoint(endpoint)
        except ValueError:
            # Not ours to send (a damaged or foreign header): leave the spool, counted.
            self.stats.dropped("spool_unknown_endpoint", len(records), detail=endpoint[:40])
            return []
        batch = Batch.of_records(target, records)
        if self._in_outage() or self._closing.is_set():
            return list(range(len(records)))
        result = self._send(batch, self._clock() + self._settings.timeout)
        self._account(batch, result)
        if result.undelivered and result.error is not None:
            self._outage_until = self._clock() + self._policy.outage_pause
        return list(result.undelivered)

    def wait_closed(self, timeout: float) -> bool:
        """Sleep up to *timeout* seconds; True as soon as :meth:`close` is called."""
        return self._closing.wait(timeout)

    def close(self) -> None:
        """Interrupt any backoff at once and close the connections."""
        self._closing.set()
        self._transport.close()

    def reopen(self) -> None:
        """Accept work again (a forked child starts from a clean state)."""
        self._closing = threading.Event()
        self._outage_until = float("-inf")

    def _in_outage(self) -> bool:
        return self._clock() < self._outage_until

    @property
    def in_outage(self) -> bool:
        """Whether Mixpanel failed recently and sends are paused."""
        return self._in_outage()

    def _send(self, batch: Batch, deadline: float) -> BatchResult:
        """Attempts until every record is answered, the deadline, or shutdown."""
        pending = list(range(len(batch.records)))
        accepted, retry, status = 0, 0, 0
        rejected: Dict[int, str] = {}
        unknown: List[int] = []
        error: Optional[str] = None
        while pending:
            remaining = deadline - self._clock()
            if remaining <= 0 or self._closing.is_set():
                error = error or "export deadline passed"
                break
            work = batch if len(pending) == len(batch.records) else batch.subset(pending)
            answer = read_response(work, self._post(work, min(remaining, self._settings.timeout)))
            status = answer.status
            if answer.too_large and len(pending) > 1:
                return self._split(batch, pending, deadline, accepted, rejected, unknown)
            accepted += answer.accepted
            rejected.update({pending[i]: reason for i, reason in answer.rejected.items()})
            error = answer.error
            if not answer.retryable:
                # Refused credentials are kept for the spool: fixable, not bad data.
                pending = pending if answer.refused_credentials else []
                break
            if answer.maybe_delivered:
                unsafe = set(self._not_idempotent(work))
                unknown.extend(pending[i] for i in sorted(unsafe))
                pending = [p for i, p in enumerate(pending) if i not in unsafe]
            delay = answer.retry_after
            if delay is None:
                delay = self._policy.backoff(retry)
            if not pending or self._clock() + delay >= deadline:
                break
            self.stats.retried(KIND[batch.endpoint], len(pending))
            retry += 1
            if self._sleep(delay) if self._sleep is not None else self._closing.wait(delay):
                break
        return BatchResult(
            batch.endpoint, len(batch.records), accepted, rejected, tuple(pending), tuple(unknown),
            error, status,
        )

    def _split(
        self,
        batch: Batch,
        pending: List[int],
        deadline: float,
        accepted: int,
        rejected: Dict[int, str],
        unknown: List[int],
    ) -> BatchResult:
        """413: send the halves; only what was never accepted goes again."""
        undelivered: List[int] = []
        error = None
        half = len(pending) // 2
        for part in (pending[:half], pending[half:]):
            result = self._send(batch.subset(part), deadline)
            accepted += result.accepted
            rejected.update({part[i]: reason for i, reason in result.rejected.items()})
            unknown.extend(part[i] for i in result.unknown)
            undelivered.extend(part[i] for i in result.undelivered)
            error = error or result.error
        return BatchResult(
            batch.endpoint, len(batch.records), accepted, rejected, tuple(undelivered),
            tuple(unknown), error, 413,
        )

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
    def _not_idempotent(batch: Batch) -> List[int]:
        """Indices of records that must not be applied twice."""
        if batch.endpoint is not Endpoint.ENGAGE:
            return []
        unsafe = []
        for index, record in enumerate(batch.records):
            update = json.loads(record)
            if NON_IDEMPOTENT_OPERATIONS.intersection(update):
                unsafe.append(index)
        return unsafe

    def _settle(self, batch: Batch, result: BatchResult) -> None:
        self._account(batch, result)
        if not result.undelivered:
            return
        if result.status not in (401, 403) and not self.backlog:
            self._outage_until = self._clock() + self._policy.outage_pause
        records = [batch.records[i] for i in result.undelivered]
        kind = KIND[batch.endpoint]
        if self.spool is None:
            reason = "refused_by_mixpanel" if result.status in (401, 403) else "undelivered"
            self.stats.dropped(reason, len(records), detail=result.error or "")
            return
        try:
            self.spool.write(batch.endpoint.value, records)
        except (OSError, ValueError) as error:
            self.stats.dropped("spool_write_failed", len(records), detail=type(error).__name__)
            return
        self.spool_writes += 1
        self.backlog = True
        self.stats.spooled(kind, len(records), detail=result.error or "")

    def _account(self, batch: Batch, result: BatchResult) -> None:
        if result.accepted:
            self.stats.sent(KIND[batch.endpoint], result.accepted)
        for reason in result.rejected.values():
            # Mixpanel's message may quote the offending value: log the field only.
            field = reason.split(":", 1)[0] if ":" in reason else "record"
            self.stats.dropped("rejected_by_mixpanel", detail=field)
        if result.unknown:
            self.stats.dropped(
                "outcome_unknown", len(result.unknown),
                detail="a request timed out after it was sent; its $add/$append updates are "
                "not resent, so they are applied at most once",
            )
        if result.error is not None and not result.undelivered and not result.unknown:
            answered = result.accepted + len(result.rejected)
            if answered < result.records:
                self.stats.dropped(
                    "refused_by_mixpanel", result.records - answered, detail=result.error
                )

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

    def _without_unsendable(self, messages: List[Message]) -> List[Message]:
        if not self._settings.uses_service_account:
            merges = [m for m in messages if isinstance(m, IdentityEvent) and m.name == "$merge"]
            if merges:
                self.stats.dropped(
                    "merge_needs_service_account", len(merges),
                    detail="Mixpanel accepts $merge only with service-account authentication",
                )
                messages = [m for m in messages if m not in merges]
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
