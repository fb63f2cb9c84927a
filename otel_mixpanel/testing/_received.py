"""What the server received and accepted, behind one lock, handed out as copies.

Connection threads write here while a test reads, so every read and write goes through
:class:`Received`, which owns the lock, folds profile and group updates into profiles, and
wakes :meth:`Received.wait_until` after every request.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from ._ingest import Outcome
from ._profiles import apply_update
from ._wire import ReceivedRequest, Rejection

# Any, not object: callers index into events and profiles (m.events[0]["properties"]).
Record = Dict[str, Any]


def _copy_json(value: object) -> object:
    """A deep copy of parsed JSON; several times faster than ``copy.deepcopy`` for it."""
    if isinstance(value, dict):
        return {key: _copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_json(item) for item in value]
    return value


def _copy_records(records: List[Record]) -> List[Record]:
    return [{key: _copy_json(value) for key, value in record.items()} for record in records]


class Received:
    """Requests, accepted records, profiles and rejections; every accessor returns a copy.

    ``lock`` is reentrant, so a reader may hold it across several accessors for a consistent
    snapshot (the live view does).
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._changed = threading.Condition(self.lock)
        self._generation = 0
        self._requests: List[ReceivedRequest] = []
        #: Accepted /import records, uncopied: only for readers that must not pay for a copy.
        self.events_list: List[Record] = []
        self._profile_updates: List[Record] = []
        self._group_updates: List[Record] = []
        self._profiles: Dict[str, Record] = {}
        self._groups: Dict[Tuple[str, str], Record] = {}
        self._rejected: List[Rejection] = []

    # Writing (connection threads)

    def record(
        self, request: ReceivedRequest, route_path: str = "", outcome: Optional[Outcome] = None
    ) -> None:
        """Keep ``request``, and apply what ``outcome`` accepted at ``route_path``."""
        with self._changed:
            self._requests.append(request)
            if outcome is not None:
                self._rejected.extend(outcome.rejections)
                if route_path == "/import":
                    self.events_list.extend(outcome.accepted)
                elif route_path == "/engage":
                    self._apply_profile_updates(outcome.accepted)
                elif route_path == "/groups":
                    self._apply_group_updates(outcome.accepted)
            self._generation += 1
            self._changed.notify_all()

    def _apply_profile_updates(self, updates: List[Record]) -> None:
        self._profile_updates.extend(updates)
        for update in updates:
            distinct_id = str(update["$distinct_id"])
            properties = apply_update(self._profiles.get(distinct_id), update)
            if properties is None:
                self._profiles.pop(distinct_id, None)
            else:
                self._profiles[distinct_id] = properties

    def _apply_group_updates(self, updates: List[Record]) -> None:
        self._group_updates.extend(updates)
        for update in updates:
            key = (str(update["$group_key"]), str(update["$group_id"]))
            properties = apply_update(self._groups.get(key), update)
            if properties is None:
                self._groups.pop(key, None)
            else:
                self._groups[key] = properties

    def clear(self) -> None:
        """Forget everything received."""
        with self._changed:
            self._requests.clear()
            self.events_list.clear()
            self._profile_updates.clear()
            self._group_updates.clear()
            self._profiles.clear()
            self._groups.clear()
            self._rejected.clear()
            self._generation += 1
            self._changed.notify_all()

    # Reading (copies)

    def events(self) -> List[Record]:
        """Every accepted ``/import`` record."""
        with self.lock:
            return _copy_records(self.events_list)

    def unique_events(self) -> List[Record]:
        """Accepted events deduplicated by ``(event, distinct_id, time, $insert_id)``."""
        with self.lock:
            seen = set()
            unique = []
            for record in self.events_list:
                properties = record["properties"]
                assert isinstance(properties, dict)
                key = (
                    record["event"],
                    properties["distinct_id"],
                    properties["time"],
                    properties["$insert_id"],
                )
                if key not in seen:
                    seen.add(key)
                    unique.append(record)
            return _copy_records(unique)

    def profile_updates(self) -> List[Record]:
        """Every accepted ``/engage`` update object."""
        with self.lock:
            return _copy_records(self._profile_updates)

    def group_updates(self) -> List[Record]:
        """Every accepted ``/groups`` update object."""
        with self.lock:
            return _copy_records(self._group_updates)

    def profiles(self) -> Dict[str, Record]:
        """User profiles by ``distinct_id``."""
        with self.lock:
            return {key: _copy_records([value])[0] for key, value in self._profiles.items()}

    def groups(self) -> Dict[Tuple[str, str], Record]:
        """Group profiles by ``(group_key, group_id)``."""
        with self.lock:
            return {key: _copy_records([value])[0] for key, value in self._groups.items()}

    def requests(self) -> List[ReceivedRequest]:
        """Every request received (they are frozen: the list is the copy)."""
        with self.lock:
            return list(self._requests)

    def rejected(self) -> List[Rejection]:
        """Every record refused, with the reason."""
        with self.lock:
            return [
                Rejection(item.endpoint, item.index, _copy_json(item.record), item.reason)
                for item in self._rejected
            ]

    def wait_until(self, check: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``check()`` holds, re-checking after every request; its last result.

        ``check`` runs outside the lock, so it may use every accessor.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                generation = self._generation
            if check():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._changed:
                if self._generation == generation:
                    # Bounded, so that predicates over things other than requests still poll.
                    self._changed.wait(min(remaining, 0.1))
