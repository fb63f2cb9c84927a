"""A Mixpanel-compatible ingestion server on loopback, to test exporters against real HTTP.

:class:`LocalMixpanel` serves ``POST /import``, ``/engage`` and ``/groups`` on 127.0.0.1 and
holds them to Mixpanel's documented contract: HTTP Basic authentication on ``/import`` (the
project token with an empty password, or a service account with ``?project_id=``), 2000
records and 2 MiB (uncompressed) per request, gzip on ``/import`` only, per-record validation
with ``strict=1``, and Mixpanel's own answer bodies. It keeps what it accepted, folds profile
updates into profiles, and can be scripted to fail (rate limits, outages, slow answers, dropped
or reset connections) with :meth:`LocalMixpanel.fail_next` (the next requests) and
:meth:`LocalMixpanel.fail_for` (every request for a while).

It shares no code with the exporter it judges. Example::

    import os
    from otel_mixpanel.testing import LocalMixpanel

    with LocalMixpanel() as mixpanel:
        os.environ.update(mixpanel.env())
        ...  # run code that exports
        assert mixpanel.wait_for(lambda m: len(m.events_named("Signed Up")) == 1)
        assert mixpanel.profiles["u1"]["plan"] == "pro"

Scripting a rate limit that the exporter should retry::

    mixpanel.fail_next(status=429, headers={"Retry-After": "1"}, endpoint="/import")

An outage of half a second, during which every request is refused::

    mixpanel.fail_for(0.5, status=503)
"""

from __future__ import annotations

from ._server import LocalMixpanel
from ._wire import ReceivedRequest, Rejection

__all__ = ["LocalMixpanel", "ReceivedRequest", "Rejection"]
