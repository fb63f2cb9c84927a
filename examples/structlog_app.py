"""Business moments as structlog lines, delivered to Mixpanel.

Run it::

    python examples/structlog_app.py

Without ``OTEL_EXPORTER_MIXPANEL_TOKEN`` it starts a local Mixpanel and prints
what arrived. The structlog chain renders as usual; the ``mixpanel_*`` keys are
removed from the rendered lines.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import structlog
from opentelemetry._logs import set_logger_provider
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource

from otel_mixpanel import MixpanelIdentityLogProcessor, MixpanelLogExporter
from otel_mixpanel.structlog import MixpanelProcessor
from otel_mixpanel.testing import LocalMixpanel


def handle_signup(user_id: str, plan: str) -> None:
    """One request: identity bound once, then ordinary log lines."""
    structlog.contextvars.bind_contextvars(mixpanel_user_id=user_id)
    log = structlog.get_logger("shop")
    log.info("signup form received")  # identity alone: nothing is sent
    log.info(
        "user signed up",
        mixpanel_event="Signed Up",
        mixpanel_properties={"plan": plan},
        mixpanel_people_set={"plan": plan},
    )
    log.info("order paid", mixpanel_event="Order Paid", mixpanel_people_track_charge=49.0)
    structlog.contextvars.clear_contextvars()


def main() -> int:
    local: Optional[LocalMixpanel] = None
    if not os.environ.get("OTEL_EXPORTER_MIXPANEL_TOKEN"):
        local = LocalMixpanel().start()
        os.environ.update(local.env())
    provider = LoggerProvider(resource=Resource.create({"service.name": "structlog-app"}))
    provider.add_log_record_processor(MixpanelIdentityLogProcessor())
    provider.add_log_record_processor(BatchLogRecordProcessor(MixpanelLogExporter()))
    set_logger_provider(provider)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            MixpanelProcessor(remove_keys=True),
            structlog.processors.JSONRenderer(),
        ],
    )
    try:
        handle_signup("user-7", "pro")
    finally:
        provider.shutdown()
    if local is not None:
        for event in local.unique_events():
            print(f"received {event['event']!r} for {event['properties']['distinct_id']}")
        print(f"profile user-7: {local.profiles.get('user-7')}")
        local.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
