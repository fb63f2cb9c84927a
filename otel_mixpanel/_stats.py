"""Counting and logging what was sent, changed or dropped: in one place.

Every loss has a reason, a counter and a log line; the log line is rate
limited per reason so a flood of bad input yields one line a minute, not one
per record. Log details name keys, never values: values may be personal data.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

_logger = logging.getLogger(__name__)

LOG_INTERVAL = 60.0


class Stats:
    """Thread-safe counters behind an exporter's ``stats()``."""

    def __init__(
        self,
        logger: logging.Logger = _logger,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._clock = clock
        self._lock = threading.Lock()
        self._sent: Counter[str] = Counter()
        self._retried: Counter[str] = Counter()
        self._waiting: Optional[Callable[[], Tuple[int, int]]] = None
        self._dropped: Counter[str] = Counter()
        self._adjusted: Counter[str] = Counter()
        self._unlogged: Counter[str] = Counter()
        self._local = threading.local()
        self._last_logged: Dict[str, float] = {}

    def sent(self, kind: str, count: int = 1) -> None:
        """*count* records of *kind* (``event``, ``profile``, ``group``) were accepted."""
        with self._lock:
            self._sent[kind] += count

    def retried(self, kind: str, count: int) -> None:
        """*count* records of *kind* are being sent again after a transient failure."""
        with self._lock:
            self._retried[kind] += count

    def watch_waiting(self, waiting: Callable[[], Tuple[int, int]]) -> None:
        """Report ``waiting()`` (records, bytes in the sending queue) in snapshots."""
        self._waiting = waiting

    def dropped(self, reason: str, count: int = 1, detail: str = "", *, log: bool = True) -> None:
        """*count* records (or properties) will never reach Mixpanel, for *reason*
        (``log=False`` when the caller writes its own line right after)."""
        self._record(self._dropped, "dropped", reason, count, detail if log else None)

    def adjusted(self, reason: str, count: int = 1, detail: str = "") -> None:
        """A value was changed to fit Mixpanel's rules (cut, coerced), not lost."""
        self._record(self._adjusted, "adjusted", reason, count, detail)

    def _record(
        self, counter: Counter[str], verb: str, reason: str, count: int, detail: Optional[str]
    ) -> None:
        now = self._clock()
        tag = f"{verb}:{reason}"
        with self._lock:
            counter[reason] += count
            total = counter[reason]
            if detail is None:
                return
            self._unlogged[tag] += count
            last = self._last_logged.get(tag)
            if last is not None and now - last < LOG_INTERVAL:
                return
            self._last_logged[tag] = now
            pending = self._unlogged.pop(tag)
        suffix = f" ({detail})" if detail else ""
        # "since the last line" and the running total: the numbers add up to stats().
        self.warn(
            "Mixpanel: %s %d for reason %s since the last such line, %d in all%s",
            verb, pending, reason, total, suffix,
        )

    def warn(self, message: str, *args: Any) -> None:
        """A warning line, held back inside :meth:`deferred`."""
        held: Optional[List[Tuple[str, Tuple[Any, ...]]]] = getattr(self._local, "held", None)
        if held is not None:
            held.append((message, args))
        else:
            self._logger.warning(message, *args)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold this thread's log lines until the block ends. The sending queue
        counts while it holds its lock, and a line written there could reach a
        logging handler that waits on that lock (an OpenTelemetry handler whose
        exporter is waiting for the queue): a deadlock."""
        if getattr(self._local, "held", None) is not None:
            yield  # nested: the outer block writes them
            return
        self._local.held = []
        try:
            yield
        finally:
            held, self._local.held = self._local.held, None
            for message, args in held:
                self._logger.warning(message, *args)

    def log_due(self) -> None:
        """Write the held-back counts whose minute is over, so that a burst of
        drops followed by silence still reaches the log within about a minute
        (the queue's threads call this as they work; the shutdown line has the rest)."""
        now = self._clock()
        with self._lock:
            if not self._unlogged:
                return
            due = [tag for tag in self._unlogged
                   if now - self._last_logged.get(tag, now) >= LOG_INTERVAL]
            lines = []
            for tag in due:
                verb, reason = tag.split(":", 1)
                counter = self._dropped if verb == "dropped" else self._adjusted
                self._last_logged[tag] = now
                lines.append((verb, self._unlogged.pop(tag), reason, counter[reason]))
        for verb, pending, reason, total in lines:
            self.warn(
                "Mixpanel: %s %d for reason %s since the last such line, %d in all",
                verb, pending, reason, total,
            )

    def log_totals(self, logger: logging.Logger, spooled: int, spool_dir: Optional[str]) -> None:
        """The line a shutdown writes: what was sent, what was dropped since
        start by reason, and how many records wait in *spool_dir*."""
        snapshot = self.snapshot()
        sent = sum(snapshot["sent"].values())
        dropped = snapshot["dropped"]
        where = f"; {records_text(spooled)} wait in {spool_dir} for the next start" \
            if spooled else ""
        if dropped:
            reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(dropped.items()))
            logger.warning(
                "Mixpanel exporter shut down: %s sent; dropped since start: %s%s",
                records_text(sent), reasons, where,
            )
        elif spooled:
            logger.warning("Mixpanel exporter shut down: %s sent%s", records_text(sent), where)
        else:
            logger.info("Mixpanel exporter shut down: %s sent, none lost", records_text(sent))

    def after_fork(self) -> None:
        """A forked child starts with a free lock (the parent's may have been
        held by another thread at the fork); its counters stay the parent's."""
        self._lock = threading.Lock()
        self._local = threading.local()

    def snapshot(self) -> Dict[str, Dict[str, int]]:
        """A copy of every counter: ``sent`` and ``retried`` by kind of record,
        ``dropped`` and ``adjusted`` by reason, and what is ``waiting`` in the
        sending queue now (``records``, ``bytes``)."""
        records, size = self._waiting() if self._waiting is not None else (0, 0)
        with self._lock:
            return {
                "sent": dict(self._sent),
                "retried": dict(self._retried),
                "dropped": dict(self._dropped),
                "adjusted": dict(self._adjusted),
                "waiting": {"records": records, "bytes": size},
            }


# A count kept aside: verb ("sent", "dropped", "adjusted"), reason or kind, how
# many, and the log detail (None: no log line). Plain values: it crosses a pipe.
Call = Tuple[str, str, int, Optional[str]]


class Tally(Stats):
    """Counts kept aside as calls, to be made on the real stats later: when the
    sending queue settles an answer (one that comes after shutdown gave up on it
    is not counted twice), and in the application for what its helper process
    counted."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: List[Call] = []

    def sent(self, kind: str, count: int = 1) -> None:
        self.calls.append(("sent", kind, count, None))

    def dropped(self, reason: str, count: int = 1, detail: str = "", *, log: bool = True) -> None:
        self.calls.append(("dropped", reason, count, detail if log else None))

    def adjusted(self, reason: str, count: int = 1, detail: str = "") -> None:
        self.calls.append(("adjusted", reason, count, detail))

    def apply(self, stats: Stats) -> None:
        """Make the calls on *stats*, with the log lines they would have written."""
        apply(self.calls, stats)


def apply(calls: List[Call], stats: Stats) -> None:
    """Make the kept *calls* (of a :class:`Tally`, here or in another process) on *stats*."""
    for verb, name, count, detail in calls:
        if verb == "sent":
            stats.sent(name, count)
        elif verb == "dropped":
            stats.dropped(name, count, detail or "", log=detail is not None)
        else:
            stats.adjusted(name, count, detail or "")


def records_text(count: int) -> str:
    """``1 record``, ``2 records``."""
    return f"{count} record" if count == 1 else f"{count} records"
