"""What Mixpanel receives: events, identity events, profile and group updates.

Messages are small frozen values that know their endpoint and their JSON
form. Nothing here (or below: limits, batches, transport) imports
OpenTelemetry, so the same delivery serves spans, log records and structlog.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Union

# Every event carries these, set only from their own keys (never from a property).
REQUIRED_EVENT_PROPERTIES = ("time", "distinct_id", "$insert_id")


class Endpoint(str, enum.Enum):
    """Mixpanel ingestion endpoints, in the order a batch is sent."""

    IMPORT = "/import"
    ENGAGE = "/engage"
    GROUPS = "/groups"


@dataclass(frozen=True)
class Event:
    """A Mixpanel event; ``properties`` already holds ``time`` (ms),
    ``distinct_id`` and ``$insert_id``."""

    name: str
    properties: Mapping[str, Any]
    endpoint: Endpoint = field(default=Endpoint.IMPORT, init=False, repr=False)

    def payload(self, token: Optional[str]) -> Dict[str, Any]:
        """The record as ``/import`` takes it (authenticated per request, no
        token); it shares the event's properties, so treat it as read-only."""
        properties = self.properties
        return {
            "event": self.name,
            "properties": properties if type(properties) is dict else dict(properties),
        }

    @property
    def insert_id(self) -> str:
        """The deduplication id, for matching Mixpanel's per-record answers."""
        return str(self.properties.get("$insert_id", ""))


@dataclass(frozen=True)
class IdentityEvent(Event):
    """``$identify``, ``$create_alias`` or ``$merge``: sent before ordinary events."""


@dataclass(frozen=True)
class ProfileUpdate:
    """One operation on one user profile (Mixpanel takes one per object)."""

    distinct_id: str
    operation: str
    value: Any
    modifiers: Mapping[str, Any] = field(default_factory=dict)
    endpoint: Endpoint = field(default=Endpoint.ENGAGE, init=False, repr=False)

    def payload(self, token: Optional[str]) -> Dict[str, Any]:
        """The ``/engage`` object, with ``$token`` filled in."""
        body: Dict[str, Any] = {"$token": token, "$distinct_id": self.distinct_id}
        body.update(self.modifiers)
        body[self.operation] = self.value
        return body


@dataclass(frozen=True)
class GroupUpdate:
    """One operation on one group profile."""

    group_key: str
    group_id: str
    operation: str
    value: Any
    endpoint: Endpoint = field(default=Endpoint.GROUPS, init=False, repr=False)

    def payload(self, token: Optional[str]) -> Dict[str, Any]:
        """The ``/groups`` object, with ``$token`` filled in."""
        return {
            "$token": token,
            "$group_key": self.group_key,
            "$group_id": self.group_id,
            self.operation: self.value,
        }


Message = Union[Event, ProfileUpdate, GroupUpdate]
