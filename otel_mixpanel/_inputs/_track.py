"""``track()`` and the profile calls, for code with no span at hand.

Each call emits one OpenTelemetry log record tagged with the convention's
attributes, on the global logger provider (the one ``configure()`` sets up)
or the one given. So it takes the same path as every tagged span and log
record: the bound request identity, the ordered buffer, the sending queue,
the pytest plugin. The call itself sends nothing, never blocks and never
raises into the application.
"""

from __future__ import annotations

import datetime
import functools
import logging
import threading
import time as _clock
from collections.abc import Mapping
from typing import Any, Callable, Dict, Iterable, Optional, TypeVar

from opentelemetry._logs import LoggerProvider, SeverityNumber, get_logger_provider

from otel_mixpanel import _compat
from otel_mixpanel._convention._table import flat_attributes

__all__ = [
    "alias",
    "group_delete",
    "group_remove",
    "group_set",
    "group_set_once",
    "group_union",
    "group_unset",
    "people_append",
    "people_delete",
    "people_increment",
    "people_remove",
    "people_set",
    "people_set_once",
    "people_track_charge",
    "people_union",
    "people_unset",
    "track",
]

_logger = logging.getLogger("otel_mixpanel")
# The records' scope: not "otel_mixpanel...", which the log exporter skips as
# our own log lines.
SCOPE = "mixpanel"
_warned = threading.Event()
_last_ns = [0]
_clock_lock = threading.Lock()
_Call = TypeVar("_Call", bound=Callable[..., None])


def _never_raises(call: _Call) -> _Call:
    """The application's call must never fail because of us, whatever it passed."""

    @functools.wraps(call)
    def guarded(*args: Any, **kwargs: Any) -> None:
        try:
            call(*args, **kwargs)
        except Exception:
            _logger.exception("otel_mixpanel.%s(): the record could not be emitted",
                              call.__name__)

    return guarded  # type: ignore[return-value]


@_never_raises
def track(
    event: str,
    properties: Optional[Mapping[str, Any]] = None,
    *,
    distinct_id: Optional[str] = None,
    user_id: Optional[str] = None,
    device_id: Optional[str] = None,
    ip: Optional[str] = None,
    time: Any = None,
    insert_id: Optional[str] = None,
    groups: Optional[Mapping[str, Any]] = None,
    logger_provider: Optional[LoggerProvider] = None,
) -> None:
    """Send the event *event*, as a span tagged ``mixpanel.event`` would.

    Without ids, the identity bound for the request (``bind_identity`` or a
    web middleware) applies. *time* is a datetime or epoch seconds or
    milliseconds (default: now); *groups* maps a group key to the group id(s).

    Example::

        otel_mixpanel.track("Signed Up", {"plan": "pro"}, user_id="u1")
    """
    _emit(event if isinstance(event, str) else "event", {
        # Not a str (None, a number): sent empty, so the pipeline counts it
        # (invalid_event_name) instead of sending a made-up name.
        "mixpanel.event": event if isinstance(event, str) else "",
        "mixpanel.properties": _mapping(properties, optional=True),
        "mixpanel.distinct_id": distinct_id,
        "mixpanel.user_id": user_id,
        "mixpanel.device_id": device_id,
        "mixpanel.ip": ip,
        "mixpanel.time": _time(time),
        "mixpanel.insert_id": insert_id,
        "mixpanel.groups": _mapping(groups, optional=True),
    }, logger_provider)


@_never_raises
def alias(
    alias_id: str, original: str, *, logger_provider: Optional[LoggerProvider] = None
) -> None:
    """``$create_alias``: *alias_id* becomes another name of *original* (as
    mixpanel-python's ``alias(alias_id, original)``)."""
    _emit("$create_alias", {"mixpanel.distinct_id": original, "mixpanel.alias": alias_id},
          logger_provider)


@_never_raises
def people_set(distinct_id: str, properties: Mapping[str, Any], **options: Any) -> None:
    """``$set`` profile properties of user *distinct_id*.

    Example::

        otel_mixpanel.people_set("u1", {"$email": "a@example.com", "plan": "pro"})
    """
    _people("set", distinct_id, properties, **options)


@_never_raises
def people_set_once(distinct_id: str, properties: Mapping[str, Any], **options: Any) -> None:
    """``$set_once``: set the properties that the profile does not have yet."""
    _people("set_once", distinct_id, properties, **options)


@_never_raises
def people_increment(distinct_id: str, properties: Mapping[str, float], **options: Any) -> None:
    """``$add`` to numeric profile properties (negative numbers decrement)."""
    _people("add", distinct_id, properties, **options)


@_never_raises
def people_append(distinct_id: str, properties: Mapping[str, Any], **options: Any) -> None:
    """``$append`` each value to its list property."""
    _people("append", distinct_id, properties, **options)


@_never_raises
def people_union(distinct_id: str, properties: Mapping[str, Any], **options: Any) -> None:
    """``$union`` each sequence into its list property."""
    _people("union", distinct_id, properties, **options)


@_never_raises
def people_remove(distinct_id: str, properties: Mapping[str, Any], **options: Any) -> None:
    """``$remove`` each value from its list property."""
    _people("remove", distinct_id, properties, **options)


@_never_raises
def people_unset(distinct_id: str, names: Iterable[str], **options: Any) -> None:
    """``$unset`` these profile properties."""
    _profile(distinct_id, {"mixpanel.people.unset": _names(names)}, **options)


@_never_raises
def people_delete(distinct_id: str, **options: Any) -> None:
    """``$delete`` the user profile."""
    _profile(distinct_id, {"mixpanel.people.delete": True}, **options)


@_never_raises
def people_track_charge(
    distinct_id: str, amount: float, properties: Optional[Mapping[str, Any]] = None,
    **options: Any,
) -> None:
    """Record revenue: ``$append`` to ``$transactions`` (with ``$amount`` and ``$time``)."""
    extras = _mapping(properties, optional=True)
    _profile(distinct_id, {"mixpanel.people.track_charge": amount, **{
        f"mixpanel.people.track_charge.{name}": value
        for name, value in (extras.items() if isinstance(extras, dict) else ())
    }}, **options)


@_never_raises
def group_set(group_key: str, group_id: str, properties: Mapping[str, Any], **options: Any) -> None:
    """``$set`` properties of the group profile *group_key* = *group_id*.

    Example::

        otel_mixpanel.group_set("company", "acme", {"plan": "enterprise"})
    """
    _group(group_key, group_id, {"mixpanel.group.set": _mapping(properties)}, **options)


@_never_raises
def group_set_once(
    group_key: str, group_id: str, properties: Mapping[str, Any], **options: Any
) -> None:
    """``$set_once`` properties of a group profile."""
    _group(group_key, group_id, {"mixpanel.group.set_once": _mapping(properties)}, **options)


@_never_raises
def group_union(
    group_key: str, group_id: str, properties: Mapping[str, Any], **options: Any
) -> None:
    """``$union`` each sequence into a list property of a group profile."""
    _group(group_key, group_id, {"mixpanel.group.union": _mapping(properties)}, **options)


@_never_raises
def group_remove(
    group_key: str, group_id: str, properties: Mapping[str, Any], **options: Any
) -> None:
    """``$remove`` each value from a list property of a group profile."""
    _group(group_key, group_id, {"mixpanel.group.remove": _mapping(properties)}, **options)


@_never_raises
def group_unset(group_key: str, group_id: str, names: Iterable[str], **options: Any) -> None:
    """``$unset`` these properties of a group profile."""
    _group(group_key, group_id, {"mixpanel.group.unset": _names(names)}, **options)


@_never_raises
def group_delete(group_key: str, group_id: str, **options: Any) -> None:
    """``$delete`` the group profile."""
    _group(group_key, group_id, {"mixpanel.group.delete": True}, **options)


def _people(
    operation: str, distinct_id: str, properties: Mapping[str, Any], **options: Any
) -> None:
    _profile(distinct_id, {f"mixpanel.people.{operation}": _mapping(properties)},
             **options)


def _profile(
    distinct_id: str, attributes: Dict[str, Any], *, ip: Optional[str] = None,
    logger_provider: Optional[LoggerProvider] = None,
) -> None:
    _emit("profile update", {"mixpanel.distinct_id": distinct_id, "mixpanel.ip": ip,
                             **attributes}, logger_provider)


def _group(
    group_key: str, group_id: str, attributes: Dict[str, Any],
    *, logger_provider: Optional[LoggerProvider] = None,
) -> None:
    _emit("group update", {"mixpanel.group.key": group_key, "mixpanel.group.id": group_id,
                           **attributes}, logger_provider)


def _mapping(value: Any, optional: bool = False) -> Any:
    """A mapping as a dict; None as absent when *optional*. Anything else
    becomes its type's name: a str, which a log attribute can hold (the SDK
    would drop some values silently) and the pipeline refuses and counts
    (``not_a_mapping``), without the value itself travelling anywhere."""
    if isinstance(value, Mapping):
        return dict(value)
    if value is None and optional:
        return None
    return f"<{type(value).__name__}>"


def _names(value: Any) -> Any:
    """Property names as a list; one str is one name, not its letters."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable):
        return list(value)
    return None


def _time(value: Any) -> Any:
    # A log attribute cannot hold a datetime; the convention reads ISO-8601.
    return value.isoformat() if isinstance(value, datetime.datetime) else value


def _timestamp() -> int:
    """Now, in ns, never the same twice: the record's time is part of its
    ``$insert_id``, so two identical calls within one tick of a coarse clock
    (Windows before Python 3.13: 15.6 ms) must still get different ones."""
    with _clock_lock:
        _last_ns[0] = max(_clock.time_ns(), _last_ns[0] + 1)
        return _last_ns[0]


def _emit(body: str, attributes: Dict[str, Any], logger_provider: Optional[LoggerProvider]) -> None:
    try:
        provider = logger_provider or get_logger_provider()
        if not hasattr(provider, "add_log_record_processor") and not _warned.is_set():
            # The API's provider drops every record until an SDK one is set.
            _warned.set()
            _logger.warning(
                "otel_mixpanel.track() and the profile calls go through the OpenTelemetry "
                "logs pipeline, and no SDK logger provider is set: call "
                "otel_mixpanel.configure() first (records emitted before it are not sent)")
        tags = {name: value for name, value in attributes.items() if value not in (None, {})}
        _compat.emit(
            provider.get_logger(SCOPE), body=body,
            attributes=tags if _compat.LOG_MAPPINGS else flat_attributes(tags),
            timestamp=_timestamp(), severity_number=SeverityNumber.INFO, severity_text="INFO",
        )
    except Exception:  # the application's call must never fail because of us
        _logger.exception("otel_mixpanel.track(): the record could not be emitted")
