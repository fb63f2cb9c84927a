"""Scripted faults: the answers the server gives instead of its normal handling.

Kept apart from the serving of requests so that *when* a fault applies (the next ``count``
requests, or every request during a time window) is decided in one place, and *what* it does
(:meth:`Fault.answer`) in another, whichever way it was scripted.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Union

from ._http import Hangup, Reply
from ._ingest import default_fault_body


@dataclass(frozen=True)
class Fault:
    """What to do to a request matching ``endpoint`` (``None``: any).

    ``status=None`` handles the request normally after ``delay``; ``drop_connection`` closes
    the socket without answering, ``reset_connection`` does so with a TCP RST.
    """

    status: Optional[int]
    body: object
    headers: Dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop_connection: bool = False
    reset_connection: bool = False
    endpoint: Optional[str] = None

    def matches(self, path: str) -> bool:
        """Whether this fault applies to a request for ``path``."""
        return self.endpoint is None or self.endpoint == path

    def answer(self, max_bytes: int) -> Union[Reply, Hangup, None]:
        """What to answer once the delay is over; ``None``: handle the request normally.

        Without a ``body`` of its own, a status is answered with Mixpanel's body for it (the
        413 body names ``max_bytes``).
        """
        if self.drop_connection or self.reset_connection:
            return Hangup(reset=self.reset_connection)
        if self.status is None:
            return None
        body = self.body
        if body is None:
            body = default_fault_body(self.status, max_bytes)
        return Reply(self.status, body, self.headers)


@dataclass
class _Counted:
    """A fault for the next ``remaining`` matching requests."""

    fault: Fault
    remaining: int


@dataclass(frozen=True)
class _Window:
    """A fault for every matching request until ``until`` (on the script's clock)."""

    fault: Fault
    until: float


class FaultScript:
    """Every scripted fault: count-based ones in the order scripted, then time windows.

    Thread-safe: connection threads take faults while the test scripts more.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._counted: List[_Counted] = []
        self._windows: List[_Window] = []

    def add_count(self, fault: Fault, count: int) -> None:
        """Apply ``fault`` to the next ``count`` matching requests, after every fault queued."""
        if count > 0:
            with self._lock:
                self._counted.append(_Counted(fault, count))

    def add_window(self, fault: Fault, seconds: float) -> None:
        """Apply ``fault`` to every matching request for ``seconds`` from now."""
        if seconds > 0:
            until = self._clock() + seconds
            with self._lock:
                self._windows.append(_Window(fault, until))

    def take(self, path: str) -> Optional[Fault]:
        """The fault for a request for ``path`` arriving now; ``None`` if none applies.

        The first queued count-based fault that matches wins, and is used up by one request;
        failing that, the most recently scripted window that is open and matches.
        """
        with self._lock:
            for position, counted in enumerate(self._counted):
                if counted.fault.matches(path):
                    counted.remaining -= 1
                    if counted.remaining == 0:
                        del self._counted[position]
                    return counted.fault
            if self._windows:
                now = self._clock()
                self._windows = [window for window in self._windows if window.until > now]
                for window in reversed(self._windows):
                    if window.fault.matches(path):
                        return window.fault
        return None

    def clear(self) -> None:
        """Forget every scripted fault, count-based and windows."""
        with self._lock:
            self._counted.clear()
            self._windows.clear()

    def pending(self) -> int:
        """How many requests the count-based faults have yet to affect (windows not counted)."""
        with self._lock:
            return sum(counted.remaining for counted in self._counted)
