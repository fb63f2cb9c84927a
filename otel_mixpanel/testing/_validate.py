"""Mixpanel's per-record validation rules, as pure functions that explain a refusal.

Each function returns ``None`` for a record Mixpanel would take, or the reason it would refuse
it. The rules follow Mixpanel's documented limits (see the module docstring of
``otel_mixpanel.testing``); they are deliberately independent of the exporter's own code.
"""

from __future__ import annotations

import json
import re
from typing import Dict, Mapping, NamedTuple, Optional

#: Values Mixpanel refuses as a ``distinct_id``, compared case-insensitively.
DENYLISTED_DISTINCT_IDS = frozenset(
    {
        "00000000-0000-0000-0000-000000000000",
        "anon",
        "anonymous",
        "nil",
        "none",
        "null",
        "n/a",
        "na",
        "undefined",
        "unknown",
        "<nil>",
        "0",
        "-1",
        "true",
        "false",
        "[]",
        "{}",
    }
)

#: 1971-01-01T00:00:00Z: Mixpanel's ``/import`` takes nothing older.
EARLIEST_EVENT_TIME_SECONDS = 31_536_000
#: How far in the future an event time may lie.
MAX_FUTURE_SECONDS = 3600
#: Times above this are read as milliseconds (1e11 seconds is the year 5138).
MILLISECONDS_THRESHOLD = 100_000_000_000
#: "Fewer than 255" for properties per event and items per list.
MAX_PROPERTIES = 255
MAX_LIST_ITEMS = 255
#: "At most 255" characters for string values and property names.
MAX_STRING_LENGTH = 255
MAX_PROPERTY_NAME_LENGTH = 255
#: One event, or one profile update, must stay under 1 MB of JSON.
MAX_RECORD_BYTES = 1024 * 1024

PROFILE_OPERATIONS = (
    "$set",
    "$set_once",
    "$add",
    "$append",
    "$union",
    "$remove",
    "$unset",
    "$delete",
)
PROFILE_MODIFIERS = ("$ip", "$ignore_time", "$time", "$ignore_alias")
IDENTITY_KEYS: Dict[str, tuple[str, ...]] = {
    "/engage": ("$distinct_id",),
    "/groups": ("$group_key", "$group_id"),
}

_INSERT_ID = re.compile(r"[A-Za-z0-9-]{1,36}")


class Invalid(NamedTuple):
    """Why one ``/import`` record was refused: the offending field and Mixpanel-style message."""

    field: str
    message: str


def json_size(value: object) -> int:
    """Bytes of ``value`` as compact UTF-8 JSON, the size Mixpanel's per-record limits measure."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def is_integer(value: object) -> bool:
    """True for JSON integers; ``bool`` is an ``int`` subclass in Python but not in JSON."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """True for JSON numbers (integers or floats), never for booleans."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def event_problem(record: object, *, service_account: bool, now: float) -> Optional[Invalid]:
    """The first reason ``/import`` would refuse ``record``, or ``None`` if it is valid.

    ``service_account`` says whether the request authenticated with a service account (only
    those may send ``$merge``); ``now`` is the current time in seconds since the epoch, passed
    in so that the rule stays a pure function.

    >>> event_problem({"event": "", "properties": {}}, service_account=False, now=0.0)
    Invalid(field='event', message="'event' must be a non-empty string")
    """
    if not isinstance(record, dict):
        return Invalid("", "record must be a JSON object")
    unexpected = sorted(set(record) - {"event", "properties"})
    if unexpected:
        return Invalid(unexpected[0], f"unexpected key {unexpected[0]!r} in record")
    event = record.get("event")
    if not isinstance(event, str) or not event:
        return Invalid("event", "'event' must be a non-empty string")
    properties = record.get("properties")
    if not isinstance(properties, dict):
        return Invalid("properties", "'properties' must be a JSON object")
    return (
        _time_problem(properties.get("time"), now)
        or _distinct_id_problem(properties)
        or _insert_id_problem(properties)
        or _merge_problem(event, service_account)
        or _properties_problem(properties)
        or _size_problem(record)
    )


def _time_problem(time: object, now: float) -> Optional[Invalid]:
    field = "properties.time"
    if not is_integer(time):
        return Invalid(
            field,
            "'properties.time' is invalid: must be an integer number of seconds or "
            "milliseconds since epoch",
        )
    assert isinstance(time, int)
    seconds = time / 1000 if time > MILLISECONDS_THRESHOLD else float(time)
    if seconds < EARLIEST_EVENT_TIME_SECONDS:
        return Invalid(field, "'properties.time' is invalid: must be after 1971-01-01")
    if seconds > now + MAX_FUTURE_SECONDS:
        return Invalid(
            field, "'properties.time' is invalid: must not be more than 1 hour in the future"
        )
    return None


def _distinct_id_problem(properties: Mapping[str, object]) -> Optional[Invalid]:
    field = "properties.distinct_id"
    if "distinct_id" not in properties:
        return Invalid(field, "'properties.distinct_id' is required")
    distinct_id = properties["distinct_id"]
    if not isinstance(distinct_id, str):
        return Invalid(field, "'properties.distinct_id' is invalid: must be a string")
    if distinct_id.lower() in DENYLISTED_DISTINCT_IDS:
        return Invalid(
            field, f"'properties.distinct_id' is invalid: {distinct_id!r} is a denylisted value"
        )
    return None


def _insert_id_problem(properties: Mapping[str, object]) -> Optional[Invalid]:
    field = "properties.$insert_id"
    insert_id = properties.get("$insert_id")
    if not isinstance(insert_id, str):
        return Invalid(field, "'properties.$insert_id' is required and must be a string")
    if not _INSERT_ID.fullmatch(insert_id):
        return Invalid(
            field, "'properties.$insert_id' is invalid: must be 1-36 characters of [A-Za-z0-9-]"
        )
    return None


def _merge_problem(event: str, service_account: bool) -> Optional[Invalid]:
    if event == "$merge" and not service_account:
        return Invalid("event", "'$merge' events require service account authentication")
    return None


def _properties_problem(properties: Mapping[str, object]) -> Optional[Invalid]:
    if len(properties) >= MAX_PROPERTIES:
        return Invalid(
            "properties",
            f"'properties' has {len(properties)} properties: must have fewer than {MAX_PROPERTIES}",
        )
    for name, value in properties.items():
        field = f"properties.{name}"
        if len(name) > MAX_PROPERTY_NAME_LENGTH:
            return Invalid(
                field, f"property name is longer than {MAX_PROPERTY_NAME_LENGTH} characters"
            )
        if isinstance(value, str) and len(value) > MAX_STRING_LENGTH:
            return Invalid(
                field, f"'{field}' is invalid: string longer than {MAX_STRING_LENGTH} characters"
            )
        if isinstance(value, list):
            if len(value) >= MAX_LIST_ITEMS:
                return Invalid(
                    field, f"'{field}' is invalid: list must have fewer than {MAX_LIST_ITEMS} items"
                )
            if any(isinstance(item, str) and len(item) > MAX_STRING_LENGTH for item in value):
                return Invalid(
                    field,
                    f"'{field}' is invalid: list item longer than {MAX_STRING_LENGTH} characters",
                )
    return None


def _size_problem(record: Mapping[str, object]) -> Optional[Invalid]:
    if json_size(record) >= MAX_RECORD_BYTES:
        return Invalid("", f"record is not under the limit of {MAX_RECORD_BYTES} bytes")
    return None


def update_problem(update: object, *, endpoint: str, token: str) -> Optional[str]:
    """The first reason ``/engage`` or ``/groups`` would refuse ``update``, or ``None``.

    ``endpoint`` is ``"/engage"`` (user profiles, keyed by ``$distinct_id``) or ``"/groups"``
    (group profiles, keyed by ``$group_key`` and ``$group_id``); ``token`` is the project token
    every update must carry as ``$token``.

    >>> update_problem({"$token": "t", "$distinct_id": "u1", "$set": {"plan": "pro"}},
    ...                endpoint="/engage", token="t") is None
    True
    """
    if not isinstance(update, dict):
        return "update must be a JSON object"
    if update.get("$token") != token:
        return "invalid token"
    identity_keys = IDENTITY_KEYS[endpoint]
    for key in identity_keys:
        value = update.get(key)
        if not isinstance(value, str) or not value:
            return f"{key!r} is required and must be a non-empty string"
    allowed = {"$token", *identity_keys, *PROFILE_OPERATIONS, *PROFILE_MODIFIERS}
    unexpected = sorted(set(update) - allowed)
    if unexpected:
        return f"unexpected key {unexpected[0]!r}"
    operations = [key for key in PROFILE_OPERATIONS if key in update]
    if len(operations) != 1:
        found = ", ".join(operations) or "none"
        return f"exactly one operation is required (found: {found})"
    operation = operations[0]
    return (
        _operation_value_problem(operation, update[operation])
        or _modifier_problem(update)
        or (
            f"update is not under the limit of {MAX_RECORD_BYTES} bytes"
            if json_size(update) >= MAX_RECORD_BYTES
            else None
        )
    )


def _operation_value_problem(operation: str, value: object) -> Optional[str]:
    if operation == "$delete":
        return None if value in ("", None) else "'$delete' must be \"\" or null"
    if operation == "$unset":
        if isinstance(value, list) and all(isinstance(name, str) for name in value):
            return None
        return "'$unset' must be a list of property names"
    if not isinstance(value, dict):
        return f"{operation!r} must be a JSON object"
    if operation == "$add":
        for name, amount in value.items():
            if not is_number(amount):
                return f"'$add' value for {name!r} must be a number"
    if operation == "$union":
        for name, items in value.items():
            if not isinstance(items, list):
                return f"'$union' value for {name!r} must be a list"
    return None


def _modifier_problem(update: Mapping[str, object]) -> Optional[str]:
    if "$ip" in update and not isinstance(update["$ip"], str):
        return "'$ip' must be a string"
    for flag in ("$ignore_time", "$ignore_alias"):
        if flag in update and not isinstance(update[flag], bool):
            return f"{flag!r} must be true or false"
    if "$time" in update and not is_number(update["$time"]):
        return "'$time' must be a number"
    return None
