"""Delivery: messages → limits → batches → the sending queue → Mixpanel's HTTP contract.

``_limits`` applies Mixpanel's client-side rules, ``_batch`` encodes records and
groups them per endpoint; ``_responses``, ``_retry`` and ``_transport`` read
answers, time retries and make requests.

``_sending`` is the queue (submit, wait, flush, close, the sender thread);
``_backend`` the memory backend and the interface, ``_disk`` the spool-backed
one, on ``_spool`` (the directory) and ``_segments`` (its files); ``_client``
one request and its per-record answer; ``_registry`` one queue per destination.
Nothing here knows an attribute key or the SDK; the API's context is used only
to keep the sender's own HTTP calls out of traces.
"""

from __future__ import annotations

from otel_mixpanel._queue._client import Client, Outcome
from otel_mixpanel._queue._registry import acquire, release
from otel_mixpanel._queue._sending import SendingQueue

__all__ = ["Client", "Outcome", "SendingQueue", "acquire", "release"]
