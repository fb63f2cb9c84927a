"""Business moments as stdlib logging lines, delivered to Mixpanel.

Run it::

    python examples/logging_app.py

The OpenTelemetry logging handler (from ``opentelemetry-instrumentation-logging``)
turns each record into an OpenTelemetry log record; ``extra=`` keys starting
with ``mixpanel.`` become the Mixpanel event. Without
``OTEL_EXPORTER_MIXPANEL_TOKEN`` it starts a local Mixpanel and prints what arrived.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource

from otel_mixpanel import MixpanelIdentityLogProcessor, MixpanelLogExporter, bind_identity
from otel_mixpanel.logs import logging_handler
from otel_mixpanel.testing import LocalMixpanel

log = logging.getLogger("shop")


def handle_checkout(user_id: str, sku: str) -> None:
    """One request: identity bound once, then ordinary logging calls."""
    with bind_identity(user_id=user_id):
        log.info("cart viewed")  # not tagged: stays in your logs only
        log.info(
            "checkout completed",
            extra={
                "mixpanel.event": "Checkout Completed",
                "mixpanel.properties.sku": sku,
                "mixpanel.people.add.orders": 1,
            },
        )


def main() -> int:
    local: Optional[LocalMixpanel] = None
    if not os.environ.get("OTEL_EXPORTER_MIXPANEL_TOKEN"):
        local = LocalMixpanel().start()
        os.environ.update(local.env())
    provider = LoggerProvider(resource=Resource.create({"service.name": "logging-app"}))
    provider.add_log_record_processor(MixpanelIdentityLogProcessor())
    provider.add_log_record_processor(BatchLogRecordProcessor(MixpanelLogExporter()))
    logging.basicConfig(level=logging.INFO)
    handler = logging_handler(provider)
    logging.getLogger().addHandler(handler)
    try:
        handle_checkout("user-9", "sku-3")
    finally:
        logging.getLogger().removeHandler(handler)  # nothing logged after shutdown
        provider.shutdown()
    if local is not None:
        for event in local.unique_events():
            print(f"received {event['event']!r} for {event['properties']['distinct_id']}")
        print(f"profile user-9: {local.profiles.get('user-9')}")
        local.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
