"""Request-scoped identity: bind the user once, tag every span and log record.

Bind at the edge of a request (a middleware) and every span started and every
tagged log record emitted inside it carries the identity, through
:class:`MixpanelIdentitySpanProcessor` and :class:`MixpanelIdentityLogProcessor`::

    from otel_mixpanel.identity import bind_identity

    with bind_identity(user_id=request.user.id, propagate=True):
        handle(request)

The identity lives in the OpenTelemetry context, so it follows contextvars:
threads and asyncio tasks of different requests never see each other's. With
``propagate=True`` it is also set as W3C baggage (``mixpanel.distinct_id``,
``mixpanel.user_id``, ``mixpanel.device_id``), so downstream services using
this library and a baggage propagator (the default) inherit it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any, Dict, Iterator, NamedTuple, Optional

from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from otel_mixpanel._compat import LogRecordProcessor
from otel_mixpanel._convention import _table as c
from otel_mixpanel._convention._translate import is_tagged

__all__ = [
    "MixpanelIdentityLogProcessor",
    "MixpanelIdentitySpanProcessor",
    "bind_identity",
    "current_identity",
]

_IDENTITY_KEY = context.create_key("otel_mixpanel.identity")


class _Binding(NamedTuple):
    values: Dict[str, str]
    trust_baggage: bool  # False at a public edge: a client can send any baggage
# The same binding outside the OpenTelemetry context: an instrumentation that
# attaches a context extracted from the request headers alone (Flask's
# before_request, FastAPI's own tracing, the ASGI middleware without a current
# span) replaces that context, and the identity must survive it.
_BOUND: contextvars.ContextVar[Optional[_Binding]] = contextvars.ContextVar(
    "otel_mixpanel_identity", default=None)
# Where the API keeps baggage in a Context; private, so the fast path in
# on_start is skipped if a release renames it.
_BAGGAGE_KEY: Optional[str] = getattr(baggage, "_BAGGAGE_KEY", None)
# The ids travel as baggage with propagate=True; the client IP never leaves the process.
ID_ATTRIBUTES = tuple(c.NAME_OF_FIELD[field] for field in (c.DISTINCT_ID, c.USER_ID, c.DEVICE_ID))
IDENTITY_ATTRIBUTES = (*ID_ATTRIBUTES, c.NAME_OF_FIELD[c.IP])
_UNDERSCORED = {name: name.replace(".", "_") for name in IDENTITY_ATTRIBUTES}


@contextmanager
def bind_identity(
    distinct_id: Optional[str] = None,
    *,
    user_id: Optional[str] = None,
    device_id: Optional[str] = None,
    ip: Optional[str] = None,
    propagate: bool = False,
    trust_baggage: bool = True,
) -> Iterator[None]:
    """Make these ids the identity of everything tagged inside the block.

    Nested bindings add to (and override) the outer one. Attributes set on a
    span or record itself always win over the bound identity. The span that is
    current when binding (typically the request's server span, started by an
    instrumentation before any middleware runs) is stamped too. *ip* (the
    client's address, for Mixpanel's geolocation) is never propagated.
    ``trust_baggage=False`` (what the web middlewares do at a public edge)
    ignores the ``mixpanel.*`` baggage the request came with, and takes it out
    of the context, since any client can send a baggage header.
    """
    given = zip(IDENTITY_ATTRIBUTES, (distinct_id, user_id, device_id, ip))
    values = {name: str(value) for name, value in given if value is not None}
    current = trace.get_current_span()
    if current.is_recording():
        for name, value in _fill(getattr(current, "attributes", None) or {}, values).items():
            current.set_attribute(name, value)
    outer = _binding(None)
    binding = _Binding(
        {**(outer.values if outer else {}), **values},
        trust_baggage and (outer is None or outer.trust_baggage),
    )
    ctx = context.set_value(_IDENTITY_KEY, binding)
    if not binding.trust_baggage:
        for name in ID_ATTRIBUTES:
            ctx = baggage.remove_baggage(name, context=ctx)
    if propagate:
        for name, value in values.items():
            if name in ID_ATTRIBUTES:
                ctx = baggage.set_baggage(name, value, context=ctx)
    token = context.attach(ctx)
    outside = _BOUND.set(binding)
    try:
        yield
    finally:
        _BOUND.reset(outside)
        context.detach(token)


def current_identity(ctx: Optional[context.Context] = None) -> Dict[str, str]:
    """The identity attributes in force: bound in-process, else from baggage."""
    identity: Dict[str, str] = {}
    binding = _binding(ctx)
    entries = baggage.get_all(ctx) if binding is None or binding.trust_baggage else None
    if entries:
        for name in ID_ATTRIBUTES:
            value = entries.get(name)
            if isinstance(value, str) and value:
                identity[name] = value
    if binding is not None:
        identity.update(binding.values)
    return identity


def _binding(ctx: Optional[context.Context]) -> Optional[_Binding]:
    binding = context.get_value(_IDENTITY_KEY, ctx)
    if isinstance(binding, _Binding):
        return binding
    return _BOUND.get()  # a context that replaced ours (an instrumentation's)


def _fill(attributes: Mapping[str, Any], identity: Dict[str, str]) -> Dict[str, str]:
    """The identity entries the attributes do not already set, in either spelling."""
    return {
        name: value
        for name, value in identity.items()
        if name not in attributes and _UNDERSCORED[name] not in attributes
    }


class MixpanelIdentitySpanProcessor(SpanProcessor):
    """Stamps the bound identity on every span when it starts.

    Add it to the tracer provider (``configure()`` does); the exporter then
    reads the identity like any other attribute and never guesses.
    """

    def on_start(self, span: Span, parent_context: Optional[context.Context] = None) -> None:
        # Runs on the application's thread for every span: leave at once when
        # nothing is bound and no baggage came in (the common case).
        ctx = parent_context if parent_context is not None else context.get_current()
        if (_BAGGAGE_KEY is not None and not ctx.get(_IDENTITY_KEY) and not ctx.get(_BAGGAGE_KEY)
                and _BOUND.get() is None):
            return
        identity = current_identity(ctx)
        if identity:
            for name, value in _fill(span.attributes or {}, identity).items():
                span.set_attribute(name, value)

    def on_end(self, span: ReadableSpan) -> None:
        """Nothing to do once the span has ended."""

    def shutdown(self) -> None:
        """Holds nothing."""

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Holds nothing: always True."""
        return True


class MixpanelIdentityLogProcessor(LogRecordProcessor):
    """Adds the bound identity to tagged log records as they are emitted.

    Add it to the logger provider *before* the batch processor, so the record
    is complete when it is queued.
    """

    def on_emit(self, log_record: Any) -> None:
        record = log_record.log_record
        attributes = record.attributes
        if attributes is None or not is_tagged(attributes):
            return
        identity = current_identity(getattr(record, "context", None))
        for name, value in _fill(attributes, identity).items():
            attributes[name] = value
