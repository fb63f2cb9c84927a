"""The ``mixpanel.*`` attribute convention: every key once.

This table is the only place a ``mixpanel.`` key is spelled. The translator
reads attributes through it, the structlog spelling maps onto it, and the
attribute reference in the docs is checked against it.

A key is either *plain* (``mixpanel.event``: one value) or *keyed*
(``mixpanel.people.set``: the attribute ``mixpanel.people.set.plan`` sets
``plan``, and the key itself may carry a mapping of several names at once,
which is how log records and structlog events spell it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Tuple

PREFIX = "mixpanel."
UNDERSCORE_PREFIX = "mixpanel_"  # the structlog spelling: keyword arguments cannot hold dots
PREFIXES = (PREFIX, UNDERSCORE_PREFIX)

# Field names of the parsed form (see ``_translate.Tagged``): what each key fills.
EVENT = "event"
DISTINCT_ID = "distinct_id"
USER_ID = "user_id"
DEVICE_ID = "device_id"
PROPERTIES = "properties"
TIME = "time"
INSERT_ID = "insert_id"
IP = "ip"
GROUPS = "groups"
PEOPLE_UNSET = "people_unset"
PEOPLE_DELETE = "people_delete"
CHARGE = "charge"
CHARGE_AMOUNT = "charge_amount"
CLEAR_CHARGES = "clear_charges"
IGNORE_TIME = "ignore_time"
GROUP_KEY = "group_key"
GROUP_ID = "group_id"
GROUP_UNSET = "group_unset"
GROUP_DELETE = "group_delete"
ALIAS = "alias"
IDENTIFY_ANON_ID = "identify_anon_id"
MERGE = "merge"

# Keyed profile and group operations: field name -> Mixpanel operation.
PEOPLE_OPERATIONS: Dict[str, str] = {
    "people_set": "$set",
    "people_set_once": "$set_once",
    "people_add": "$add",
    "people_append": "$append",
    "people_union": "$union",
    "people_remove": "$remove",
}
GROUP_OPERATIONS: Dict[str, str] = {
    "group_set": "$set",
    "group_set_once": "$set_once",
    "group_union": "$union",
    "group_remove": "$remove",
}

# Semantic-convention attributes that name the user when no mixpanel key does,
# in order of preference (``enduser.id`` is the older, deprecated name).
FALLBACK_USER_ATTRIBUTES = ("user.id", "enduser.id")


@dataclass(frozen=True)
class Key:
    """One key of the convention."""

    name: str
    field: str
    value: str
    effect: str
    keyed: bool = False
    # For a keyed key that also takes a plain value on its own name
    # (``mixpanel.people.track_charge = 9.99``): the field that value fills.
    plain_field: Optional[str] = None

    @property
    def structlog_name(self) -> str:
        """The underscore spelling structlog keyword arguments use."""
        return self.name.replace(".", "_")


def _people(op: str, value: str, effect: str) -> Key:
    return Key(f"mixpanel.people.{op}", f"people_{op}", value, effect, keyed=True)


def _group(op: str, value: str, effect: str) -> Key:
    return Key(f"mixpanel.group.{op}", f"group_{op}", value, effect, keyed=True)


KEYS: Tuple[Key, ...] = (
    Key("mixpanel.event", EVENT, "str", "Send one Mixpanel event with this name."),
    Key("mixpanel.distinct_id", DISTINCT_ID, "str",
        "`distinct_id` of the event and the user profile its updates apply to."),
    Key("mixpanel.user_id", USER_ID, "str",
        "`$user_id` (Simplified ID Merge); the `distinct_id` when `mixpanel.distinct_id` "
        "is absent."),
    Key("mixpanel.device_id", DEVICE_ID, "str",
        "`$device_id`; the `distinct_id` when neither of the two above is set."),
    Key("mixpanel.properties", PROPERTIES, "any attribute value, or a mapping",
        "Event property `<name>`; a mapping on the key itself adds several.", keyed=True),
    Key("mixpanel.time", TIME, "seconds or milliseconds since the epoch, or ISO-8601 str",
        "Overrides the event time (default: when the span ended or the record was made)."),
    Key("mixpanel.insert_id", INSERT_ID, "str, at most 36 of [A-Za-z0-9-]",
        "Overrides the derived `$insert_id`; an invalid one is replaced and counted."),
    Key("mixpanel.ip", IP, "str",
        "`ip` of the event and `$ip` of profile updates, for geolocation (none without it)."),
    Key("mixpanel.groups", GROUPS, "str or sequence of str",
        "Event property `<group_key>` = the group id(s): the event counts for those groups.",
        keyed=True),
    _people("set", "any", "`$set` the profile property `<name>`."),
    _people("set_once", "any", "`$set_once`: set `<name>` only where it is not set yet."),
    _people("add", "number", "`$add` to the numeric property `<name>` (negative decrements)."),
    _people("append", "any", "`$append` the value to the list property `<name>`."),
    _people("union", "sequence", "`$union` the values into the list property `<name>`."),
    _people("remove", "any", "`$remove` the value from the list property `<name>`."),
    Key("mixpanel.people.unset", PEOPLE_UNSET, "sequence of str",
        "`$unset` these profile properties."),
    Key("mixpanel.people.delete", PEOPLE_DELETE, "true", "`$delete` the user profile."),
    Key("mixpanel.people.track_charge", CHARGE, "number; `<name>`: any",
        "Record revenue: `$append` to `$transactions` an entry with `$amount`, `$time` and "
        "the extra fields `<name>`.", keyed=True, plain_field=CHARGE_AMOUNT),
    Key("mixpanel.people.clear_charges", CLEAR_CHARGES, "true",
        "`$unset` `$transactions`: forget every charge."),
    Key("mixpanel.people.ignore_time", IGNORE_TIME, "true",
        "`$ignore_time` on the profile updates, so \"Last Seen\" is not touched."),
    Key("mixpanel.group.key", GROUP_KEY, "str",
        "The group key (`company`) of the group profile the operations below update."),
    Key("mixpanel.group.id", GROUP_ID, "str", "The group id (`acme`) of that group profile."),
    _group("set", "any", "`$set` the group property `<name>`."),
    _group("set_once", "any", "`$set_once` the group property `<name>`."),
    _group("union", "sequence", "`$union` the values into the group list property `<name>`."),
    _group("remove", "any", "`$remove` the value from the group list property `<name>`."),
    Key("mixpanel.group.unset", GROUP_UNSET, "sequence of str",
        "`$unset` these group properties."),
    Key("mixpanel.group.delete", GROUP_DELETE, "true", "`$delete` the group profile."),
    Key("mixpanel.alias", ALIAS, "str",
        "Send `$create_alias` (`distinct_id` = the event's, `alias` = this), before the events."),
    Key("mixpanel.identify.anon_id", IDENTIFY_ANON_ID, "str",
        "Send `$identify` (`$identified_id` = distinct_id, `$anon_id` = this), before the events."),
    Key("mixpanel.merge", MERGE, "str",
        "Send `$merge` of distinct_id and this id (needs a service account), before the events."),
)

BY_NAME: Dict[str, Key] = {key.name: key for key in KEYS}
BY_STRUCTLOG_NAME: Dict[str, Key] = {key.structlog_name: key for key in KEYS}
# The key that fills each field (a keyed key's plain field maps to it too).
NAME_OF_FIELD: Dict[str, str] = {
    **{key.plain_field: key.name for key in KEYS if key.plain_field},
    **{key.field: key.name for key in KEYS},
}
# Groups of keys a structlog mapping may stand for: mixpanel_group={"key": ..., "set": {...}}.
NAMESPACES: Dict[str, str] = {
    name.replace(".", "_"): name
    for key in KEYS
    for name in (key.name.rsplit(".", depth)[0] for depth in range(1, key.name.count(".")))
    if name not in BY_NAME
}
# Keys that only say whose record it is: on their own they produce no message.
CONTEXT_FIELDS = frozenset({DISTINCT_ID, USER_ID, DEVICE_ID, IP})
CONTEXT_NAMES = frozenset(
    spelling
    for key in KEYS
    if key.field in CONTEXT_FIELDS
    for spelling in (key.name, key.structlog_name)
)
_KEYED_PREFIXES: Dict[str, Key] = {key.name + ".": key for key in KEYS if key.keyed}


def dotted_names(name: str, value: Any) -> Iterator[Tuple[Optional[str], Any]]:
    """The dotted key(s) an underscore-spelt name stands for, with their values.

    ``mixpanel_people_set`` is ``mixpanel.people.set``, by table, never by
    replacing underscores; a mapping under a group name expands into its keys.
    Yields ``(None, name)`` for a name that is not part of the convention.

    >>> list(dotted_names("mixpanel_group", {"key": "company", "id": "acme"}))
    [('mixpanel.group.key', 'company'), ('mixpanel.group.id', 'acme')]
    """
    key = BY_STRUCTLOG_NAME.get(name)
    if key is not None:
        yield key.name, value
        return
    namespace = NAMESPACES.get(name)
    if namespace is None or not isinstance(value, Mapping):
        yield None, name
        return
    for inner, inner_value in value.items():
        dotted = f"{namespace}.{inner}"
        if dotted in BY_NAME:
            yield dotted, inner_value
        else:
            yield from dotted_names(dotted.replace(".", "_"), inner_value)


def flat_attributes(attributes: Mapping[str, Any]) -> Dict[str, Any]:
    """The same tags without mapping values, for log records on SDKs that drop
    them (before 1.33): a mapping on a keyed key becomes one key per name, a
    structlog group its dotted keys, and a mapping nested inside a value its
    JSON text.

    >>> flat_attributes({"mixpanel_group": {"key": "co", "set": {"plan": "pro"}}})
    {'mixpanel.group.key': 'co', 'mixpanel.group.set.plan': 'pro'}
    """
    flat: Dict[str, Any] = {}
    for name, value in attributes.items():
        spelt = name.startswith(UNDERSCORE_PREFIX)
        for dotted, inner in dotted_names(name, value) if spelt else [(name, value)]:
            if dotted is None:  # not the convention's: parse() counts it
                flat[name] = value
            elif isinstance(inner, Mapping) and dotted in BY_NAME and BY_NAME[dotted].keyed:
                for sub, sub_value in inner.items():
                    flat[f"{dotted}.{sub}"] = _no_mapping(sub_value)
            else:
                flat[dotted] = _no_mapping(inner)
    return flat


def _no_mapping(value: Any) -> Any:
    if isinstance(value, Mapping) or (
        isinstance(value, (list, tuple)) and any(isinstance(v, Mapping) for v in value)
    ):
        return json.dumps(value, default=str, separators=(",", ":"))
    return value


def lookup(attribute: str) -> Tuple[Optional[Key], Optional[str]]:
    """Find the key an attribute name belongs to.

    Returns ``(key, None)`` for a plain key or a keyed key's own name,
    ``(key, "<name>")`` for a keyed attribute, ``(None, None)`` when the name
    is not part of the convention.

    >>> lookup("mixpanel.properties.plan.tier")[1]
    'plan.tier'
    """
    key = BY_NAME.get(attribute)
    if key is not None:
        return key, None
    # The shortest keyed prefix wins, so property names may contain dots.
    start = len(PREFIX)
    while True:
        dot = attribute.find(".", start)
        if dot < 0:
            return None, None
        key = _KEYED_PREFIXES.get(attribute[: dot + 1])
        if key is not None:
            name = attribute[dot + 1 :]
            return (key, name) if name else (None, None)
        start = dot + 1
