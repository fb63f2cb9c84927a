"""Mixpanel's client-side rules, applied to messages before they are encoded.

A bad property never costs its event: it is cut, coerced or dropped alone,
and every change is counted with its reason in :class:`Stats`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional

from otel_mixpanel._model import (
    REQUIRED_EVENT_PROPERTIES,
    Event,
    GroupUpdate,
    IdentityEvent,
    Message,
    ProfileUpdate,
)
from otel_mixpanel._stats import Stats

MAX_PROPERTIES = 254  # "fewer than 255"
MAX_NAME_LENGTH = 255
MAX_STRING_LENGTH = 255
MAX_ITEMS = 254
MAX_DEPTH = 3
MAX_EVENT_COLLECTION_BYTES = 8 * 1024
MAX_PROFILE_COLLECTION_BYTES = 256 * 1024
FUTURE_TOLERANCE_MS = 3_600_000
# Mixpanel reads a time up to 1e11 as seconds: 1971-01-01 to 1973-03-03 in
# milliseconds would land in the year 2969, so those times are sent in seconds.
SECONDS_BELOW = 100_000_000_000
# Room for collection properties in one record, under Mixpanel's 1 MB per
# event or update (strings and names take at most ~330 kB besides).
MAX_COLLECTIONS_BYTES = 600_000
MAX_SAFE_INTEGER = 2**53
EARLIEST_MS = 31_536_000_000  # 1971-01-01, Mixpanel's lower bound for event time

# Mixpanel rejects these as distinct_id (compared case-insensitively).
DENYLISTED_DISTINCT_IDS = frozenset(
    {
        "00000000-0000-0000-0000-000000000000", "anon", "anonymous", "nil", "none",
        "null", "n/a", "na", "undefined", "unknown", "<nil>", "0", "-1", "true",
        "false", "[]", "{}",
    }
)

_DROP = object()


def is_denylisted(distinct_id: str) -> bool:
    """Whether Mixpanel refuses *distinct_id* (``""`` is allowed)."""
    return distinct_id.strip().lower() in DENYLISTED_DISTINCT_IDS


class Limits:
    """Applies the rules; ``clock`` returns seconds since the epoch."""

    def __init__(
        self,
        stats: Stats,
        clock: Callable[[], float] = time.time,
        *,
        allowlist: Optional[FrozenSet[str]] = None,
        denylist: FrozenSet[str] = frozenset(),
    ) -> None:
        self._stats = stats
        self._clock = clock
        self._allowlist = allowlist
        self._denylist = denylist
        self._filtered = allowlist is not None or bool(denylist)

    def apply(self, messages: Sequence[Message]) -> List[Message]:
        """The messages that can be sent, each within Mixpanel's limits."""
        now_ms = int(self._clock() * 1000)
        kept: List[Message] = []
        for message in messages:
            limited: Optional[Message]
            if isinstance(message, Event):
                limited = self._event(message, now_ms)
            elif isinstance(message, ProfileUpdate):
                limited = self._profile(message)
            else:
                limited = self._group(message)
            if limited is not None:
                kept.append(limited)
        return kept

    def _event(self, event: Event, now_ms: int) -> Optional[Event]:
        # Most events need no change at all: then they pass as they are.
        time_ms = event.properties.get("time")
        if (
            type(time_ms) is int
            and SECONDS_BELOW < time_ms <= now_ms + FUTURE_TOLERANCE_MS
            and len(event.name) <= 63
            and self._unchanged(event.properties, MAX_PROPERTIES)
            and not is_denylisted(str(event.properties.get("distinct_id", "")))
        ):
            return event
        properties = self._properties(event.properties, MAX_EVENT_COLLECTION_BYTES, time=False)
        name = event.name if len(event.name) <= 63 else self._string(event.name)
        distinct_id = str(properties.get("distinct_id", ""))
        if is_denylisted(distinct_id):
            if isinstance(event, IdentityEvent):
                self._stats.dropped("denylisted_distinct_id", detail=event.name)
                return None
            # Mixpanel would refuse the event; anonymous keeps it countable.
            self._stats.adjusted("denylisted_distinct_id")
            properties["distinct_id"] = ""
        # From the translated record: the generic rules above would turn a
        # far-future integer into a float before it could be clamped.
        time_ms = event.properties.get("time")
        if not isinstance(time_ms, int) or time_ms < EARLIEST_MS:
            self._stats.dropped("time_before_1971", detail=event.name)
            return None
        if time_ms > now_ms + FUTURE_TOLERANCE_MS:
            self._stats.adjusted("time_in_future")
            properties["time"] = now_ms
        elif time_ms <= SECONDS_BELOW:
            self._stats.adjusted("time_sent_in_seconds")
            properties["time"] = time_ms // 1000
        else:
            properties["time"] = time_ms
        # type(event)(...), not dataclasses.replace: same value, a third of the cost.
        return type(event)(name, properties)

    def _profile(self, update: ProfileUpdate) -> Optional[ProfileUpdate]:
        if is_denylisted(update.distinct_id):
            self._stats.dropped("denylisted_distinct_id", detail=update.operation)
            return None
        value = self._operation_value(update.value)
        if value is _DROP:
            return None
        # Cut like the event's distinct_id, so both address the same user.
        distinct_id = self._value(update.distinct_id, 0, "$distinct_id")
        return dataclasses.replace(update, distinct_id=distinct_id, value=value)

    def _group(self, update: GroupUpdate) -> Optional[GroupUpdate]:
        value = self._operation_value(update.value)
        if value is _DROP:
            return None
        return dataclasses.replace(
            update, group_key=self._value(update.group_key, 0, "$group_key"),
            group_id=self._value(update.group_id, 0, "$group_id"), value=value,
        )

    def _operation_value(self, value: Any) -> Any:
        if isinstance(value, Mapping):
            cleaned = self._properties(value, MAX_PROFILE_COLLECTION_BYTES)
            if not cleaned:
                self._stats.dropped("empty_update")
                return _DROP
            return cleaned
        if isinstance(value, list):  # $unset: names
            return [self._string(name) for name in value[:MAX_ITEMS]]
        return value

    def _properties(
        self, properties: Mapping[str, Any], collection_bytes: int, *, time: bool = True
    ) -> Dict[str, Any]:
        """The properties within limits; ``time=False`` leaves an event's time to
        its own rules."""
        # One check of them all, then a copy: a third of the cost of the loop below.
        allowed = MAX_PROPERTIES if time else MAX_PROPERTIES - 1
        if self._unchanged(properties, allowed):
            cleaned = dict(properties)
            if not time:
                cleaned.pop("time", None)
            return cleaned
        cleaned = {}
        collections_left = MAX_COLLECTIONS_BYTES
        for raw_name, raw_value in properties.items():
            name = raw_name if isinstance(raw_name, str) else str(raw_name)
            if not time and name == "time":
                continue
            if self._filtered and not self._permitted(name):
                self._stats.dropped("property_not_allowed", detail=name[:40])
                continue
            if len(name) > MAX_NAME_LENGTH:
                self._stats.dropped("property_name_too_long", detail=name[:40])
                continue
            value = self._value(raw_value, 0, name)
            if value is _DROP:
                continue
            if isinstance(value, (list, dict)):
                size = _encoded_size(value)
                if size > collection_bytes:
                    self._stats.dropped("collection_too_large", detail=name)
                    continue
                if size > collections_left:
                    self._stats.dropped("record_size_limit", detail=name)
                    continue
                collections_left -= size
            cleaned[name] = value
        # An event's time is added back afterwards: keep its place.
        if len(cleaned) > allowed:
            cleaned = self._fewer_properties(cleaned, allowed)
        return cleaned

    def _unchanged(self, properties: Mapping[Any, Any], allowed: int) -> bool:
        """Whether the rules would keep *properties* exactly as they are: an
        allowed number of short str names and plain values, nothing filtered."""
        return (
            len(properties) <= allowed
            and not self._filtered
            and _short_names(properties)
            and _plain_values(properties.values())
        )

    def _permitted(self, name: str) -> bool:
        """The data-minimisation lists; the required properties always pass."""
        if name in REQUIRED_EVENT_PROPERTIES:
            return True
        if name in self._denylist:
            return False
        return self._allowlist is None or name in self._allowlist

    def _fewer_properties(self, properties: Dict[str, Any], allowed: int) -> Dict[str, Any]:
        required = {k: properties[k] for k in REQUIRED_EVENT_PROPERTIES if k in properties}
        room = allowed - len(required)
        kept: Dict[str, Any] = {}
        for name, value in properties.items():
            if name not in required:
                if len(kept) == room:
                    break
                kept[name] = value
        self._stats.dropped("too_many_properties", len(properties) - room - len(required))
        kept.update(required)
        return kept

    def _value(self, value: Any, depth: int, name: str) -> Any:
        kind = type(value)
        if kind is str:
            # Up to 63 characters cannot pass 255 bytes; longer ones are measured.
            if len(value) <= 63:
                return value
            return self._string(value)
        if value is None or kind is bool:
            return value
        if kind is int:
            if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
                return value
            return self._big_integer(value, name)
        if kind is float:
            if math.isfinite(value):
                return value
            self._stats.dropped("non_finite_number", detail=name)
            return _DROP
        return self._other_value(value, depth, name)

    def _big_integer(self, value: int, name: str) -> Any:
        """Mixpanel stores numbers as doubles: a larger int becomes a float."""
        try:
            number = float(value)
        except OverflowError:
            self._stats.dropped("number_too_large", detail=name)
            return _DROP
        self._stats.adjusted("integer_as_float", detail=name)
        return number

    def _other_value(self, value: Any, depth: int, name: str) -> Any:
        if isinstance(value, enum.Enum):
            value = value.value
            return self._value(value, depth, name)
        if isinstance(value, (bytes, bytearray, memoryview)):
            self._stats.adjusted("bytes_decoded", detail=name)
            return self._string(bytes(value).decode("utf-8", "replace"))
        if isinstance(value, (str, bool, int, float)):  # subclasses
            return self._value(_plain(value), depth, name)
        if isinstance(value, (dt.datetime, dt.date, dt.time)):
            return value.isoformat()[:MAX_STRING_LENGTH]
        if isinstance(value, decimal.Decimal):
            return self._value(float(value), depth, name)
        if isinstance(value, uuid.UUID):
            return str(value)
        if isinstance(value, Mapping):
            return self._mapping(value, depth, name)
        if isinstance(value, (list, tuple, set, frozenset)):
            return self._sequence(value, depth, name)
        self._stats.dropped("unsupported_type", detail=f"{name}: {type(value).__name__}")
        return _DROP

    def _mapping(self, value: Mapping[Any, Any], depth: int, name: str) -> Any:
        if depth >= MAX_DEPTH:
            self._stats.dropped("nested_too_deep", detail=name)
            return _DROP
        cleaned: Dict[str, Any] = {}
        for inner, raw in value.items():
            if len(cleaned) == MAX_PROPERTIES:
                self._stats.dropped("too_many_keys", detail=name)
                break
            inner_value = self._value(raw, depth + 1, name)
            if inner_value is not _DROP:
                cleaned[str(inner)[:MAX_NAME_LENGTH]] = inner_value
        return cleaned

    def _sequence(self, value: Any, depth: int, name: str) -> Any:
        if depth >= MAX_DEPTH:
            self._stats.dropped("nested_too_deep", detail=name)
            return _DROP
        items = list(value)
        if len(items) > MAX_ITEMS:
            self._stats.adjusted("list_truncated", detail=name)
            items = items[:MAX_ITEMS]
        cleaned = [self._value(item, depth + 1, name) for item in items]
        return [item for item in cleaned if item is not _DROP]

    def _string(self, value: Any) -> str:
        """At most 255 characters and 255 UTF-8 bytes: Mixpanel's pages disagree
        on which, so both hold."""
        text = str(value)
        if len(text) <= MAX_STRING_LENGTH and (
            len(text) <= 63 or len(text.encode("utf-8", "surrogatepass")) <= MAX_STRING_LENGTH
        ):
            return text
        self._stats.adjusted("string_truncated")
        text = text[:MAX_STRING_LENGTH]
        encoded = text.encode("utf-8", "surrogatepass")
        if len(encoded) > MAX_STRING_LENGTH:
            text = encoded[:MAX_STRING_LENGTH].decode("utf-8", "ignore")
        return text


def _short_names(properties: Mapping[Any, Any]) -> bool:
    """Whether every name is a str within the length limit. Both checks run
    in C: the join fails on a name that is not a str, and its length settles
    the usual case (a few dozen names) without measuring each."""
    try:
        joined = "".join(properties)
    except TypeError:
        return False
    return len(joined) <= MAX_NAME_LENGTH or max(map(len, properties)) <= MAX_NAME_LENGTH


def _plain_values(values: Iterable[Any]) -> bool:
    """Whether every value passes unchanged: a str too short to reach 255
    bytes, a safe int, a finite float, a bool or None (the cases of _value
    that return the value itself)."""
    for value in values:
        kind = type(value)
        if kind is str:
            if len(value) > 63:
                return False
        elif kind is int:
            if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
                return False
        elif kind is float:
            if not -math.inf < value < math.inf:
                return False
        elif value is not None and kind is not bool:
            return False
    return True


def _plain(value: Any) -> Any:
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    return value


def _encoded_size(value: Any) -> int:
    try:
        return len(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str))
    except ValueError:  # e.g. an int too long to print: no room for it
        return MAX_PROFILE_COLLECTION_BYTES + 1

