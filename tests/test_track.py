"""``otel_mixpanel.track()``, ``alias()`` and the profile calls, through
``configure()``'s pipeline to the local Mixpanel over real HTTP: each sends what
the same tags on a span send, takes the bound identity, keeps the application's
order with spans and log records, and never raises."""

from __future__ import annotations

import datetime
import logging
import os
import re
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

import otel_mixpanel
from otel_mixpanel import MixpanelPipeline, bind_identity
from otel_mixpanel._inputs import _track
from otel_mixpanel.pytest_plugin import MixpanelCapture
from otel_mixpanel.testing import LocalMixpanel
from tests.helpers import log

Record = Dict[str, Any]
MakePipeline = Callable[..., MixpanelPipeline]
# What differs between two messages made from the same tags at different moments.
DERIVED = {"time", "$insert_id", "$duration", "trace_id", "span_id"}
CHARGE_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


@pytest.fixture
def make_pipeline(mixpanel: LocalMixpanel) -> Iterator[MakePipeline]:
    """``configure()`` on providers of this test's own, aimed at the local
    Mixpanel; every pipeline made is shut down after the test."""
    made: List[MixpanelPipeline] = []

    def make(**settings: Any) -> MixpanelPipeline:
        resource = Resource.create({"service.name": "shop"})
        pipeline = otel_mixpanel.configure(
            token=mixpanel.token, api_host=mixpanel.url,
            tracer_provider=TracerProvider(resource=resource),
            logger_provider=LoggerProvider(resource=resource), **settings,
        )
        made.append(pipeline)
        return pipeline

    yield make
    for pipeline in made:
        pipeline.shutdown(timeout_millis=2_000)


@pytest.fixture
def pipeline(make_pipeline: MakePipeline) -> MixpanelPipeline:
    return make_pipeline()


def tag_span(pipeline: MixpanelPipeline, attributes: Mapping[str, Any]) -> None:
    """One ended span carrying *attributes*."""
    tracer = pipeline.tracer_provider.get_tracer("shop")
    with tracer.start_as_current_span("op", attributes=dict(attributes)):
        pass


def deliver(pipeline: MixpanelPipeline, mixpanel: LocalMixpanel) -> None:
    """Everything emitted so far is answered by Mixpanel, and accepted."""
    assert pipeline.force_flush(), pipeline.stats()
    assert mixpanel.rejected == []


def without(record: Mapping[str, Any], names: Any) -> Record:
    return {name: value for name, value in record.items() if name not in names}


def one(records: List[Record], **match: Any) -> Record:
    """The only record whose fields (or properties) equal *match*."""
    found = [r for r in records
             if all(r.get(k, r.get("properties", {}).get(k)) == v for k, v in match.items())]
    assert len(found) == 1, (match, records)
    return found[0]


# -- events ---------------------------------------------------------------


def test_track_sends_what_the_same_tags_on_a_span_send(
    mixpanel: LocalMixpanel, pipeline: MixpanelPipeline
) -> None:
    """Every argument of track() lands where its span attribute lands."""
    provider = pipeline.logger_provider
    otel_mixpanel.track(
        "Signed Up", {"plan": "pro", "seats": 3, "tags": ["a", "b"]},
        user_id="u1", device_id="d1", ip="203.0.113.9",
        groups={"company": "acme", "team": ["red", "blue"]}, logger_provider=provider,
    )
    tag_span(pipeline, {
        "mixpanel.event": "Signed Up", "mixpanel.properties.plan": "pro",
        "mixpanel.properties.seats": 3, "mixpanel.properties.tags": ("a", "b"),
        "mixpanel.user_id": "u1", "mixpanel.device_id": "d1", "mixpanel.ip": "203.0.113.9",
        "mixpanel.groups.company": "acme", "mixpanel.groups.team": ("red", "blue"),
    })
    deliver(pipeline, mixpanel)

    assert [e["event"] for e in mixpanel.events] == ["Signed Up", "Signed Up"]
    tracked, spanned = (e["properties"] for e in mixpanel.events)
    assert "$duration" not in tracked and "$duration" in spanned  # arrival order: call, span
    assert without(tracked, DERIVED) == without(spanned, DERIVED) == {
        "plan": "pro", "seats": 3, "tags": ["a", "b"],
        "distinct_id": "u1", "$user_id": "u1", "$device_id": "d1", "ip": "203.0.113.9",
        "company": "acme", "team": ["red", "blue"],
        "service.name": "shop", "mp_lib": "otel-mixpanel",
        "$lib_version": otel_mixpanel.__version__,
    }
    assert tracked["$insert_id"] != spanned["$insert_id"]


def test_track_without_ids_or_properties(
    mixpanel: LocalMixpanel, pipeline: MixpanelPipeline
) -> None:
    """The smallest call: an anonymous event stamped with the time of the call."""
    before = int(time.time() * 1000)
    otel_mixpanel.track("Opened", logger_provider=pipeline.logger_provider)
    after = int(time.time() * 1000)
    deliver(pipeline, mixpanel)
    (event,) = mixpanel.events
    assert event["event"] == "Opened"
    assert event["properties"]["distinct_id"] == ""
    assert before <= event["properties"]["time"] <= after
    assert re.fullmatch(r"[0-9a-f]{32}", event["properties"]["$insert_id"])


@pytest.mark.needs_sdk("1.33", "mapping-valued log attributes; before, nested ones arrive as JSON")
def test_nested_mapping_properties_arrive_as_objects(
    mixpanel: LocalMixpanel, pipeline: MixpanelPipeline
) -> None:
    """A property whose value is a mapping (which no span attribute can hold)
    arrives as a JSON object, nested lists and mappings included."""
    cart = {"items": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}],
            "total": {"eur": 3.5, "coupon": None}}
    otel_mixpanel.track("Cart Viewed", {"cart": cart, "step": 2}, distinct_id="u1",
                        logger_provider=pipeline.logger_provider)
    deliver(pipeline, mixpanel)
    properties = mixpanel.events_named("Cart Viewed")[0]["properties"]
    assert properties["cart"] == cart
    assert properties["step"] == 2


@pytest.mark.parametrize(("given", "expected_ms"), [
    (datetime.datetime(2024, 5, 1, 12, 0, 0, 250_000, tzinfo=datetime.timezone.utc),
     1_714_564_800_250),
    (datetime.datetime(2024, 5, 1, 14, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
     1_714_564_800_000),
    (1_714_564_800, 1_714_564_800_000),        # epoch seconds
    (1_714_564_800.5, 1_714_564_800_500),      # fractional seconds
    (1_714_564_800_250, 1_714_564_800_250),    # epoch milliseconds
], ids=["datetime-utc", "datetime-offset", "seconds", "float-seconds", "milliseconds"])
def test_time(
    mixpanel: LocalMixpanel, pipeline: MixpanelPipeline, given: Any, expected_ms: int
) -> None:
    """*time* replaces the event time; Mixpanel gets milliseconds."""
    otel_mixpanel.track("Imported", distinct_id="u1", time=given,
                        logger_provider=pipeline.logger_provider)
    deliver(pipeline, mixpanel)
    assert mixpanel.events_named("Imported")[0]["properties"]["time"] == expected_ms
    assert pipeline.stats()["adjusted"] == {}


def test_insert_id_deduplicates(mixpanel: LocalMixpanel, pipeline: MixpanelPipeline) -> None:
    """The same insert_id (and time) sent twice is one event for Mixpanel; a
    call without one derives a fresh id each time."""
    provider = pipeline.logger_provider
    for _ in range(2):
        otel_mixpanel.track("Paid", {"amount": 10}, distinct_id="u1", insert_id="order-1001",
                            time=1_714_564_800, logger_provider=provider)
    otel_mixpanel.track("Paid", {"amount": 12}, distinct_id="u1", insert_id="order-1002",
                        time=1_714_564_800, logger_provider=provider)
    for _ in range(2):
        otel_mixpanel.track("Viewed", distinct_id="u1", time=1_714_564_800,
                            logger_provider=provider)
    deliver(pipeline, mixpanel)
    paid = [e["properties"]["$insert_id"] for e in mixpanel.events if e["event"] == "Paid"]
    assert paid == ["order-1001", "order-1001", "order-1002"]  # both copies were sent
    assert sorted(e["properties"]["amount"] for e in mixpanel.events_named("Paid")) == [10, 12]
    assert len(mixpanel.events_named("Viewed")) == 2  # two distinct calls stay two events


def test_identical_calls_in_one_clock_tick_stay_two_events(
    mixpanel: LocalMixpanel, pipeline: MixpanelPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clock that does not move between two identical calls (Windows' 15.6 ms
    tick before Python 3.13) must not give them one $insert_id: Mixpanel would
    keep one of the two."""
    frozen = (time.time_ns() // 1_000_000 + 1) * 1_000_000  # a whole ms, just ahead
    monkeypatch.setattr(_track, "_clock", types.SimpleNamespace(time_ns=lambda: frozen))
    for _ in range(3):
        otel_mixpanel.track("Item Added", {"sku": "a"}, distinct_id="u1",
                            logger_provider=pipeline.logger_provider)
    deliver(pipeline, mixpanel)
    added = mixpanel.events_named("Item Added")
    assert len(added) == 3
    assert {e["properties"]["time"] for e in added} == {frozen // 1_000_000}


def test_groups_put_the_event_in_its_groups(
    mixpanel: LocalMixpanel, pipeline: MixpanelPipeline
) -> None:
    """*groups* maps a group key to one id or several."""
    otel_mixpanel.track("Invoice Paid", distinct_id="u1",
                        groups={"company": "acme", "project": ("p1", "p2")},
                        logger_provider=pipeline.logger_provider)
    deliver(pipeline, mixpanel)
    properties = mixpanel.events_named("Invoice Paid")[0]["properties"]
    assert (properties["company"], properties["project"]) == ("acme", ["p1", "p2"])


def test_alias_is_the_span_tags_create_alias(
    mixpanel: LocalMixpanel, pipeline: MixpanelPipeline
) -> None:
    """alias(alias_id, original): mixpanel-python's argument order, the span's $create_alias."""
    otel_mixpanel.alias("new-by-call", "old-by-call", logger_provider=pipeline.logger_provider)
    tag_span(pipeline, {"mixpanel.distinct_id": "old-by-span", "mixpanel.alias": "new-by-span"})
    deliver(pipeline, mixpanel)
    assert [e["event"] for e in mixpanel.events] == ["$create_alias", "$create_alias"]
    by_call, by_span = (without(e["properties"], DERIVED) for e in mixpanel.events)
    assert by_call == {"distinct_id": "old-by-call", "alias": "new-by-call"}
    assert by_span == {"distinct_id": "old-by-span", "alias": "new-by-span"}


# -- profile and group updates ----------------------------------------------


class Case(NamedTuple):
    """A call on *subject* (a distinct id, or a group id of ``company``), the
    span tags that mean the same, and the update both must produce."""

    call: Callable[[str, LoggerProvider], None]
    tags: Dict[str, Any]
    update: Record


PEOPLE = {
    "set": Case(
        lambda u, p: otel_mixpanel.people_set(
            u, {"plan": "pro", "$email": "ada@example.com"}, logger_provider=p),
        {"mixpanel.people.set.plan": "pro", "mixpanel.people.set.$email": "ada@example.com"},
        {"$set": {"plan": "pro", "$email": "ada@example.com"}}),
    "set-with-ip": Case(
        lambda u, p: otel_mixpanel.people_set(u, {"plan": "pro"}, ip="203.0.113.9",
                                              logger_provider=p),
        {"mixpanel.people.set.plan": "pro", "mixpanel.ip": "203.0.113.9"},
        {"$set": {"plan": "pro"}, "$ip": "203.0.113.9"}),
    "set_once": Case(
        lambda u, p: otel_mixpanel.people_set_once(u, {"first_seen": "2024-05-01"},
                                                   logger_provider=p),
        {"mixpanel.people.set_once.first_seen": "2024-05-01"},
        {"$set_once": {"first_seen": "2024-05-01"}}),
    "increment": Case(
        lambda u, p: otel_mixpanel.people_increment(u, {"logins": 2, "credits": -1.5},
                                                    logger_provider=p),
        {"mixpanel.people.add.logins": 2, "mixpanel.people.add.credits": -1.5},
        {"$add": {"logins": 2, "credits": -1.5}}),
    "append": Case(
        lambda u, p: otel_mixpanel.people_append(u, {"pages": "home"}, logger_provider=p),
        {"mixpanel.people.append.pages": "home"},
        {"$append": {"pages": "home"}}),
    "union": Case(
        lambda u, p: otel_mixpanel.people_union(u, {"tags": ["a", "b"]}, logger_provider=p),
        {"mixpanel.people.union.tags": ("a", "b")},
        {"$union": {"tags": ["a", "b"]}}),
    "remove": Case(
        lambda u, p: otel_mixpanel.people_remove(u, {"tags": "a"}, logger_provider=p),
        {"mixpanel.people.remove.tags": "a"},
        {"$remove": {"tags": "a"}}),
    "unset": Case(
        lambda u, p: otel_mixpanel.people_unset(u, ["plan", "seats"], logger_provider=p),
        {"mixpanel.people.unset": ("plan", "seats")},
        {"$unset": ["plan", "seats"]}),
    "unset-one-name": Case(  # one name, not its letters
        lambda u, p: otel_mixpanel.people_unset(u, "plan", logger_provider=p),
        {"mixpanel.people.unset": "plan"},
        {"$unset": ["plan"]}),
    "delete": Case(
        lambda u, p: otel_mixpanel.people_delete(u, logger_provider=p),
        {"mixpanel.people.delete": True},
        {"$delete": ""}),
    "track_charge": Case(
        lambda u, p: otel_mixpanel.people_track_charge(u, 19.5, {"sku": "a"}, logger_provider=p),
        {"mixpanel.people.track_charge": 19.5, "mixpanel.people.track_charge.sku": "a"},
        {"$append": {"$transactions": {"$amount": 19.5, "sku": "a"}}}),
}

GROUPS = {
    "set": Case(
        lambda g, p: otel_mixpanel.group_set("company", g, {"plan": "enterprise"},
                                             logger_provider=p),
        {"mixpanel.group.set.plan": "enterprise"}, {"$set": {"plan": "enterprise"}}),
    "set_once": Case(
        lambda g, p: otel_mixpanel.group_set_once("company", g, {"founded": 1999},
                                                  logger_provider=p),
        {"mixpanel.group.set_once.founded": 1999}, {"$set_once": {"founded": 1999}}),
    "union": Case(
        lambda g, p: otel_mixpanel.group_union("company", g, {"regions": ["eu"]},
                                               logger_provider=p),
        {"mixpanel.group.union.regions": ("eu",)}, {"$union": {"regions": ["eu"]}}),
    "remove": Case(
        lambda g, p: otel_mixpanel.group_remove("company", g, {"regions": "us"},
                                                logger_provider=p),
        {"mixpanel.group.remove.regions": "us"}, {"$remove": {"regions": "us"}}),
    "unset": Case(
        lambda g, p: otel_mixpanel.group_unset("company", g, ["plan"], logger_provider=p),
        {"mixpanel.group.unset": ("plan",)}, {"$unset": ["plan"]}),
    "delete": Case(
        lambda g, p: otel_mixpanel.group_delete("company", g, logger_provider=p),
        {"mixpanel.group.delete": True}, {"$delete": ""}),
}


def charge_time_checked(update: Record) -> Record:
    """The update without its charge's ``$time``, which must be Mixpanel's format."""
    transaction = update.get("$append", {}).get("$transactions")
    if isinstance(transaction, dict):
        assert CHARGE_TIME.fullmatch(transaction.pop("$time")), update
    return update


@pytest.mark.parametrize("name", list(PEOPLE))
def test_people_call_sends_what_the_span_tags_send(
    mixpanel: LocalMixpanel, pipeline: MixpanelPipeline, name: str
) -> None:
    """Each profile call: exactly one /engage update, the one its tags make."""
    case = PEOPLE[name]
    case.call("by-call", pipeline.logger_provider)
    tag_span(pipeline, {"mixpanel.distinct_id": "by-span", **case.tags})
    deliver(pipeline, mixpanel)

    assert mixpanel.events == [] and mixpanel.group_updates == []
    updates = mixpanel.profile_updates
    assert [u["$distinct_id"] for u in updates] == ["by-call", "by-span"]
    by_call, by_span = (charge_time_checked(without(u, {"$distinct_id"})) for u in updates)
    assert by_call == by_span == {"$token": mixpanel.token, "$ip": "0", **case.update}


@pytest.mark.parametrize("name", list(GROUPS))
def test_group_call_sends_what_the_span_tags_send(
    mixpanel: LocalMixpanel, pipeline: MixpanelPipeline, name: str
) -> None:
    """Each group call: exactly one /groups update, the one its tags make."""
    case = GROUPS[name]
    case.call("by-call", pipeline.logger_provider)
    tag_span(pipeline, {"mixpanel.group.key": "company", "mixpanel.group.id": "by-span",
                        **case.tags})
    deliver(pipeline, mixpanel)

    assert mixpanel.events == [] and mixpanel.profile_updates == []
    updates = mixpanel.group_updates
    assert [u["$group_id"] for u in updates] == ["by-call", "by-span"]
    by_call, by_span = (without(u, {"$group_id"}) for u in updates)
    assert by_call == by_span == {"$token": mixpanel.token, "$group_key": "company",
                                  **case.update}


def test_profile_calls_build_the_profile_mixpanel_keeps(
    mixpanel: LocalMixpanel, pipeline: MixpanelPipeline
) -> None:
    """A user's and a group's whole life through the calls, applied in call order."""
    provider = pipeline.logger_provider
    otel_mixpanel.people_set("u1", {"plan": "free", "name": "Ada"}, logger_provider=provider)
    otel_mixpanel.people_set_once("u1", {"plan": "ignored", "source": "ad"},
                                  logger_provider=provider)
    otel_mixpanel.people_increment("u1", {"logins": 1}, logger_provider=provider)
    otel_mixpanel.people_increment("u1", {"logins": 2}, logger_provider=provider)
    otel_mixpanel.people_append("u1", {"pages": "home"}, logger_provider=provider)
    otel_mixpanel.people_append("u1", {"pages": "pricing"}, logger_provider=provider)
    otel_mixpanel.people_union("u1", {"tags": ["a", "b"]}, logger_provider=provider)
    otel_mixpanel.people_union("u1", {"tags": ["b", "c"]}, logger_provider=provider)
    otel_mixpanel.people_remove("u1", {"tags": "a"}, logger_provider=provider)
    otel_mixpanel.people_unset("u1", ["name"], logger_provider=provider)
    otel_mixpanel.people_track_charge("u1", 9.5, logger_provider=provider)
    otel_mixpanel.people_set("u2", {"plan": "pro"}, logger_provider=provider)
    otel_mixpanel.people_delete("u2", logger_provider=provider)

    otel_mixpanel.group_set("company", "acme", {"plan": "free", "seats": 5},
                            logger_provider=provider)
    otel_mixpanel.group_set_once("company", "acme", {"plan": "ignored", "founded": 1999},
                                 logger_provider=provider)
    otel_mixpanel.group_union("company", "acme", {"regions": ["eu", "us"]},
                              logger_provider=provider)
    otel_mixpanel.group_remove("company", "acme", {"regions": "us"}, logger_provider=provider)
    otel_mixpanel.group_unset("company", "acme", ["seats"], logger_provider=provider)
    otel_mixpanel.group_set("company", "gone", {"plan": "pro"}, logger_provider=provider)
    otel_mixpanel.group_delete("company", "gone", logger_provider=provider)
    deliver(pipeline, mixpanel)

    profile = mixpanel.profiles["u1"]
    (charge,) = profile.pop("$transactions")
    assert charge["$amount"] == 9.5
    assert profile == {"plan": "free", "source": "ad", "logins": 3,
                       "pages": ["home", "pricing"], "tags": ["b", "c"]}
    assert "u2" not in mixpanel.profiles
    assert mixpanel.groups == {("company", "acme"): {
        "plan": "free", "founded": 1999, "regions": ["eu"]}}


# -- identity and order -----------------------------------------------------


def test_track_takes_the_bound_identity_and_explicit_ids_win(
    mixpanel: LocalMixpanel, pipeline: MixpanelPipeline
) -> None:
    """Inside bind_identity() track() is the bound user's, like a span there;
    an id given to the call wins, exactly as the same attribute on a span does."""
    provider = pipeline.logger_provider
    with bind_identity(user_id="u-bound", device_id="d-bound"):
        otel_mixpanel.track("Bound", logger_provider=provider)
        otel_mixpanel.track("Explicit", distinct_id="explicit", logger_provider=provider)
        tag_span(pipeline, {"mixpanel.event": "Explicit Span", "mixpanel.distinct_id": "explicit"})
        otel_mixpanel.track("Other User", user_id="u-other", logger_provider=provider)
    otel_mixpanel.track("After", logger_provider=provider)
    deliver(pipeline, mixpanel)

    def identity(name: str) -> Record:
        properties = mixpanel.events_named(name)[0]["properties"]
        return {k: properties.get(k) for k in ("distinct_id", "$user_id", "$device_id")}

    assert identity("Bound") == {
        "distinct_id": "u-bound", "$user_id": "u-bound", "$device_id": "d-bound"}
    assert identity("Explicit")["distinct_id"] == "explicit"
    assert identity("Explicit") == identity("Explicit Span")
    assert identity("Other User") == {
        "distinct_id": "u-other", "$user_id": "u-other", "$device_id": "d-bound"}
    assert identity("After") == {"distinct_id": "", "$user_id": None, "$device_id": None}


@pytest.mark.parametrize("batch", [1, 1_000], ids=["one-per-batch", "one-batch"])
def test_events_keep_the_order_of_the_block(
    mixpanel: LocalMixpanel, make_pipeline: MakePipeline, batch: int
) -> None:
    """track() calls, ended spans and emitted log records of one bound block
    arrive in the order the application made them (a span counts when it ends)."""
    pipeline = make_pipeline(max_export_batch_size=batch)
    provider = pipeline.logger_provider
    tracer = pipeline.tracer_provider.get_tracer("shop")
    logger = provider.get_logger("shop")
    with bind_identity(user_id="u-order"):
        otel_mixpanel.track("1 track", logger_provider=provider)
        with tracer.start_as_current_span("s") as span:
            span.set_attribute("mixpanel.event", "3 span, ended after 2")
            otel_mixpanel.track("2 track inside the span", logger_provider=provider)
        log(logger, body="x", attributes={"mixpanel.event": "4 log record"})
        otel_mixpanel.track("5 track", logger_provider=provider)
        tag_span(pipeline, {"mixpanel.event": "6 span"})
        otel_mixpanel.track("7 track", logger_provider=provider)
    deliver(pipeline, mixpanel)
    arrived = [e["event"] for e in mixpanel.events]
    assert arrived == sorted(arrived) and len(arrived) == 7, arrived
    assert {e["properties"]["distinct_id"] for e in mixpanel.events} == {"u-order"}


@pytest.mark.parametrize(("steps", "final"), [
    (["call:a", "span:b", "call:c"], "c"),
    (["call:a", "call:c", "span:b"], "b"),
    (["span:a", "call:b", "log:c", "call:d"], "d"),
    (["call:a", "log:b", "span:c"], "c"),
])
@pytest.mark.parametrize("batch", [1, 1_000], ids=["one-per-batch", "one-batch"])
def test_profile_updates_apply_in_the_order_made(
    mixpanel: LocalMixpanel, make_pipeline: MakePipeline, steps: List[str], final: str,
    batch: int,
) -> None:
    """people_set() and the same $set on a span or a log record: the last one made wins."""
    pipeline = make_pipeline(max_export_batch_size=batch)
    provider = pipeline.logger_provider
    for step in steps:
        source, plan = step.split(":")
        if source == "call":
            otel_mixpanel.people_set("u1", {"plan": plan}, logger_provider=provider)
        elif source == "span":
            tag_span(pipeline, {"mixpanel.distinct_id": "u1", "mixpanel.people.set.plan": plan})
        else:
            log(provider.get_logger("shop"), body="x", attributes={
                "mixpanel.distinct_id": "u1", "mixpanel.people.set.plan": plan})
    deliver(pipeline, mixpanel)
    assert [u["$set"]["plan"] for u in mixpanel.profile_updates] == [
        step.split(":")[1] for step in steps]
    assert mixpanel.profiles["u1"] == {"plan": final}


# -- never raises -------------------------------------------------------------


class Unreadable(Mapping[str, Any]):
    """A mapping that fails when read."""

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("unreadable")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("unreadable")

    def __len__(self) -> int:
        raise RuntimeError("unreadable")


class BrokenProvider:
    """A logger provider whose loggers cannot be made."""

    def add_log_record_processor(self, processor: Any) -> None:
        pass

    def get_logger(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no logger")


def test_bad_input_never_raises_and_is_counted(
    mixpanel: LocalMixpanel, pipeline: MixpanelPipeline, caplog: pytest.LogCaptureFixture
) -> None:
    """Wrong types reach the pipeline, which drops them counted by reason;
    the valid parts of the same call still go."""
    p: Any = pipeline.logger_provider
    bad: List[Callable[[], None]] = [
        lambda: otel_mixpanel.track(None, logger_provider=p),  # type: ignore[arg-type]
        lambda: otel_mixpanel.track(42, logger_provider=p),  # type: ignore[arg-type]
        lambda: otel_mixpanel.track("  ", logger_provider=p),
        lambda: otel_mixpanel.track("Bad Props", 5, distinct_id="u1",  # type: ignore[arg-type]
                                    logger_provider=p),
        lambda: otel_mixpanel.track("Bad Props", object(), distinct_id="u1",  # type: ignore[arg-type]
                                    logger_provider=p),
        lambda: otel_mixpanel.track("Bad Time", distinct_id="u1", time="yesterday",
                                    insert_id="not an id!", groups=["acme"],  # type: ignore[arg-type]
                                    logger_provider=p),
        lambda: otel_mixpanel.people_set("u1", 5, logger_provider=p),  # type: ignore[arg-type]
        lambda: otel_mixpanel.people_set("u1", None, logger_provider=p),  # type: ignore[arg-type]
        lambda: otel_mixpanel.people_set(None, {"plan": "pro"},  # type: ignore[arg-type]
                                         logger_provider=p),
        lambda: otel_mixpanel.people_increment("u1", {"logins": "many"}, logger_provider=p),  # type: ignore[dict-item]
        lambda: otel_mixpanel.people_track_charge("u1", "lots", logger_provider=p),  # type: ignore[arg-type]
        lambda: otel_mixpanel.people_unset("u1", None, logger_provider=p),  # type: ignore[arg-type]
        lambda: otel_mixpanel.group_set("company", None, {"plan": "pro"},  # type: ignore[arg-type]
                                        logger_provider=p),
        lambda: otel_mixpanel.group_union("company", "acme", ["eu"],  # type: ignore[arg-type]
                                          logger_provider=p),
        lambda: otel_mixpanel.alias("", "old", logger_provider=p),
    ]
    with caplog.at_level(logging.ERROR, logger="otel_mixpanel"):
        for call in bad:
            assert call() is None
    assert caplog.records == []  # handled by the pipeline, not by the catch-all
    deliver(pipeline, mixpanel)

    stats = pipeline.stats()
    assert stats["dropped"] == {
        "invalid_event_name": 3, "not_a_mapping": 6, "add_not_a_number": 1,
        "profile_without_distinct_id": 1, "charge_without_amount": 1,
        "group_without_key_or_id": 1, "identity_without_ids": 1,
    }
    assert stats["adjusted"] == {"invalid_time": 1, "invalid_insert_id": 1}
    # What was valid in those calls still went: two events, nothing else.
    assert sorted(e["event"] for e in mixpanel.events) == ["Bad Props", "Bad Props", "Bad Time"]
    assert all("<" not in str(e["properties"]) for e in mixpanel.events)
    assert mixpanel.profile_updates == [] and mixpanel.group_updates == []


def test_failures_inside_the_call_are_logged_not_raised(
    mixpanel: LocalMixpanel, pipeline: MixpanelPipeline, caplog: pytest.LogCaptureFixture
) -> None:
    """A mapping that fails when read, a provider that fails, a wrong call:
    nothing reaches the caller but one error line each, and the next call works."""
    p: Any = pipeline.logger_provider
    with caplog.at_level(logging.ERROR, logger="otel_mixpanel"):
        assert otel_mixpanel.track("E", Unreadable(), logger_provider=p) is None
        assert otel_mixpanel.people_set("u1", Unreadable(), logger_provider=p) is None
        assert otel_mixpanel.track("E", logger_provider=BrokenProvider()) is None  # type: ignore[arg-type]
        assert otel_mixpanel.track() is None  # type: ignore[call-arg]
        # mixpanel-python's order, track(distinct_id, event, properties):
        assert otel_mixpanel.track("user-42", "Signed Up", {"plan": "pro"},  # type: ignore[arg-type, call-arg]
                                   logger_provider=p) is None
    assert len(caplog.records) == 5
    assert all("could not be emitted" in r.getMessage() for r in caplog.records)
    otel_mixpanel.track("Still Works", distinct_id="u1", logger_provider=p)
    deliver(pipeline, mixpanel)
    assert [e["event"] for e in mixpanel.events] == ["Still Works"]


def run_python(code: str, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    environ.update(env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=environ,
                          capture_output=True, text=True, timeout=60, check=False)


def test_without_an_sdk_logger_provider_it_warns_once() -> None:
    """No configure() yet (the global provider is the API's, which drops every
    record): the calls do not raise and one warning says what to do."""
    result = run_python("""
        import otel_mixpanel
        otel_mixpanel.track("Signed Up", {"plan": "pro"}, distinct_id="u1")
        otel_mixpanel.track("Signed Up", distinct_id="u2")
        otel_mixpanel.people_set("u1", {"plan": "pro"})
        otel_mixpanel.group_delete("company", "acme")
        print("returned")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "returned"
    assert result.stderr.count("no SDK logger provider is set") == 1, result.stderr
    assert "otel_mixpanel.configure()" in result.stderr


def test_the_default_provider_is_the_one_configure_sets(mixpanel: LocalMixpanel) -> None:
    """Without logger_provider=, the calls use the global provider that
    configure() set up; what was called before it is not sent."""
    result = run_python("""
        import otel_mixpanel
        otel_mixpanel.track("Before", distinct_id="u1")
        pipeline = otel_mixpanel.configure()
        otel_mixpanel.track("After", {"plan": "pro"}, distinct_id="u1")
        otel_mixpanel.people_set("u1", {"plan": "pro"})
        assert pipeline.shutdown()
    """, env=mixpanel.env())
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("no SDK logger provider is set") == 1, result.stderr
    assert mixpanel.wait_for(lambda m: "u1" in m.profiles)
    assert [e["event"] for e in mixpanel.events] == ["After"]
    assert mixpanel.profiles["u1"] == {"plan": "pro"}


def test_under_the_pytest_plugin(mixpanel_capture: MixpanelCapture) -> None:
    """The plugin's session pipeline sees the calls made with no provider given."""
    with bind_identity(user_id="plugin-user"):
        otel_mixpanel.track("Signed Up", {"plan": "pro"})
    otel_mixpanel.people_set("plugin-user", {"plan": "pro"})
    otel_mixpanel.people_increment("plugin-user", {"logins": 1})
    otel_mixpanel.group_set("company", "acme", {"tier": "gold"})
    event = mixpanel_capture.event("Signed Up")
    assert event["properties"]["distinct_id"] == "plugin-user"
    assert event["properties"]["plan"] == "pro"
    assert mixpanel_capture.profile("plugin-user") == {"plan": "pro", "logins": 1}
    assert mixpanel_capture.group("company", "acme") == {"tier": "gold"}
    assert mixpanel_capture.rejected() == []


MIGRATION = Path(__file__).parents[1] / "docs" / "migration.md"


@pytest.mark.parametrize("index", range(len(re.findall(r"```python\n", MIGRATION.read_text()))))
def test_migration_guide_blocks_deliver_what_they_call(mixpanel: LocalMixpanel, index: int) -> None:
    """Each Python block of the migration guide, run as a program against the
    local Mixpanel, delivers every event, profile and group it names in a call
    (tests/test_docs.py only runs it)."""
    code = re.findall(r"```python\n(.*?)```", MIGRATION.read_text(), re.DOTALL)[index]
    calls = re.sub(r"#.*", "", code)  # not the mixpanel-python calls in the comments
    events = re.findall(r"\btrack\(\s*\"([^\"]+)\"", calls)
    events += ["$create_alias"] * len(re.findall(r"\balias\(", calls))
    events += re.findall(r"\"mixpanel\.event\", \"([^\"]+)\"", calls)
    profiles = set(re.findall(r"\bpeople_\w+\(\s*\"([^\"]+)\"", calls))
    groups = set(re.findall(r"\bgroup_\w+\(\s*\"([^\"]+)\",\s*\"([^\"]+)\"", calls))
    assert events or profiles or groups, "a block that sends nothing"

    result = run_python(code, env=mixpanel.env())
    assert result.returncode == 0, result.stderr
    assert mixpanel.wait_for(lambda m: len(m.events) >= len(events)
                             and profiles <= set(m.profiles) and groups <= set(m.groups))
    assert sorted(e["event"] for e in mixpanel.events) == sorted(events)
    assert mixpanel.rejected == []
    if "user-42" in code:  # every block's user, whether named or bound
        assert {e["properties"]["distinct_id"] for e in mixpanel.events
                if e["event"] != "$create_alias"} == {"user-42"}
