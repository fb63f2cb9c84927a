"""Scripted faults: the answers the server gives instead of its normal handling."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional


@dataclass
class Fault:
    """What to do to the next ``remaining`` requests matching ``endpoint`` (``None``: any).

    ``status=None`` handles the request normally after ``delay``; ``drop_connection`` closes
    the socket without answering.
    """

    remaining: int
    status: Optional[int]
    body: object
    headers: Dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop_connection: bool = False
    endpoint: Optional[str] = None

    def matches(self, path: str) -> bool:
        """Whether this fault applies to a request for ``path``."""
        return self.endpoint is None or self.endpoint == path


class FaultQueue:
    """Faults in the order they were scripted; not thread-safe (the server's lock guards it)."""

    def __init__(self) -> None:
        self._faults: List[Fault] = []

    def add(self, fault: Fault) -> None:
        """Queue ``fault`` after every fault already scripted."""
        if fault.remaining > 0:
            self._faults.append(fault)

    def take(self, path: str) -> Optional[Fault]:
        """The first queued fault for ``path``, using up one of its requests; ``None`` if none."""
        for position, fault in enumerate(self._faults):
            if fault.matches(path):
                fault.remaining -= 1
                if fault.remaining == 0:
                    del self._faults[position]
                return fault
        return None

    def clear(self) -> None:
        """Forget every scripted fault."""
        self._faults.clear()

    def __len__(self) -> int:
        return sum(fault.remaining for fault in self._faults)
