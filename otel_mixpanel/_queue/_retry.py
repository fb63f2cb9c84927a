"""When to try again: Mixpanel's backoff guidance and ``Retry-After``.

Mixpanel asks clients to back off exponentially from 2 s, doubling to at most
60 s, with 1-5 s of random jitter; a ``Retry-After`` header, when one comes,
replaces the computed delay (as in the OTLP exporter).
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Tuple

__all__ = ["RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff between failed attempts; the sending queue retries for as long as
    it takes (no timer drops records).

    The defaults follow Mixpanel's guidance. Tests use short ones, e.g.
    ``RetryPolicy(initial=0.01, maximum=0.05, jitter=(0, 0))``.

    Args:
        initial: seconds before the first retry.
        maximum: cap of the doubling delay.
        jitter: a random number of seconds in this range is added to each delay.
    """

    initial: float = 2.0
    maximum: float = 60.0
    jitter: Tuple[float, float] = (1.0, 5.0)

    def backoff(self, retry: int, rand: Callable[[float, float], float] = random.uniform) -> float:
        """Seconds to wait before retry number *retry* (0 for the first)."""
        delay = min(self.initial * (2.0**retry), self.maximum)
        low, high = self.jitter
        return delay + (rand(low, high) if high > 0 else 0.0)


def retry_after(headers: Mapping[str, str], now: Optional[float] = None) -> Optional[float]:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
