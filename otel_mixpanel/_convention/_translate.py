"""Tagged attributes plus a little context → Mixpanel messages.

Pure: no I/O, no OpenTelemetry. Each input adapter (spans, log records,
structlog) builds a :class:`Record` and calls :func:`translate`; everything
Mixpanel-specific about the attributes happens here, through the table in
``_convention``.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

from otel_mixpanel._convention import _table as c
from otel_mixpanel._convention._updates import (
    GROUP_FIELDS,
    PROFILE_FIELDS,
    group_updates,
    is_sequence,
    mapping_of,
    profile_updates,
    text,
)
from otel_mixpanel._model import (
    REQUIRED_EVENT_PROPERTIES,
    Event,
    IdentityEvent,
    Message,
)
from otel_mixpanel._stats import Stats
from otel_mixpanel._version import __version__

LIBRARY_NAME = "otel-mixpanel"
_INSERT_ID = re.compile(r"[A-Za-z0-9-]{1,36}")
_IDENTITY_FIELDS = (c.DISTINCT_ID, c.USER_ID, c.DEVICE_ID)
# The fields without which no identity event is made.
_IDENTITY_EVENT_FIELDS = frozenset({c.ALIAS, c.IDENTIFY_ANON_ID, c.MERGE})
# Fields copied onto the event as the property Mixpanel knows them by.
_EVENT_IDENTITY_PROPERTIES = ((c.USER_ID, "$user_id"), (c.DEVICE_ID, "$device_id"), (c.IP, "ip"))
_ABSENT = object()
# c.lookup is pure: its answers, by attribute name. Bounded, as names may be
# made up at run time (mixpanel.properties.<anything>).
_LOOKUPS: Dict[str, Tuple[Optional[c.Key], Optional[str]]] = {}
_MAX_LOOKUPS = 4096
# Attribute name → (field, sub-name), for the names parse() places itself.
_PLACES: Dict[str, Tuple[str, Optional[str]]] = {}


_NOTHING: Mapping[str, Any] = MappingProxyType({})


class Record(NamedTuple):
    """One tagged input in the plain shape every adapter produces.

    ``insert_id_seed`` and ``position`` must be stable for the same input, so
    that exporting it twice derives the same ``$insert_id``. ``inherited``
    holds the attributes of an enclosing span whose identity the record takes
    when it has none of its own (span events). A named tuple, not a frozen
    dataclass: one is built per tagged span, and it is three times cheaper.
    """

    attributes: Mapping[str, Any]
    time_ms: int
    insert_id_seed: str
    position: int = 0
    trace_id: Optional[str] = None
    span_id: Optional[str] = None
    duration: Optional[float] = None
    resource: Mapping[str, Any] = _NOTHING
    inherited: Mapping[str, Any] = _NOTHING


_EVENT_NAME = c.NAME_OF_FIELD[c.EVENT]  # mixpanel.event


def is_tagged(attributes: Optional[Mapping[str, Any]]) -> bool:
    """Whether any attribute belongs to the convention: the cheap skip test.

    Runs for every span and record, tagged or not, so it stays in C: the names
    are joined once and searched for "mixpanel" (0.3 µs for ten names against
    0.75 µs for a startswith per name). A name merely containing the separator
    and a prefix can only make a false positive, which translation then skips.
    """
    # The SDK's BoundedAttributes iterates (and measures its length) through
    # Python-level methods; its plain dict, when there is one, has the same keys
    # in the same order.
    names = getattr(attributes, "_dict", None)
    if type(names) is not dict:
        if not attributes:
            return False
        names = attributes
    elif not names:
        return False
    elif _EVENT_NAME in names:  # most tagged spans: one lookup, no join
        return True
    try:
        text = "\0".join(names)
    except (RuntimeError, TypeError):  # changed while read, or a name that is not a str
        prefixes = c.PREFIXES
        return any(isinstance(name, str) and name.startswith(prefixes) for name in attributes or ())
    if "mixpanel" not in text:
        return False
    text = "\0" + text
    return "\0mixpanel." in text or "\0mixpanel_" in text


def carries_messages(attributes: Mapping[str, Any]) -> bool:
    """Whether the tags can produce a message: identity and ``ip`` alone cannot."""
    prefixes, context = c.PREFIXES, c.CONTEXT_NAMES
    return any(name.startswith(prefixes) and name not in context for name in attributes)


def parse(attributes: Mapping[str, Any], stats: Stats) -> Dict[str, Any]:
    """Read the convention's attributes, in either spelling, into fields named
    by the table.

    Keyed keys become dicts; on a clash the keyed attribute
    (``mixpanel.properties.plan``) wins over a mapping on the key itself.
    """
    fields: Dict[str, Any] = {}
    prefix, places = c.PREFIX, _PLACES
    for name, value in _plain_items(attributes):
        place = places.get(name)
        if place is None:
            if name.startswith(prefix):
                place = _place(name)
                if place is None:  # the rest of the cases (and errors)
                    _assign(fields, name, value, stats)
                    continue
            else:
                if name.startswith(c.UNDERSCORE_PREFIX):
                    for dotted, inner_value in c.dotted_names(name, value):
                        if dotted is None:
                            stats.dropped("unknown_key", detail=str(inner_value))
                        else:
                            _assign(fields, dotted, inner_value, stats)
                continue
        field_name, sub = place
        if sub is None:
            fields[field_name] = value
        else:
            keyed = fields.get(field_name)
            if keyed is None:
                keyed = fields[field_name] = {}
            keyed[sub] = value
    return fields


def _place(name: str) -> Optional[Tuple[str, Optional[str]]]:
    """Where parse() puts the value of *name*, for the two common cases: a
    plain key's field, or a keyed key's field and sub-name. Cached."""
    key, sub = _lookup(name)
    if key is None or (sub is None and key.keyed):
        return None
    place = (key.field, sub)
    if len(_PLACES) >= _MAX_LOOKUPS:
        _PLACES.clear()
    _PLACES[name] = place
    return place


def _plain_items(attributes: Mapping[str, Any]) -> Any:
    """``attributes.items()``, read from the SDK's BoundedAttributes' own dict
    when there is one (its Mapping methods run in Python, per key)."""
    inner = getattr(attributes, "_dict", None)
    return inner.items() if type(inner) is dict else attributes.items()


def _lookup(name: str) -> Tuple[Optional[c.Key], Optional[str]]:
    found = _LOOKUPS.get(name)
    if found is None:
        found = c.lookup(name)
        if len(_LOOKUPS) >= _MAX_LOOKUPS:
            _LOOKUPS.clear()
        _LOOKUPS[name] = found
    return found


def _assign(fields: Dict[str, Any], name: str, value: Any, stats: Stats) -> None:
    key, sub = _lookup(name)
    if key is None:
        stats.dropped("unknown_key", detail=name)
    elif not key.keyed:
        fields[key.field] = value
    elif sub is not None:
        fields.setdefault(key.field, {})[sub] = value
    elif isinstance(value, Mapping):
        keyed = fields.get(key.field)
        if keyed is None and type(value) is dict and _str_names(value):
            fields[key.field] = dict(value)  # the usual case, copied in C
            return
        if keyed is None:
            keyed = fields[key.field] = {}
        for inner, inner_value in value.items():
            keyed.setdefault(str(inner), inner_value)
    elif key.plain_field is not None:
        fields[key.plain_field] = value
    else:
        stats.dropped("not_a_mapping", detail=name)


def _str_names(mapping: Dict[Any, Any]) -> bool:
    """Whether every name is a str (the join runs in C and fails on any other)."""
    try:
        "".join(mapping)
    except TypeError:
        return False
    return True


def translate(record: Record, stats: Stats, *, trace_ids: bool = True) -> List[Message]:
    """Every message one record produces: identity events, the event, profile
    updates, then group updates."""
    fields = parse(record.attributes, stats)
    _inherit_identity(fields, record.inherited)
    distinct_id = _distinct_id(fields, record, stats)
    time_ms = _event_time(fields.get(c.TIME), record.time_ms, stats)
    messages: List[Message] = []
    present = fields.keys()
    # Each builder yields nothing without its fields; most records are a plain
    # event, so skipping them saves dozens of lookups per record.
    if not present.isdisjoint(_IDENTITY_EVENT_FIELDS):
        messages.extend(_identity_events(fields, record, distinct_id, time_ms, stats))
    event = _event(fields, record, distinct_id, time_ms, stats, trace_ids)
    if event is not None:
        messages.append(event)
    if not present.isdisjoint(PROFILE_FIELDS):
        messages.extend(profile_updates(fields, distinct_id, time_ms, stats))
    if not present.isdisjoint(GROUP_FIELDS):
        messages.extend(group_updates(fields, stats))
    return messages


def translate_all(
    records: Iterable[Record], stats: Stats, *, trace_ids: bool = True
) -> List[Message]:
    """Translate *records* in order; one bad record never costs the others."""
    messages: List[Message] = []
    for record in records:
        try:
            messages.extend(translate(record, stats, trace_ids=trace_ids))
        except Exception as error:
            stats.dropped("translation_error", detail=type(error).__name__)
    return messages


def log_seed(
    body: Any, attributes: Mapping[str, Any], time_ns: int, trace_id: Any, span_id: Any
) -> str:
    """Stable content of a log record, so a re-exported record gets the same
    ``$insert_id`` and two different records never share one (whether it came
    from the SDK or over OTLP)."""
    # The SDK's BoundedAttributes keeps a plain dict: the same repr, without
    # a copy made key by key through its Python-level Mapping methods.
    plain = attributes if type(attributes) is dict else getattr(attributes, "_dict", None)
    if type(plain) is not dict:
        plain = dict(attributes)
    content = f"{time_ns}|{trace_id}|{span_id}|{body!r}|{plain!r}"
    return hashlib.blake2b(content.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def derive_insert_id(seed: str, position: int, tag: str) -> str:
    """A 32-character hex id, the same for the same (seed, position, tag)."""
    digest = hashlib.blake2b(f"{seed}:{position}:{tag}".encode(), digest_size=16)
    return digest.hexdigest()


def _inherit_identity(fields: Dict[str, Any], inherited: Mapping[str, Any]) -> None:
    if not inherited:
        return
    for field_name in _IDENTITY_FIELDS:
        name = c.NAME_OF_FIELD[field_name]
        if field_name not in fields and name in inherited:
            fields[field_name] = inherited[name]


def _distinct_id(fields: Dict[str, Any], record: Record, stats: Stats) -> str:
    for field_name in _IDENTITY_FIELDS:
        if field_name in fields:
            value = text(fields[field_name])
            if value is None:
                stats.dropped("invalid_identity", detail=field_name)
            elif value:
                return value
    for source in (record.attributes, record.inherited):
        for name in c.FALLBACK_USER_ATTRIBUTES:
            value = text(source.get(name))
            if value:
                return value
    return ""


def parse_time_ms(value: Any) -> Optional[int]:
    """Seconds or milliseconds since the epoch, an ISO-8601 string or a
    datetime, as whole milliseconds; None when it is none of those."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            return parse_time_ms(float(text))
        except ValueError:
            pass
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return int(value.timestamp() * 1000)
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            return None
        # 1e11 ms is 1973 and 1e11 s is the year 5138: the two never overlap.
        return int(value) if abs(value) >= 1e11 else int(value * 1000)
    return None


def _event_time(override: Any, default_ms: int, stats: Stats) -> int:
    if override is None:
        return default_ms
    parsed = parse_time_ms(override)
    if parsed is None:
        stats.adjusted("invalid_time", detail=c.NAME_OF_FIELD[c.TIME])
        return default_ms
    return parsed


def _identity_events(
    fields: Dict[str, Any], record: Record, distinct_id: str, time_ms: int, stats: Stats
) -> List[Message]:
    wanted = [
        ("$create_alias", fields.get(c.ALIAS), "alias"),
        ("$identify", fields.get(c.IDENTIFY_ANON_ID), "$anon_id"),
        ("$merge", fields.get(c.MERGE), "$distinct_ids"),
    ]
    events: List[Message] = []
    for name, raw, property_name in wanted:
        if raw is None:
            continue
        other = text(raw)
        if not other or not distinct_id:
            stats.dropped("identity_without_ids", detail=name)
            continue
        properties: Dict[str, Any] = {
            "time": time_ms,
            "distinct_id": distinct_id,
            "$insert_id": derive_insert_id(record.insert_id_seed, record.position, name),
        }
        if name == "$identify":
            properties["$identified_id"] = distinct_id
        properties[property_name] = [distinct_id, other] if name == "$merge" else other
        events.append(IdentityEvent(name, properties))
    return events


def _event(
    fields: Dict[str, Any],
    record: Record,
    distinct_id: str,
    time_ms: int,
    stats: Stats,
    trace_ids: bool,
) -> Optional[Event]:
    # Runs for every event: absent fields are skipped before any reading.
    name = fields.get(c.EVENT, _ABSENT)
    if name is _ABSENT:
        return None
    if not isinstance(name, str) or not name.strip():
        stats.dropped("invalid_event_name")
        return None
    properties: Dict[str, Any] = dict(record.resource) if record.resource else {}
    if trace_ids and record.trace_id:
        properties["trace_id"] = record.trace_id
        properties["span_id"] = record.span_id
    if record.duration is not None:
        properties["$duration"] = record.duration
    properties["mp_lib"] = LIBRARY_NAME
    properties["$lib_version"] = __version__
    groups = fields.get(c.GROUPS)
    if groups is not None:
        for group_key, group_ids in mapping_of(groups).items():
            properties[group_key] = list(group_ids) if is_sequence(group_ids) else group_ids
    given = fields.get(c.PROPERTIES)
    if given is not None:
        # parse() builds keyed fields as dicts of its own: no copy needed.
        if type(given) is not dict:
            given = mapping_of(given)
        properties.update(given)
        if not given.keys().isdisjoint(REQUIRED_EVENT_PROPERTIES):
            # A same-named property is ignored (and counted).
            shadowed = [name for name in REQUIRED_EVENT_PROPERTIES if name in given]
            stats.adjusted("reserved_property_ignored", len(shadowed), detail=", ".join(shadowed))
    for field_name, property_name in _EVENT_IDENTITY_PROPERTIES:
        value = fields.get(field_name)
        if value is not None:
            value = text(value)
            if value:
                properties[property_name] = value
    properties["time"] = time_ms
    properties["distinct_id"] = distinct_id
    properties["$insert_id"] = _insert_id(fields.get(c.INSERT_ID), record, stats)
    return Event(name, properties)


def _insert_id(override: Any, record: Record, stats: Stats) -> str:
    if override is not None:
        if isinstance(override, str) and _INSERT_ID.fullmatch(override):
            return override
        stats.adjusted("invalid_insert_id", detail=c.NAME_OF_FIELD[c.INSERT_ID])
    return derive_insert_id(record.insert_id_seed, record.position, "")


