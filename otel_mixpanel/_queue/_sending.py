"""The sending queue: the one place records wait, and the one thread that sends.

Every exporter of a process that sends to the same Mixpanel destination hands
its messages to the same queue (see ``_registry``), so one user's updates go
out in the order they were handed over, whatever the input. Submitting runs
on the caller's thread (limits, encoding); sending runs on the queue's own
thread, one request at a time, oldest records first.

No timer drops data. A record leaves when Mixpanel has answered for it
(accepted, or refused for good with its reason), or when the byte bound evicts
it (counted). While Mixpanel fails, the sender backs off as Mixpanel asks (2 s
doubling to 60 s with jitter, ``Retry-After`` honoured) for as long as it
takes, and each step sends one small probe rather than the whole queue; the
first answer resumes full batches. Shutdown keeps delivering within a budget;
then the disk backend keeps the rest for the next start, and the memory
backend counts it lost, in one log line written before ``close`` returns.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from typing import Any, List, Optional, Sequence, Tuple

from otel_mixpanel._config import Settings
from otel_mixpanel._context import instrumentation_suppressed
from otel_mixpanel._model import Endpoint, Message
from otel_mixpanel._queue._backend import Backend, MemoryBackend, Take
from otel_mixpanel._queue._batch import MAX_BATCH_BYTES, MAX_BATCH_RECORDS
from otel_mixpanel._queue._client import KIND, Client, prepare
from otel_mixpanel._queue._disk import DiskBackend
from otel_mixpanel._queue._limits import Limits
from otel_mixpanel._queue._retry import RetryPolicy
from otel_mixpanel._queue._transport import Transport
from otel_mixpanel._stats import Stats, Tally, records_text

_logger = logging.getLogger("otel_mixpanel")

PROBE_RECORDS = 1  # while Mixpanel fails, each backoff step sends this many records
IDLE_SECONDS = 5.0  # the sender thread ends after this long with nothing to send
LOCK_POLL_SECONDS = 0.05  # another process holds the spool: look again this often
# Records held while Mixpanel answers are sent within moments: deflating them
# would cost CPU for nothing. Past this much waiting (or while failing) it pays.
PACK_AFTER_BYTES = 8 * 1024 * 1024
_QUEUES: weakref.WeakSet[SendingQueue] = weakref.WeakSet()


class SendingQueue:
    """Holds encoded records until Mixpanel answers for them, and sends them.

    Args:
        settings: the destination and the queue's bounds.
        transport: replaces the HTTP client (tests).
        retry_policy: backoff between failed attempts.
        stats: the counters this queue and its submitters share.
        logger: where the totals line goes at close.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        transport: Optional[Transport] = None,
        retry_policy: Optional[RetryPolicy] = None,
        stats: Optional[Stats] = None,
        logger: logging.Logger = _logger,
    ) -> None:
        self.settings = settings
        self.stats = stats if stats is not None else Stats()
        self._logger = logger
        self._policy = retry_policy or RetryPolicy()
        self._client = Client(settings, transport)
        self._limits = Limits(
            self.stats, allowlist=settings.property_allowlist, denylist=settings.property_denylist
        )
        self._backend: Backend
        if settings.spool_dir is not None:
            self._backend = DiskBackend(
                settings.spool_dir, settings.spool_max_bytes,
                on_drop=self.stats.dropped,
                on_unknown_endpoint=lambda endpoint, count: self.stats.dropped(
                    "spool_unknown_endpoint", count, detail=endpoint[:40]
                ),
                on_write_error=lambda name, error: self.stats.warn(
                    "Mixpanel spool: segment %s could not be rewritten (%s); what Mixpanel "
                    "answered is kept out of it in memory, but a restart before the disk "
                    "recovers would send it again", name, error,
                ),
            )
        else:
            self._backend = MemoryBackend(settings.queue_max_bytes, self._evicted)
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._sender: Optional[threading.Thread] = None
        self._failures = 0
        self.stats.watch_waiting(self.waiting)
        self._max_records = MAX_BATCH_RECORDS
        self._closing = False
        self._closed = False
        self._abandoned = False
        self._kick = False  # shutdown asks for one attempt at once
        self._in_flight: Optional[Take] = None
        self._in_flight_until = 0.0  # when the request being sent times out
        self.delivered_all: Optional[bool] = None  # set by close()
        self._deadline = float("inf")
        _QUEUES.add(self)
        with self._cond:
            if self._backend.last_ticket() is not None:
                self._start_sender()  # a spool from an earlier run goes out first

    def _locked(self) -> contextlib.ExitStack:
        """The queue's lock, with the stats' log lines held until it is released."""
        stack = contextlib.ExitStack()
        stack.enter_context(self.stats.deferred())
        stack.enter_context(self._cond)
        return stack

    # Submitting (the exporters' threads)

    def submit(self, messages: Sequence[Message]) -> Optional[Any]:
        """Apply the limits, encode, and queue *messages*; the ticket of the last
        batch queued (for :meth:`wait`), None when nothing was queued."""
        if self._closed:  # not worth the limits and the encoding
            self._refuse_closed(len(messages))
            return None
        return self.submit_encoded(prepare(messages, self._limits, self.settings, self.stats))

    def submit_encoded(self, batches: Sequence[Tuple[Endpoint, List[bytes]]]) -> Optional[Any]:
        """Queue records already limited and encoded (by :func:`prepare`, here or
        in the helper process); the ticket of the last batch, as :meth:`submit`."""
        ticket = None
        with self._locked():
            if self._closed:  # closed while these were encoded: counted, not stranded
                self._refuse_closed(sum(len(records) for _, records in batches))
                return None
            compact = isinstance(self._backend, MemoryBackend) and (
                bool(self._failures) or self._backend.count()[1] > PACK_AFTER_BYTES
            )
            for endpoint, records in batches:
                try:
                    added = self._backend.append(endpoint, records, compact=compact)
                except (OSError, ValueError) as error:
                    self.stats.dropped(
                        "spool_write_failed", len(records), detail=type(error).__name__
                    )
                    continue
                if added is not None:
                    ticket = added
            if ticket is not None:
                self._start_sender()
                self._cond.notify_all()
        self.stats.log_due()
        return ticket

    def wait(self, ticket: Any, timeout: float) -> bool:
        """Wait until every record up to *ticket* is answered: True then; False at
        once while Mixpanel is failing (the records stay queued), or after *timeout*."""
        return self._wait_for(ticket, timeout, through_outage=False)

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued before the call has been answered."""
        with self._cond:
            ticket = self._backend.last_ticket()
        return ticket is None or self._wait_for(ticket, timeout, through_outage=True)

    @property
    def failing(self) -> bool:
        """Whether the last attempt failed and the sender is backing off."""
        return self._failures > 0

    def waiting(self) -> Tuple[int, int]:
        """``(records, bytes)`` waiting in the queue."""
        with self._cond:
            return self._backend.count()

    def _wait_for(self, ticket: Any, timeout: float, *, through_outage: bool) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._backend.answered(ticket):
                if (self._failures and not through_outage) or self._sender is None:
                    return False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                # Bounded: the disk backend can be answered by another process.
                self._cond.wait(min(remaining, 1.0))
        return True

    def _refuse_closed(self, count: int) -> None:
        if count:
            self.stats.dropped(
                "exporter_shut_down", count, detail="export() called after shutdown()"
            )

    def _evicted(self, count: int) -> None:
        self.stats.dropped(
            "sending_queue_full", count,
            detail=f"more than {self.settings.queue_max_bytes} bytes waited for Mixpanel; "
            "raise queue_max_bytes or set spool_dir",
        )

    # Sending (the queue's own thread)

    def _start_sender(self) -> bool:
        """Under the lock: a sender thread, unless one runs. False when none can
        start: from Python 3.12 no thread starts once the interpreter is exiting
        (close() then sends on its own thread)."""
        if self._sender is not None or self._closed:
            return self._sender is not None
        sender = threading.Thread(target=self._run, name="otel-mixpanel-sender", daemon=True)
        try:
            sender.start()
        except RuntimeError:  # "can't create new thread at interpreter shutdown"
            return False
        self._sender = sender
        return True

    def _run(self) -> None:
        # Like the batch processors around export(): our HTTP calls make no spans.
        try:
            with instrumentation_suppressed():
                self._send_all()
        finally:
            with self._cond:
                if self._sender is threading.current_thread():
                    self._sender = None
                self._cond.notify_all()

    def _send_all(self) -> None:
        while True:
            try:
                if not self._send_one():
                    return
            except Exception:  # a bug or the disk: say so, keep the records, go on
                self._logger.exception("Mixpanel sender failed; trying again in 1 s")
                with self._cond:
                    if self._in_flight is not None:  # its lock, if any, goes too
                        self._backend.release(self._in_flight)
                        self._in_flight = None
                if self._pause(1.0):
                    return

    def _send_one(self) -> bool:
        """One request and what follows it; False when the thread should end."""
        with self._locked():
            idle_since = time.monotonic()
            while self._backend.last_ticket() is None:
                if self._closing:
                    return False
                self._max_records = MAX_BATCH_RECORDS
                self._cond.wait(IDLE_SECONDS)
                if time.monotonic() - idle_since >= IDLE_SECONDS and (
                    self._backend.last_ticket() is None
                ):
                    # Under the lock, so a submit from now on starts a new sender.
                    self._sender = None
                    return False
            if self._closed:
                return False
            limit = PROBE_RECORDS if self._failures else self._max_records
            take = self._backend.take(limit, MAX_BATCH_BYTES)
            if take is None:  # another process sends the spool now
                timeout = LOCK_POLL_SECONDS
            else:
                # During shutdown a request may not outlast the budget.
                timeout = self.settings.timeout
                if self._closing:
                    timeout = min(timeout, self._deadline - time.monotonic())
                    if timeout <= 0:
                        self._backend.release(take)
                        return False
                self._in_flight_until = time.monotonic() + timeout
                self._in_flight = take
        if take is None:
            return not self._pause(timeout)
        counts = Tally()  # applied once the answer is settled, under the lock
        outcome = self._client.attempt(take.endpoint, take.records, timeout, counts)
        with self._locked():
            self._in_flight_until = 0.0
            self._in_flight = None
            if self._abandoned:  # shutdown stopped waiting: counted there
                return False
            counts.apply(self.stats)
            self._backend.settle(take, outcome.remaining)
            if outcome.too_large:
                self._max_records = max(1, len(take.records) // 2)
            failures, self._failures = self._failures, self._failures + 1 if outcome.retry else 0
            self._cond.notify_all()
            closed = self._closed
        self.stats.log_due()
        if not outcome.retry:
            if failures:
                self._logger.warning(
                    "Mixpanel answers again after %d failed attempts; %s wait to be sent",
                    failures, records_text(self.waiting()[0]),
                )
            return not closed
        if closed:
            return False
        waiting, _ = self.waiting()
        self.stats.retried(KIND[take.endpoint], len(outcome.remaining))
        delay = outcome.retry_after
        if delay is None:
            delay = self._policy.backoff(self._failures - 1)
        self._warn_failing(outcome.error, outcome.status, delay, waiting)
        return not self._pause(delay, asked=outcome.retry_after is not None)

    def _pause(self, delay: float, *, asked: bool = False) -> bool:
        """Sleep *delay* seconds; True when the sender must stop instead (the
        shutdown budget cannot hold the wait, or it is spent). Shutdown cuts
        our own backoff short for one attempt at once, but not a wait that
        Mixpanel *asked* for (``Retry-After``)."""
        until = time.monotonic() + delay
        while True:
            if self._closed:
                return True
            if self._closing:
                if self._kick and not asked:
                    self._kick = False
                    return False
                if until >= self._deadline:
                    return True
            left = until - time.monotonic()
            if left <= 0:
                return False
            self._wake.wait(left)
            self._wake.clear()

    def _warn_failing(self, error: Optional[str], status: int, delay: float, waiting: int) -> None:
        # The first failures, then every wait of 10 s or more (they grow to a
        # minute): a line a minute at most in a long outage.
        if self._failures <= 2 or delay >= 10 or status in (401, 403):
            self._logger.warning(
                "Mixpanel: attempt %d failed (%s); %s wait in the sending queue, "
                "next try in %.1f s", self._failures, error or f"HTTP {status}",
                records_text(waiting), delay,
            )

    # Closing

    def close(self, budget: float) -> bool:
        """Keep delivering for at most *budget* seconds, then stop: the disk
        backend keeps what is left, the memory backend counts it lost. Writes
        one line with the totals before returning; True when nothing was left."""
        with self._cond:
            if self._closed:
                return True
            self._closing = True
            self._deadline = time.monotonic() + max(0.0, budget)
            # One attempt at once, and the backoff starts again from its first
            # step: after a long outage Mixpanel may be back, and a minute's
            # wait would not fit in the budget.
            self._kick = True
            self._failures = min(self._failures, 1)
            waiting = self._backend.count()[0]
            inline = not self._start_sender() and waiting > 0
            if inline:
                self._sender = threading.current_thread()
            self._cond.notify_all()
        if waiting:
            self._logger.info(
                "Mixpanel exporter shutting down: delivering %s for at most %.1f s",
                records_text(waiting), max(0.0, budget),
            )
        self._wake.set()
        if inline:  # the interpreter is exiting: this thread sends, within the budget
            self._run()
        with self._locked():
            while self._backend.last_ticket() is not None and self._sender is not None:
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 1.0))
            self._closed = True
            sender = self._sender
            in_flight_until = self._in_flight_until
            self._cond.notify_all()
        self._wake.set()
        if sender is not None and sender is not threading.current_thread():
            # A request sent before shutdown began may still be on the wire: its
            # answer is awaited, but never past the budget.
            until = min(in_flight_until, self._deadline)
            sender.join(max(0.0, until - time.monotonic()) + 0.2)
        with self._locked():
            self._abandoned = (
                sender is not None and sender is not threading.current_thread()
                and sender.is_alive()
            )
            if self._abandoned:
                self._forget_unsafe_in_flight()
            left, _ = self._backend.count()
            kept = isinstance(self._backend, DiskBackend)
            if left and not kept:
                self._backend.discard()
                self.stats.dropped("undelivered_at_shutdown", left, log=False)  # in the line below
        self._client.close()
        self.stats.log_totals(self._logger, left if kept else 0, self.settings.spool_dir)
        self.delivered_all = left == 0
        return self.delivered_all

    def _forget_unsafe_in_flight(self) -> None:
        """Under the lock, when shutdown stops waiting for a request Mixpanel may
        still apply: its answer will not be read (nothing is counted twice), and
        with the spool its $add/$append updates are taken out so the next start
        cannot apply them a second time (counted ``outcome_unknown``)."""
        take = self._in_flight
        if take is None or not isinstance(self._backend, DiskBackend):
            return
        unsafe = set(Client.not_idempotent(take.endpoint, take.records))
        self._backend.settle(take, [i for i in range(len(take.records)) if i not in unsafe])
        if unsafe:
            self.stats.dropped("outcome_unknown", len(unsafe), log=False)

    def _after_fork(self) -> None:
        """In a forked child: fresh locks, no sender; the parent's queued records
        stay the parent's to send."""
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._sender = None
        self._failures = 0
        self._in_flight, self._in_flight_until = None, 0.0  # the parent's request
        self._backend.after_fork()
        self.stats.after_fork()


def _after_fork_in_child() -> None:
    for queue in list(_QUEUES):
        queue._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
