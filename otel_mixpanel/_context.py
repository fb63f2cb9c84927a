"""Our own threads' work stays out of the telemetry it reads.

The SDK's batch processors set this key around ``export()``; the sending
queue's sender and the ordered intake's worker set it too, so that their HTTP
calls (instrumented ``requests``) make no spans of their own.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from opentelemetry import context as otel_context

try:
    from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY
except ImportError:  # pragma: no cover - very old API
    _SUPPRESS_INSTRUMENTATION_KEY = otel_context.create_key("suppress_instrumentation")


@contextlib.contextmanager
def instrumentation_suppressed() -> Iterator[None]:
    """Instrumentation records nothing inside the block, on this thread."""
    token = otel_context.attach(otel_context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
    try:
        yield
    finally:
        otel_context.detach(token)
