"""Translation of tagged attributes into messages: every key of the convention."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, List, Mapping

import pytest

from otel_mixpanel._convention._translate import (
    LIBRARY_NAME,
    Record,
    derive_insert_id,
    is_tagged,
    parse_time_ms,
    translate,
)
from otel_mixpanel._model import Event, GroupUpdate, IdentityEvent, Message, ProfileUpdate
from otel_mixpanel._stats import Stats
from otel_mixpanel._version import __version__

T0 = 1_732_280_000_123


def run(attributes: Mapping[str, Any], stats: Stats | None = None, **context: Any) -> List[Message]:
    record = Record(attributes, context.pop("time_ms", T0), context.pop("seed", "seed"), **context)
    return translate(record, stats or Stats())


def only_event(messages: List[Message]) -> Event:
    events = [m for m in messages if type(m) is Event]
    assert len(events) == 1
    return events[0]


class TestEvent:
    def test_minimal_event(self) -> None:
        """An event name alone gives an event with the required properties."""
        event = only_event(run({"mixpanel.event": "Signed Up"}))
        assert event.name == "Signed Up"
        assert event.properties["time"] == T0
        assert event.properties["distinct_id"] == ""
        assert event.properties["$insert_id"] == derive_insert_id("seed", 0, "")
        assert event.properties["mp_lib"] == LIBRARY_NAME
        assert event.properties["$lib_version"] == __version__

    def test_context_properties(self) -> None:
        """Trace ids, duration and resource properties come from the record's context."""
        event = only_event(run(
            {"mixpanel.event": "E"}, trace_id="t" * 32, span_id="s" * 16, duration=0.25,
            resource={"service.name": "shop"},
        ))
        assert event.properties["trace_id"] == "t" * 32
        assert event.properties["span_id"] == "s" * 16
        assert event.properties["$duration"] == 0.25
        assert event.properties["service.name"] == "shop"

    def test_trace_ids_can_be_turned_off(self) -> None:
        """trace_ids=False leaves the ids out."""
        record = Record({"mixpanel.event": "E"}, T0, "s", trace_id="t", span_id="s")
        event = only_event(translate(record, Stats(), trace_ids=False))
        assert "trace_id" not in event.properties and "span_id" not in event.properties

    def test_properties_keyed_and_mapping_merge(self) -> None:
        """Keyed properties and a mapping merge; the keyed form wins a clash."""
        event = only_event(run({
            "mixpanel.event": "E",
            "mixpanel.properties": {"plan": "free", "seats": 3},
            "mixpanel.properties.plan": "pro",
            "mixpanel.properties.a.b": 1,
        }))
        assert event.properties["plan"] == "pro"
        assert event.properties["seats"] == 3
        assert event.properties["a.b"] == 1

    def test_reserved_properties_cannot_be_overridden_by_properties(self) -> None:
        """time, distinct_id and $insert_id come only from their own keys."""
        event = only_event(run({
            "mixpanel.event": "E", "mixpanel.distinct_id": "u1",
            "mixpanel.properties.distinct_id": "evil", "mixpanel.properties.time": 1,
        }))
        assert event.properties["distinct_id"] == "u1"
        assert event.properties["time"] == T0

    @pytest.mark.parametrize(
        ("attributes", "expected"),
        [
            ({"mixpanel.distinct_id": "d", "mixpanel.user_id": "u",
              "mixpanel.device_id": "v"}, "d"),
            ({"mixpanel.user_id": "u", "mixpanel.device_id": "v"}, "u"),
            ({"mixpanel.device_id": "v", "user.id": "o"}, "v"),
            ({"user.id": "o", "enduser.id": "e"}, "o"),
            ({"enduser.id": "e"}, "e"),
            ({"mixpanel.user_id": 42}, "42"),
            ({}, ""),
        ],
    )
    def test_distinct_id_fallbacks(self, attributes: dict[str, Any], expected: str) -> None:
        """distinct_id, then user_id, device_id, user.id, enduser.id, else ''."""
        event = only_event(run({"mixpanel.event": "E", **attributes}))
        assert event.properties["distinct_id"] == expected

    def test_user_and_device_ids(self) -> None:
        """$user_id and $device_id are sent for Simplified ID Merge."""
        event = only_event(run({"mixpanel.event": "E", "mixpanel.user_id": "u",
                                "mixpanel.device_id": "d"}))
        assert event.properties["$user_id"] == "u"
        assert event.properties["$device_id"] == "d"
        assert event.properties["distinct_id"] == "u"

    def test_ip_only_when_given(self) -> None:
        """No ip property unless mixpanel.ip is set: the server's address is not the user's."""
        assert "ip" not in only_event(run({"mixpanel.event": "E"})).properties
        event = only_event(run({"mixpanel.event": "E", "mixpanel.ip": "203.0.113.9"}))
        assert event.properties["ip"] == "203.0.113.9"

    def test_groups(self) -> None:
        """mixpanel.groups.<key> becomes the group-key property, one id or several."""
        event = only_event(run({
            "mixpanel.event": "E", "mixpanel.groups.company": "acme",
            "mixpanel.groups.team": ("a", "b"),
        }))
        assert event.properties["company"] == "acme"
        assert event.properties["team"] == ["a", "b"]

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (1_700_000_000, 1_700_000_000_000),
            (1_700_000_000.5, 1_700_000_000_500),
            (1_700_000_000_123, 1_700_000_000_123),
            ("2023-11-14T22:13:20Z", 1_700_000_000_000),
            ("2023-11-14T22:13:20", 1_700_000_000_000),
            ("2023-11-14T23:13:20+01:00", 1_700_000_000_000),
            ("1700000000", 1_700_000_000_000),
        ],
    )
    def test_time_override(self, value: Any, expected: int) -> None:
        """Seconds, milliseconds and ISO-8601 all become milliseconds."""
        event = only_event(run({"mixpanel.event": "E", "mixpanel.time": value}))
        assert event.properties["time"] == expected

    @pytest.mark.parametrize("value", ["yesterday", float("nan"), True, [1]])
    def test_invalid_time_keeps_default_and_counts(self, value: Any) -> None:
        """A bad time falls back to the record's own time, counted."""
        stats = Stats()
        event = only_event(run({"mixpanel.event": "E", "mixpanel.time": value}, stats))
        assert event.properties["time"] == T0
        assert stats.snapshot()["adjusted"] == {"invalid_time": 1}

    def test_insert_id_override(self) -> None:
        """A valid override is used as it is."""
        event = only_event(run({"mixpanel.event": "E", "mixpanel.insert_id": "order-42"}))
        assert event.properties["$insert_id"] == "order-42"

    @pytest.mark.parametrize("value", ["x" * 37, "has space", "", "ünïcode", 12])
    def test_invalid_insert_id_replaced_and_counted(self, value: Any) -> None:
        """An id Mixpanel would refuse is replaced by the derived one, never sent."""
        stats = Stats()
        event = only_event(run({"mixpanel.event": "E", "mixpanel.insert_id": value}, stats))
        assert event.properties["$insert_id"] == derive_insert_id("seed", 0, "")
        assert stats.snapshot()["adjusted"] == {"invalid_insert_id": 1}

    def test_insert_id_is_deterministic_and_distinct(self) -> None:
        """Same seed and position, same id; another position or seed, another id."""
        first = only_event(run({"mixpanel.event": "E"}, seed="a", position=1))
        again = only_event(run({"mixpanel.event": "E"}, seed="a", position=1))
        other = only_event(run({"mixpanel.event": "E"}, seed="a", position=2))
        assert first.properties["$insert_id"] == again.properties["$insert_id"]
        assert first.properties["$insert_id"] != other.properties["$insert_id"]
        assert len(first.properties["$insert_id"]) == 32

    @pytest.mark.parametrize("name", ["", "   ", 5])
    def test_invalid_event_name_dropped(self, name: Any) -> None:
        """No event for an empty or non-string name, and the drop is counted."""
        stats = Stats()
        assert run({"mixpanel.event": name}, stats) == []
        assert stats.snapshot()["dropped"] == {"invalid_event_name": 1}

    def test_identity_keys_alone_send_nothing(self) -> None:
        """Identity stamped on a span produces no message."""
        assert run({"mixpanel.distinct_id": "u", "mixpanel.user_id": "u",
                    "mixpanel.device_id": "d"}) == []

    def test_unknown_key_counted(self) -> None:
        """A misspelt key is counted, not silently ignored."""
        stats = Stats()
        run({"mixpanel.evnt": "E"}, stats)
        assert stats.snapshot()["dropped"] == {"unknown_key": 1}

    def test_inherited_identity(self) -> None:
        """A span event takes the span's identity, not its properties."""
        record = Record(
            {"mixpanel.event": "Clicked"}, T0, "s", 1,
            inherited={"mixpanel.user_id": "u9", "mixpanel.properties.plan": "pro"},
        )
        event = only_event(translate(record, Stats()))
        assert event.properties["distinct_id"] == "u9"
        assert "plan" not in event.properties


class TestProfileUpdates:
    def test_every_operation_is_its_own_update(self) -> None:
        """Several operations on one record become several updates, in a fixed order."""
        messages = run({
            "mixpanel.distinct_id": "u1",
            "mixpanel.people.set.$email": "a@example.com",
            "mixpanel.people.set_once.first_seen": "2024-01-01",
            "mixpanel.people.add.logins": 1,
            "mixpanel.people.append.pages": "home",
            "mixpanel.people.union.tags": ("a", "b"),
            "mixpanel.people.remove.tags": "c",
            "mixpanel.people.unset": ("old", "older"),
            "mixpanel.people.clear_charges": True,
            "mixpanel.people.track_charge": 9.99,
            "mixpanel.people.track_charge.sku": "A1",
            "mixpanel.people.delete": True,
        })
        updates = [m for m in messages if isinstance(m, ProfileUpdate)]
        assert [(u.operation, u.value) for u in updates] == [
            ("$set", {"$email": "a@example.com"}),
            ("$set_once", {"first_seen": "2024-01-01"}),
            ("$add", {"logins": 1}),
            ("$append", {"pages": "home"}),
            ("$union", {"tags": ["a", "b"]}),
            ("$remove", {"tags": "c"}),
            ("$unset", ["old", "older"]),
            ("$unset", ["$transactions"]),
            ("$append", {"$transactions": {"$amount": 9.99, "$time": "2024-11-22T12:53:20",
                                           "sku": "A1"}}),
            ("$delete", ""),
        ]
        assert all(u.distinct_id == "u1" for u in updates)
        assert all(u.modifiers == {"$ip": "0"} for u in updates)

    def test_payload_shape(self) -> None:
        """One operation per object, with $token, $distinct_id and $ip."""
        (update,) = run({"mixpanel.distinct_id": "u1", "mixpanel.people.set.plan": "pro"})
        assert update.payload("tok") == {
            "$token": "tok", "$distinct_id": "u1", "$ip": "0", "$set": {"plan": "pro"},
        }

    def test_modifiers(self) -> None:
        """mixpanel.ip and ignore_time ride on every update."""
        (update,) = run({"mixpanel.distinct_id": "u", "mixpanel.people.set.a": 1,
                         "mixpanel.ip": "198.51.100.1", "mixpanel.people.ignore_time": True})
        assert isinstance(update, ProfileUpdate)
        assert update.modifiers == {"$ip": "198.51.100.1", "$ignore_time": True}

    def test_structlog_style_mappings(self) -> None:
        """Mappings on the operation key work like the keyed form; charge takes 'amount'."""
        messages = run({
            "mixpanel.user_id": "u",
            "mixpanel.people.set": {"plan": "pro"},
            "mixpanel.people.track_charge": {"amount": 5, "sku": "B"},
        })
        values = [(m.operation, m.value) for m in messages if isinstance(m, ProfileUpdate)]
        assert values[0] == ("$set", {"plan": "pro"})
        assert values[1][1]["$transactions"]["$amount"] == 5
        assert values[1][1]["$transactions"]["sku"] == "B"

    def test_add_needs_numbers(self) -> None:
        """A non-number $add value is dropped alone and counted."""
        stats = Stats()
        (update,) = run({"mixpanel.distinct_id": "u", "mixpanel.people.add.a": 2,
                         "mixpanel.people.add.b": "x"}, stats)
        assert isinstance(update, ProfileUpdate)
        assert update.value == {"a": 2}
        assert stats.snapshot()["dropped"] == {"add_not_a_number": 1}

    def test_no_distinct_id_drops_updates(self) -> None:
        """A profile update needs someone to apply to."""
        stats = Stats()
        assert run({"mixpanel.people.set.a": 1}, stats) == []
        assert stats.snapshot()["dropped"] == {"profile_without_distinct_id": 1}

    def test_charge_without_amount(self) -> None:
        """Extra charge fields without an amount are dropped and counted."""
        stats = Stats()
        assert run({"mixpanel.distinct_id": "u", "mixpanel.people.track_charge.sku": "A"},
                   stats) == []
        assert stats.snapshot()["dropped"] == {"charge_without_amount": 1}


class TestGroupUpdates:
    def test_every_group_operation(self) -> None:
        """Group operations target mixpanel.group.key / .id."""
        messages = run({
            "mixpanel.group.key": "company", "mixpanel.group.id": "acme",
            "mixpanel.group.set.tier": "gold", "mixpanel.group.set_once.since": "2020",
            "mixpanel.group.union.regions": ["eu"], "mixpanel.group.remove.regions": "us",
            "mixpanel.group.unset": ["old"], "mixpanel.group.delete": True,
        })
        assert all(isinstance(m, GroupUpdate) for m in messages)
        assert [(m.operation, m.value) for m in messages if isinstance(m, GroupUpdate)] == [
            ("$set", {"tier": "gold"}), ("$set_once", {"since": "2020"}),
            ("$union", {"regions": ["eu"]}), ("$remove", {"regions": "us"}),
            ("$unset", ["old"]), ("$delete", ""),
        ]
        assert messages[0].payload("tok") == {
            "$token": "tok", "$group_key": "company", "$group_id": "acme", "$set": {"tier": "gold"},
        }

    def test_group_needs_key_and_id(self) -> None:
        """Without key and id the operations are dropped, counted."""
        stats = Stats()
        assert run({"mixpanel.group.set.a": 1, "mixpanel.group.key": "company"}, stats) == []
        assert stats.snapshot()["dropped"] == {"group_without_key_or_id": 1}


class TestIdentityEvents:
    def test_identity_events_come_first(self) -> None:
        """Alias, identify and merge precede the event of the same record."""
        messages = run({
            "mixpanel.event": "Logged In", "mixpanel.distinct_id": "u1",
            "mixpanel.alias": "new-id", "mixpanel.identify.anon_id": "anon-1",
            "mixpanel.merge": "other-id", "mixpanel.people.set.a": 1,
        })
        kinds = [type(m).__name__ for m in messages]
        assert kinds == ["IdentityEvent"] * 3 + ["Event", "ProfileUpdate"]
        alias, identify, merge = (m for m in messages if isinstance(m, IdentityEvent))
        assert alias.name == "$create_alias"
        assert alias.properties["alias"] == "new-id"
        assert identify.name == "$identify"
        assert identify.properties["$identified_id"] == "u1"
        assert identify.properties["$anon_id"] == "anon-1"
        assert merge.name == "$merge"
        assert merge.properties["$distinct_ids"] == ["u1", "other-id"]
        for event in (alias, identify, merge):
            assert event.properties["distinct_id"] == "u1"
            assert event.properties["time"] == T0
        insert_ids = {m.properties["$insert_id"] for m in messages if isinstance(m, Event)}
        assert len(insert_ids) == 4

    def test_identity_needs_distinct_id(self) -> None:
        """No identity event without both ids, counted."""
        stats = Stats()
        assert run({"mixpanel.alias": "x"}, stats) == []
        assert stats.snapshot()["dropped"] == {"identity_without_ids": 1}


def test_is_tagged() -> None:
    """Only attributes with the mixpanel. prefix count."""
    assert is_tagged({"mixpanel.event": "x"})
    assert not is_tagged({"user.id": "x", "mixpanelevent": 1})
    assert not is_tagged({})
    assert not is_tagged(None)


def test_parse_time_ms_datetime() -> None:
    """A naive datetime is taken as UTC."""
    assert parse_time_ms(datetime(2023, 11, 14, 22, 13, 20)) == 1_700_000_000_000
    aware = datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc)
    assert parse_time_ms(aware) == 1_700_000_000_000
    assert parse_time_ms(object()) is None
