"""Profile and group updates from parsed tags, and the small value readers
they share with the event translation.

Part of translation (see ``_translate``): pure, no I/O, no OpenTelemetry.
Each operation becomes its own update, since Mixpanel takes one per object.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Tuple

from otel_mixpanel._convention import _table as c
from otel_mixpanel._model import GroupUpdate, Message, ProfileUpdate
from otel_mixpanel._stats import Stats

# The fields without which each builder produces nothing.
PROFILE_FIELDS = frozenset(
    {*c.PEOPLE_OPERATIONS, c.PEOPLE_UNSET, c.PEOPLE_DELETE, c.CHARGE, c.CHARGE_AMOUNT,
     c.CLEAR_CHARGES}
)
GROUP_FIELDS = frozenset({*c.GROUP_OPERATIONS, c.GROUP_UNSET, c.GROUP_DELETE})


def text(value: Any) -> Optional[str]:
    """An identifier as Mixpanel wants it: str, or an int spelled out."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return str(value)
        except ValueError:  # past Python's digit limit: no one's id
            return None
    return None


def flag(value: Any) -> bool:
    """A "true" flag: True, 1, or the string "true" (log attributes may be strings)."""
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return value is True or (type(value) is int and value == 1)


def mapping_of(value: Any) -> Dict[str, Any]:
    """A keyed field's mapping as a fresh dict ({} when absent or not a mapping)."""
    if value is None:  # the common case: the key is absent (skips the ABC check)
        return {}
    return dict(value) if isinstance(value, Mapping) else {}


def is_sequence(value: Any) -> bool:
    """Whether *value* is a list-like of values, not a string or bytes."""
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _names(value: Any) -> List[str]:
    if isinstance(value, str):
        return [value]
    if is_sequence(value):
        return [item for item in value if isinstance(item, str)]
    return []


def _keyed_operations(
    fields: Dict[str, Any], table: Mapping[str, str], stats: Stats
) -> List[Tuple[str, Any]]:
    """The ``$set``-like operations present, each with its name → value mapping."""
    operations: List[Tuple[str, Any]] = []
    for field_name, operation in table.items():
        raw = fields.get(field_name)
        if raw is None:
            continue
        values = mapping_of(raw)
        if operation == "$add":
            values = _numbers_only(values, stats)
        elif operation == "$union":
            values = {k: list(v) if is_sequence(v) else [v] for k, v in values.items()}
        if values:
            operations.append((operation, values))
    return operations


def profile_updates(
    fields: Dict[str, Any], distinct_id: str, time_ms: int, stats: Stats
) -> List[Message]:
    """The /engage updates a record's tags ask for, one operation each."""
    operations = _keyed_operations(fields, c.PEOPLE_OPERATIONS, stats)
    unset = _names(fields.get(c.PEOPLE_UNSET))
    if unset:
        operations.append(("$unset", unset))
    if flag(fields.get(c.CLEAR_CHARGES)):
        operations.append(("$unset", ["$transactions"]))
    charge = _charge(fields, time_ms, stats)
    if charge is not None:
        operations.append(("$append", {"$transactions": charge}))
    if flag(fields.get(c.PEOPLE_DELETE)):
        operations.append(("$delete", ""))
    if not operations:
        return []
    if not distinct_id:
        stats.dropped("profile_without_distinct_id", len(operations))
        return []
    modifiers: Dict[str, Any] = {"$ip": text(fields.get(c.IP)) or "0"}
    if flag(fields.get(c.IGNORE_TIME)):
        modifiers["$ignore_time"] = True
    return [ProfileUpdate(distinct_id, op, value, modifiers) for op, value in operations]


def _numbers_only(values: Dict[str, Any], stats: Stats) -> Dict[str, Any]:
    numbers = {}
    for name, value in values.items():
        if _is_number(value):
            numbers[name] = value
        else:
            stats.dropped("add_not_a_number", detail=name)
    return numbers


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _charge(fields: Dict[str, Any], time_ms: int, stats: Stats) -> Optional[Dict[str, Any]]:
    extras = mapping_of(fields.get(c.CHARGE))
    amount = fields.get(c.CHARGE_AMOUNT, extras.pop("amount", None))
    if amount is None and not extras:
        return None
    if not _is_number(amount):
        stats.dropped("charge_without_amount")
        return None
    try:
        when = datetime.fromtimestamp(time_ms / 1000, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        # The event's own time is unusable (it is dropped or clamped later); the
        # charge keeps its amount and takes the time it was recorded.
        stats.adjusted("invalid_time", detail=c.NAME_OF_FIELD[c.CHARGE])
        when = datetime.now(timezone.utc)
    return {"$amount": amount, "$time": when.strftime("%Y-%m-%dT%H:%M:%S"), **extras}


def group_updates(fields: Dict[str, Any], stats: Stats) -> List[Message]:
    """The /groups updates a record's tags ask for, one operation each."""
    operations = _keyed_operations(fields, c.GROUP_OPERATIONS, stats)
    unset = _names(fields.get(c.GROUP_UNSET))
    if unset:
        operations.append(("$unset", unset))
    if flag(fields.get(c.GROUP_DELETE)):
        operations.append(("$delete", ""))
    if not operations:
        return []
    group_key = text(fields.get(c.GROUP_KEY))
    group_id = text(fields.get(c.GROUP_ID))
    if not group_key or not group_id:
        stats.dropped("group_without_key_or_id", len(operations))
        return []
    return [GroupUpdate(group_key, group_id, op, value) for op, value in operations]
