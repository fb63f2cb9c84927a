"""How Mixpanel applies one profile (or group profile) update, as pure functions over dicts.

The server keeps user profiles and group profiles as plain ``dict``s of properties and folds
each accepted update into them with :func:`apply_update`. Updates are assumed valid (see
``_validate.update_problem``).
"""

from __future__ import annotations

import copy
from typing import Dict, List, Mapping, Optional

from ._validate import PROFILE_OPERATIONS

Properties = Dict[str, object]


def update_operation(update: Mapping[str, object]) -> str:
    """The operation key (``"$set"``, ``"$delete"``, ...) of a valid update."""
    for operation in PROFILE_OPERATIONS:
        if operation in update:
            return operation
    raise ValueError("update carries no operation")


def apply_update(
    current: Optional[Mapping[str, object]], update: Mapping[str, object]
) -> Optional[Properties]:
    """The profile's properties after ``update``; ``None`` means there is no profile.

    ``current`` is ``None`` when the profile does not exist yet. It is never modified: the
    result is a new dict, and values taken from ``update`` are copied so that later changes to
    either side cannot leak into the other.

    >>> apply_update({"logins": 1}, {"$add": {"logins": 2}})
    {'logins': 3}
    >>> apply_update({"plan": "pro"}, {"$delete": ""}) is None
    True
    """
    operation = update_operation(update)
    value = copy.deepcopy(update[operation])
    if operation == "$delete":
        return None
    if current is None and operation in ("$unset", "$remove"):
        # Removing from a profile that does not exist leaves it nonexistent rather than
        # conjuring an empty one.
        return None
    properties: Properties = copy.deepcopy(dict(current or {}))
    if operation == "$unset":
        assert isinstance(value, list)
        for name in value:
            properties.pop(name, None)
        return properties
    assert isinstance(value, dict)
    for name, operand in value.items():
        _apply_one(properties, operation, name, operand)
    return properties


def _apply_one(properties: Properties, operation: str, name: str, operand: object) -> None:
    existing = properties.get(name)
    if operation == "$set":
        properties[name] = operand
    elif operation == "$set_once":
        properties.setdefault(name, operand)
    elif operation == "$add":
        total = 0 if name not in properties else existing
        # Mixpanel leaves a non-numeric property alone rather than failing the update.
        if isinstance(total, (int, float)) and isinstance(operand, (int, float)):
            properties[name] = total + operand
    elif operation == "$append":
        if name not in properties:
            properties[name] = [operand]
        elif isinstance(existing, list):
            existing.append(operand)
    elif operation == "$union":
        if name in properties and not isinstance(existing, list):
            return
        merged: List[object] = list(existing) if isinstance(existing, list) else []
        assert isinstance(operand, list)
        for item in operand:
            if item not in merged:
                merged.append(item)
        properties[name] = merged
    elif operation == "$remove":
        if isinstance(existing, list):
            properties[name] = [item for item in existing if item != operand]
    else:
        raise ValueError(f"unknown operation {operation!r}")
