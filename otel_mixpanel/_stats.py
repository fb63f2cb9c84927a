"""Counting and logging what was sent, changed or dropped: in one place.

Every loss has a reason, a counter and a log line; the log line is rate
limited per reason so a flood of bad input yields one line a minute, not one
per record. Log details name keys, never values: values may be personal data.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Callable, Dict

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
        self._spooled: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()
        self._adjusted: Counter[str] = Counter()
        self._unlogged: Counter[str] = Counter()
        self._last_logged: Dict[str, float] = {}

    def sent(self, kind: str, count: int = 1) -> None:
        """*count* records of *kind* (``event``, ``profile``, ``group``) were accepted."""
        with self._lock:
            self._sent[kind] += count

    def retried(self, kind: str, count: int) -> None:
        """*count* records of *kind* are being sent again after a transient failure."""
        with self._lock:
            self._retried[kind] += count

    def spooled(self, kind: str, count: int, detail: str = "") -> None:
        """*count* records of *kind* were written to the spool, to be sent later."""
        self._record(self._spooled, "spooled", kind, count, detail)

    def dropped(self, reason: str, count: int = 1, detail: str = "") -> None:
        """*count* records (or properties) will never reach Mixpanel, for *reason*."""
        self._record(self._dropped, "dropped", reason, count, detail)

    def adjusted(self, reason: str, count: int = 1, detail: str = "") -> None:
        """A value was changed to fit Mixpanel's rules (cut, coerced), not lost."""
        self._record(self._adjusted, "adjusted", reason, count, detail)

    def _record(
        self, counter: Counter[str], verb: str, reason: str, count: int, detail: str
    ) -> None:
        now = self._clock()
        tag = f"{verb}:{reason}"
        with self._lock:
            counter[reason] += count
            self._unlogged[tag] += count
            last = self._last_logged.get(tag)
            if last is not None and now - last < LOG_INTERVAL:
                return
            self._last_logged[tag] = now
            pending = self._unlogged.pop(tag)
        suffix = f" ({detail})" if detail else ""
        self._logger.warning("Mixpanel: %s %d for reason %s%s", verb, pending, reason, suffix)

    def after_fork(self) -> None:
        """A forked child starts with a free lock (the parent's may have been
        held by another thread at the fork); its counters stay the parent's."""
        self._lock = threading.Lock()

    def snapshot(self) -> Dict[str, Dict[str, int]]:
        """A copy of every counter: ``sent``, ``retried`` and ``spooled`` by kind of
        record, ``dropped`` and ``adjusted`` by reason."""
        with self._lock:
            return {
                "sent": dict(self._sent),
                "retried": dict(self._retried),
                "spooled": dict(self._spooled),
                "dropped": dict(self._dropped),
                "adjusted": dict(self._adjusted),
            }
