"""A signup and a purchase, tagged for Mixpanel on ordinary OpenTelemetry spans.

Run it::

    python examples/quickstart.py

With ``OTEL_EXPORTER_MIXPANEL_TOKEN`` set it sends to your Mixpanel project
(``OTEL_EXPORTER_MIXPANEL_REGION=eu`` or ``in`` if the project lives there).
Without it, it starts a local Mixpanel-compatible server, sends there, and
prints what that server received.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Optional

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from otel_mixpanel import MixpanelSpanExporter
from otel_mixpanel.testing import LocalMixpanel

tracer = trace.get_tracer("quickstart")


def sign_up(user_id: str, email: str, plan: str) -> None:
    """The application's own code: a span it would have anyway, plus tags."""
    with tracer.start_as_current_span("POST /signup") as span:
        span.set_attribute("mixpanel.event", "Signed Up")
        span.set_attribute("mixpanel.user_id", user_id)
        span.set_attribute("mixpanel.properties.plan", plan)
        span.set_attribute("mixpanel.people.set.$email", email)
        span.set_attribute("mixpanel.people.set.plan", plan)
        span.set_attribute("mixpanel.people.set_once.first_seen", "2026-11-23")


def purchase(user_id: str, sku: str, amount: float) -> None:
    """A purchase: an event, a counter, a charge, and the company's group profile."""
    with tracer.start_as_current_span("POST /checkout") as span:
        span.set_attribute("mixpanel.event", "Purchased")
        span.set_attribute("mixpanel.user_id", user_id)
        span.set_attribute("mixpanel.properties.sku", sku)
        span.set_attribute("mixpanel.properties.amount", amount)
        span.set_attribute("mixpanel.groups.company", "acme")
        span.set_attribute("mixpanel.people.add.purchases", 1)
        span.set_attribute("mixpanel.people.track_charge", amount)
        span.set_attribute("mixpanel.group.key", "company")
        span.set_attribute("mixpanel.group.id", "acme")
        span.set_attribute("mixpanel.group.set.plan", "team")


def print_received(mixpanel: LocalMixpanel) -> None:
    """What the local Mixpanel received, as a short table."""
    print(f"{'event':<12} {'distinct_id':<10} properties")
    for event in mixpanel.unique_events():
        props: dict[str, Any] = event["properties"]
        shown = {k: v for k, v in props.items() if k in ("plan", "sku", "amount", "company")}
        print(f"{event['event']:<12} {props['distinct_id']:<10} {json.dumps(shown)}")
    print()
    print(f"{'profile update':<16} {'distinct_id':<10} value")
    for update in mixpanel.profile_updates:
        operation = next(k for k in update if k.lstrip("$") in _OPERATIONS)
        print(f"{operation:<16} {update['$distinct_id']:<10} {json.dumps(update[operation])}")
    for update in mixpanel.group_updates:
        operation = next(k for k in update if k.lstrip("$") in _OPERATIONS)
        group = f"{update['$group_key']}={update['$group_id']}"
        print(f"group {operation:<10} {group:<10} {json.dumps(update[operation])}")


_OPERATIONS = {"set", "set_once", "add", "append", "union", "remove", "unset", "delete"}


def main() -> int:
    local: Optional[LocalMixpanel] = None
    if not os.environ.get("OTEL_EXPORTER_MIXPANEL_TOKEN"):
        local = LocalMixpanel().start()
        os.environ.update(local.env())
        print(f"No OTEL_EXPORTER_MIXPANEL_TOKEN: sending to a local Mixpanel at {local.url}\n")
    provider = TracerProvider(resource=Resource.create({"service.name": "quickstart"}))
    exporter = MixpanelSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    try:
        sign_up("user-42", "ada@example.com", "pro")
        purchase("user-42", "sku-1", 29.0)
    finally:
        provider.shutdown()  # flushes the batch processor, then closes the exporter
    dropped = exporter.stats()["dropped"]
    if local is not None:
        print_received(local)
        local.stop()
    else:
        print(f"sent: {exporter.stats()['sent']}")
    if dropped:
        print(f"dropped: {dropped}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
